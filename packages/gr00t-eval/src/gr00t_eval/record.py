"""Record Meta-World's scripted expert into a LeRobot v2.1 dataset that ReplayPolicy can serve.

Episode i is recorded with env seed `seed + i` and stores that seed in meta/episodes.jsonl (an extra episode
field, which LeRobot keeps and ignores); a replay server reports it in its reset/get_action info, so a rollout
against it replays episode i in the very same scene without `--seed` (Meta-World is deterministic under a seed).
meta/ is rewritten after every episode, so an interrupted recording loads with the episodes it finished.
A recording claims its directory (RECORD_CLAIM, a hidden file beside meta/ recording its process), so a second
`record` into it, with --overwrite or not, is refused while the first runs.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from gr00t_client.cli_signals import stop_signals_held
from gr00t_client.codec import MAX_RECORDED_SEED

from .dataset import DatasetWriter
from .dataset.overwrite import DATASET_ENTRIES, OVERWRITE_TRASH, RECORD_CLAIM, check_only_dataset_entries
from .rollout.config import check_whole_number, split_env_name

logger = logging.getLogger(__name__)

METAWORLD_FPS = 80  # MuJoCo timestep 0.0025 s x frame_skip 5


@dataclass
class RecordSummary:
    """What was recorded: the dataset root and, per episode, its seed, length and whether the expert succeeded."""

    root: Path
    seeds: List[int] = field(default_factory=list)
    lengths: List[int] = field(default_factory=list)
    successes: List[bool] = field(default_factory=list)
    started: bool = False  # the dataset directory was claimed and (with overwrite) emptied: episodes are this run's
    # Not started: the old dataset's entries (meta, data, videos) that overwrite had removed when the run stopped
    old_dataset_removed: List[str] = field(default_factory=list)

    @property
    def n_episodes(self) -> int:
        """Episodes recorded."""
        return len(self.seeds)

    def add(self, seed: int, length: int, success: bool) -> None:
        """Count one recorded episode."""
        self.lengths.append(length)
        self.successes.append(success)
        self.seeds.append(seed)  # last: n_episodes counts an episode only once all three are in


def record_metaworld(
    env_name: str,
    n_episodes: int,
    output: Union[str, Path],
    *,
    seed: int = 0,
    max_episode_steps: int = 500,
    image_size: int = 64,
    camera: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RecordSummary:
    """Record `n_episodes` of the scripted expert for `metaworld/<task>`; each episode stops at success.

    An episode where the expert fails is still recorded (flagged `success: false`), so that episode i
    always has seed `seed + i`.
    """
    from .rollout.adapters import checked_image_size
    from .rollout.adapters.metaworld import DEFAULT_CAMERA, MetaWorldEnv, scripted_policy

    if "," in env_name:  # rollout's form of several tasks: was refused as one unknown task named 'reach-v3,push-v3'
        raise ValueError(f"record takes one task per run, got {env_name!r}: record each of "
                         f"{', '.join(repr(name.strip()) for name in env_name.split(','))} into a folder of its own")
    prefix, task = split_env_name(env_name)
    if prefix != "metaworld" or not task:
        raise ValueError(f"record supports env names 'metaworld/<task>' (e.g. metaworld/reach-v3), got {env_name!r}")
    # Before the dataset directory is made: 0 steps recorded episodes without a frame, and a float count or a negative
    # or float seed failed only once the directory (and its claim) existed.
    n_episodes = check_whole_number(n_episodes, "n_episodes", 1)
    max_episode_steps = check_whole_number(max_episode_steps, "max_episode_steps", 1)
    seed = check_whole_number(seed, "seed", 0)
    if seed + n_episodes - 1 > MAX_RECORDED_SEED:
        raise ValueError(f"seed + n_episodes - 1 (the last episode's seed) must be at most {MAX_RECORDED_SEED} "
                         f"(2**63 - 1, the largest seed a dataset and its replay can carry), got {seed} + {n_episodes} "
                         f"- 1 = {seed + n_episodes - 1}")
    image_size = checked_image_size(image_size)  # the range first, so the even check below sees a valid int
    if image_size % 2:  # checked here, before the dataset directory is made
        raise ValueError(f"image_size must be even (the dataset's mp4 videos are yuv420p), got {image_size}")
    camera = camera or DEFAULT_CAMERA
    from .run_claim import (claim_alive_name, claim_lock_name, finish_claim, finished_however_it_ends,
                            refuse_live_claims, refuse_live_runs_around, take_claim)
    from .output_files import aside_name, not_a_directory_above, refuse_path_too_long
    from .run_stop import check_folder_kept, folder_identity, sigterm_as_interrupt

    output_path = Path(output).absolute()  # as DatasetWriter takes it (any name: it opens its parquet files itself)
    # mkdir said only '[Errno 17] File exists', for a dangling link as --output and as one of its parents alike
    dangling = next((path for path in (output_path, *output_path.parents) if path.is_symlink() and not path.exists()),
                    None)
    if dangling is not None:
        where = "is a" if dangling == output_path else f"is inside {dangling}, a"
        raise FileNotFoundError(f"--output {output} {where} symbolic link to {os.readlink(dangling)}, which does not "
                                "exist; make that folder (or mount it), or name another --output")
    if output_path.exists() and not output_path.is_dir():
        raise FileExistsError(f"{output} exists and is not a directory")
    blocker = not_a_directory_above(output)
    if blocker is not None:  # mkdir said only "[Errno 20] Not a directory"
        raise FileExistsError(f"--output {output}: {blocker} exists and is not a directory; expected a folder there, "
                              "or name another --output")
    # a dataset's deepest files (an episode's video in its camera's folder, written aside first) fit below PATH_MAX:
    # 'File name too long' came after the episodes had run, naming no file
    refuse_path_too_long(output_path, "--output",
                         longest=f"videos/chunk-000/observation.images.{camera}/{aside_name('episode_000000.mp4')}")
    refuse_live_runs_around(output_path, flag="--output")  # never a dataset inside the folder of a run still running
    if output_path.is_dir():
        refuse_live_claims(output_path, flag="--output")  # never empty a directory another recording (or any run) fills
        own = (RECORD_CLAIM, claim_lock_name(RECORD_CLAIM), claim_alive_name(RECORD_CLAIM), OVERWRITE_TRASH)
        if not overwrite and any(entry.name not in own for entry in output_path.iterdir()):
            raise FileExistsError(f"dataset directory {output} is not empty")  # before the env and the progress bar
        if overwrite:  # before the claim: a refused run left its claim files in a folder it never recorded into
            check_only_dataset_entries(output_path, own)
    env = MetaWorldEnv(task, image_size=image_size, camera=camera)
    expert = scripted_policy(task)
    summary = RecordSummary(output_path)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        from .progress import bar_options

        bar = tqdm(total=n_episodes, desc="Recording", **bar_options())
    old_dataset = sorted(name for name in DATASET_ENTRIES if (output_path / name).exists())
    settings = {"env_name": env_name, "n_episodes": n_episodes, "seed": seed, "max_episode_steps": max_episode_steps,
                "image_size": image_size, "camera": camera}
    try:
        with sigterm_as_interrupt():
            # Claimed before anything is emptied, and the claim is kept when the writer empties the directory: two
            # recordings racing into one directory (--overwrite) cannot both pass, whatever their timing.
            output_path.mkdir(parents=True, exist_ok=True)
            claim = take_claim(output_path, RECORD_CLAIM, settings, flag="--output")
            # A folder deleted mid-recording was made again by the writer, which wrote the rest there and exited 0
            check_output_folder = functools.partial(check_folder_kept, output_path, folder_identity(output_path),
                                                    RECORD_CLAIM)
            with finished_however_it_ends(lambda outcome: finish_claim(claim, outcome)):
                with DatasetWriter(output_path, fps=METAWORLD_FPS, robot_type="sawyer", overwrite=overwrite,
                                   keep=(RECORD_CLAIM, claim_lock_name(RECORD_CLAIM), claim_alive_name(RECORD_CLAIM))
                                   ) as writer:
                    summary.started = True
                    _record_episodes(env, expert, writer, summary, env_name, camera, n_episodes, seed,
                                     max_episode_steps, bar, check_output_folder)
                    check_output_folder()  # before finalize() rewrites meta/
    except BaseException as exc:  # Ctrl-C, a full disk, an env failure (a NaN state, a reset that raises)
        if not summary.started:  # a stop while overwrite deleted the old dataset: the CLI must not say it is as it was
            summary.old_dataset_removed = [name for name in old_dataset if not (output_path / name).exists()]
        exc.record_summary = summary  # type: ignore[attr-defined]  # what this run finished, for the CLI's message
        raise
    finally:
        try:
            with stop_signals_held():  # a renderer closed halfway printed 'Exception ignored in ... EGLError' at exit
                if bar is not None:
                    bar.close()
                env.close()
        except KeyboardInterrupt as exc:  # a Ctrl-C held there replaces the stop in flight: it carries the summary too
            exc.record_summary = summary  # type: ignore[attr-defined]
            raise
    return summary


def _record_episodes(env: Any, expert: Any, writer: DatasetWriter, summary: RecordSummary, env_name: str, camera: str,
                     n_episodes: int, seed: int, max_episode_steps: int, bar: Any,
                     check_output_folder: Callable[[], None]) -> None:
    """Record and add each episode, listing it in meta/; OutputFolderGone (check_output_folder) before anything is
    written into an output folder that is no longer the one claimed."""
    from .rollout.adapters.metaworld import STATE_SLICES, array_to_action
    from .run_stop import interrupts_deferred

    for episode in range(n_episodes):
        episode_seed = seed + episode
        try:
            record = _record_episode(env, expert, episode_seed, max_episode_steps, array_to_action, list(STATE_SLICES))
            try:
                check_output_folder()
                writer.add_episode(
                    frames={camera: np.stack(record["frames"])},
                    states={k: np.stack(v) for k, v in record["states"].items()},
                    actions={k: np.stack(v) for k, v in record["actions"].items()},
                    task=env.instruction,
                    step_columns={"next.reward": np.asarray(record["rewards"], np.float32),
                                  "next.success": np.asarray(record["success_flags"], bool)},
                    metadata={"seed": episode_seed, "success": record["success"], "env_name": env_name},
                )
                check_output_folder()
                _list_episode(writer)
                summary.add(episode_seed, len(record["rewards"]), record["success"])
            except KeyboardInterrupt:
                # An episode add_episode finished has its files in data/ and videos/: meta/ lists it before the stop (a
                # Ctrl-C just before this write_meta left them there, unlisted). One it did not finish left nothing.
                if writer.n_episodes > summary.n_episodes:
                    try:
                        check_output_folder()
                        with interrupts_deferred():
                            writer.write_meta()
                    except BaseException:  # a second Ctrl-C while it saved: meta/ rolled back, so the files go too
                        with interrupts_deferred():
                            writer.discard_unlisted()
                        raise
                    summary.add(episode_seed, len(record["rewards"]), record["success"])
                raise
            if not record["success"]:
                logger.warning("expert failed episode %d (seed %d) within %d steps", episode, episode_seed,
                               max_episode_steps)
            if bar is not None:
                bar.update(1)
        except Exception as exc:  # an env failure (a NaN state, a reset that raises): which episode, for the CLI
            exc.record_stopped_at = (episode, episode_seed)  # type: ignore[attr-defined]
            raise


def _list_episode(writer: DatasetWriter) -> None:
    """meta/ rewritten with the episode just added: loadable after every episode, so an interrupted recording keeps
    what it finished. A rewrite that fails (a full disk) leaves meta/ as it was, and the episode's files are removed
    so that data/ and videos/ hold what meta/ lists."""
    try:
        writer.write_meta()
    except OSError:
        writer.discard_unlisted()
        raise


def _record_episode(env: Any, expert: Any, seed: int, max_steps: int, to_action: Any, state_keys: List[str]) -> Dict[str, Any]:
    obs, _ = env.reset(seed=seed)
    frames, rewards, flags = [], [], []
    states: Dict[str, list] = {k: [] for k in state_keys}
    actions: Dict[str, list] = {}
    success = False
    for _ in range(max_steps):
        # The exact float32 values stored are the ones executed, so a replay is bit-identical.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")  # the experts' own gains
            flat = np.clip(expert.get_action(env.raw_observation), -1.0, 1.0).astype(np.float32)
        action = to_action(flat)
        frames.append(obs[f"video.{env.camera}"])
        for key in state_keys:
            states[key].append(obs[f"state.{key}"])
        for key, value in action.items():
            actions.setdefault(key.removeprefix("action."), []).append(value)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        flags.append(bool(info["success"]))
        success = success or bool(info["success"])
        if success or terminated or truncated:
            break
    return {"frames": frames, "states": states, "actions": actions, "rewards": rewards, "success_flags": flags, "success": success}
