"""Open-loop evaluation: query the policy along recorded trajectories and compare its chunks with the recorded actions.

Isaac-GR00T's open-loop algorithm with its defects fixed: history deltas before the first step
(or past the last) repeat the first (last) frame instead of failing; every trajectory gets its own plot; the
policy is reset to the trajectory (`episode_index`) before it is evaluated, so a replay server follows along.
A trajectory the policy does not follow (its reset fails, or it reports another episode, step or episode length) is
errored, not scored: comparing a replay of the wrong episode or step with the recording gives a meaningless error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gr00t_client import BasePolicy, ModalityConfig, PolicyServerError, ServerStoppingError

from .action_steps import check_consecutive_action_deltas
from .progress import bar_options
from .dataset import DatasetError, LeRobotDataset
from .key_matching import match_keys
from .metrics import ActionErrors, action_errors
from .applied_settings import settings_not_applied, warn_not_applied
from .policy_identity import pinned_policy, record_from_info, server_info, serves_replay
from .reported_position import is_flag, is_position
from .results import RESULTS_FILENAME, open_loop_results, write_results

logger = logging.getLogger(__name__)

# Where a run given no output_dir gets a new dated folder, as the CLI's runs do (DEFAULT_OUTPUT_DIR/YYYY-MM-DD/...).
DEFAULT_OUTPUT_DIR = "/tmp/open_loop_eval"
# A flat observation key quoted in a server's error (a sim-wrapper policy's bare KeyError: 'state.arm').
_QUOTED_FLAT_KEY = re.compile(r"'(?:video|state|annotation|language)\.[^']+'")
# Frames per camera decoded and held at once: the frames of as many consecutive inference steps as fit. Decoding every
# step's frames before the first query held them all: a 20,000-step episode of two 480x640 cameras at
# --execution-horizon 1 needed 37 GB. Each window seeks once more, decoding up to a keyframe interval again.
FRAME_WINDOW = 128
FLAT_FORMAT_HINT = ("; the server's policy seems to want flat keys, and --observation-format auto sent the nested "
                    "form (the server did not say it serves the sim wrapper): run with --observation-format flat")


@dataclass
class OpenLoopConfig:
    """Settings of an open-loop run (the CLI flags)."""

    dataset_path: str
    traj_ids: Sequence[int] = (0,)
    steps: int = 200
    execution_horizon: int = 16
    modality_keys: Optional[Sequence[str]] = None
    # None: a new dated folder under DEFAULT_OUTPUT_DIR (the CLI's default); a folder holding an earlier run's
    # results.json is refused: that run's plots would sit beside this run's results.
    output_dir: Optional[str] = None
    # The embodiment evaluated: None takes the one the server serves (the reference's default, new_embodiment, for a
    # server that does not say); a tag the server does not serve is refused rather than recorded as this run's.
    embodiment_tag: Optional[str] = None
    # "nested" (reference server), "flat" (server with the sim wrapper) or "auto" (ask the server, like the CLI)
    observation_format: str = "nested"
    plot: bool = True
    # The reference's --save-plot-path: the plot file of a single trajectory; with several, PATH_traj{id}.SUFFIX; a
    # directory (existing, or written DIR/) gets DIR/traj_{id}.jpeg, as the reference's README describes the flag.
    plot_path: Optional[str] = None
    # Flow-matching denoising steps sent with every request as options["denoising_steps"] (None: the server's).
    denoising_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1 (steps evaluated per trajectory), got {self.steps!r}")
        if not _is_int(self.execution_horizon) or self.execution_horizon < 1:
            raise ValueError(f"execution_horizon must be an int >= 1, got {self.execution_horizon!r}")
        self.steps, self.execution_horizon = int(self.steps), int(self.execution_horizon)  # numpy ints, as JSON can write
        # A list of plain ints: a range was scored and then not JSON-writable, a map (an iterator) read here came
        # empty to the run, and True ran trajectory 1.
        try:
            ids = list(self.traj_ids)
        except TypeError:
            raise ValueError(f"traj_ids must be a sequence of trajectory ids (ints), got {self.traj_ids!r}") from None
        wrong = [t for t in ids if not _is_int(t)]
        if wrong:
            raise ValueError(f"traj_ids must hold ints (trajectory ids), got {', '.join(map(repr, wrong))}")
        if not ids:
            raise ValueError("traj_ids must name at least one trajectory")
        ids = self.traj_ids = [int(t) for t in ids]
        repeated_ids = sorted({t for t in ids if ids.count(t) > 1})
        if repeated_ids:  # results are kept per id: a repeat was run again and only its last run kept and averaged
            raise ValueError(f"traj_ids names {', '.join(map(str, repeated_ids))} more than once; name each trajectory once")
        if self.observation_format not in OBSERVATION_FORMATS:
            raise ValueError(f"observation_format must be one of {OBSERVATION_FORMATS}, got {self.observation_format!r}")
        if self.denoising_steps is not None and self.denoising_steps < 1:
            raise ValueError(f"denoising_steps must be >= 1, got {self.denoising_steps}")
        if self.modality_keys is not None:
            keys = list(self.modality_keys)
            repeated = sorted({key for key in keys if keys.count(key) > 1})
            if repeated:  # the per-key dims are a dict: a repeat would silently double the arrays, not the dims
                raise ValueError(f"modality_keys names {', '.join(map(repr, repeated))} more than once; "
                                 "name each action key once")
        if self.plot and self.plot_path is not None:  # before any query, not once the first trajectory is scored
            from .plots import check_plot_path

            check_plot_path(self.plot_path)

    def plot_file(self, traj_id: int, n_trajectories: int) -> Path:
        """Where the plot of `traj_id` goes: plot_path (suffixed per trajectory when several), PLOT_PATH/traj_{id}.jpeg
        when it is a folder, else OUTPUT_DIR/traj_{id}.jpeg (DEFAULT_OUTPUT_DIR when evaluate_trajectory is called
        alone with no output_dir: evaluate_open_loop gives every run its own)."""
        from .plots import DEFAULT_PLOT_SUFFIX, is_plot_folder

        if self.plot_path is None or is_plot_folder(self.plot_path):
            folder = (self.output_dir or DEFAULT_OUTPUT_DIR) if self.plot_path is None else self.plot_path
            return Path(folder) / f"traj_{traj_id}{DEFAULT_PLOT_SUFFIX}"
        path = Path(self.plot_path)
        return path if n_trajectories == 1 else path.with_name(f"{path.stem}_traj{traj_id}{path.suffix}")


OBSERVATION_FORMATS = ("nested", "flat", "auto")


def _is_int(value: Any) -> bool:
    """An int or numpy int, not a bool (True is 1 to Python, and never a count or an id)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class TrajectoryError(RuntimeError):
    """A trajectory that cannot be scored soundly (the policy is not at its episode or step); the run goes on without it."""


def resolve_observation_format(info: Any, requested: str) -> str:
    """"auto": "flat" for a server whose get_server_info `info` names the sim wrapper, else "nested" (the reference
    server's form; its server cannot be asked, info None)."""
    if requested != "auto":
        return requested
    policy_class = info.get("policy_class", "") if isinstance(info, Mapping) else ""
    return "flat" if "Sim" in str(policy_class) else "nested"


@dataclass
class TrajectoryResult:
    """One evaluated trajectory: arrays (T, D) in physical units, where the policy was queried, and its errors."""

    traj_id: int
    ground_truth: np.ndarray
    prediction: np.ndarray
    inference_steps: List[int]
    errors: ActionErrors
    trajectory_length: int
    plot_path: Optional[str] = None
    plot_error: Optional[str] = None  # why its plot was not written (plot_path None); it is scored all the same


@dataclass
class OpenLoopResult:
    """Evaluated trajectories, the ids skipped (out of range, empty) and errored (with why), and the results.json path."""

    trajectories: Dict[int, TrajectoryResult] = field(default_factory=dict)
    skipped: List[int] = field(default_factory=list)
    skip_reasons: Dict[int, str] = field(default_factory=dict)
    errored: Dict[int, str] = field(default_factory=dict)
    results_path: Optional[Path] = None
    status: str = "complete"  # "interrupted" (Ctrl-C/SIGTERM) or "aborted" (server gone, a failure): results.json
    not_run: List[int] = field(default_factory=list)  # then holds what was scored, and these ids were not

    @property
    def avg_mse(self) -> float:
        """Plain mean of the per-trajectory MSEs (not weighted by length, like the reference)."""
        return float(np.mean([t.errors.mse for t in self.trajectories.values()])) if self.trajectories else math.nan

    @property
    def avg_mae(self) -> float:
        """Plain mean of the per-trajectory MAEs."""
        return float(np.mean([t.errors.mae for t in self.trajectories.values()])) if self.trajectories else math.nan


def history_steps(step: int, delta_indices: Sequence[int], length: int) -> np.ndarray:
    """Rows `step + delta`, clamped to the episode: the first frame repeats before its start, the last after its end."""
    return np.clip(step + np.asarray(delta_indices, dtype=np.int64), 0, length - 1)


class _StepFrames:
    """The decoded frames of some steps, indexed by step."""

    def __init__(self, steps: Sequence[int], frames: np.ndarray) -> None:
        self._row = {int(step): row for row, step in enumerate(steps)}
        self._frames = frames

    def __getitem__(self, steps: np.ndarray) -> np.ndarray:
        return self._frames[[self._row[int(step)] for step in steps]]


def frame_windows(inference_steps: Sequence[int], delta_indices: Sequence[int], length: int,
                  max_frames: Optional[int] = None) -> Iterator[Tuple[List[int], List[int]]]:
    """Runs of consecutive `inference_steps` whose history rows number at most `max_frames` (FRAME_WINDOW) together,
    or one step's rows when those are more, each with its rows sorted: the frames decoded and held at once."""
    max_frames = FRAME_WINDOW if max_frames is None else max_frames
    window: List[int] = []
    rows: set = set()
    for step in inference_steps:
        step_rows = set(history_steps(step, delta_indices, length).tolist())
        if window and len(rows | step_rows) > max_frames:
            yield window, sorted(rows)
            window, rows = [], set()
        window.append(step)
        rows |= step_rows
    if window:
        yield window, sorted(rows)


class _FrameWindows:
    """A trajectory's camera frames, decoded a window (frame_windows) at a time as the inference steps reach it, the
    window before released first."""

    def __init__(self, episode: Any, inference_steps: Sequence[int], configs: Mapping[str, ModalityConfig],
                 key_maps: Mapping[str, "_KeyMap"]) -> None:
        self._episode = episode
        self._sources = list(key_maps["video"].map.values()) if "video" in configs else []
        self._windows = (frame_windows(inference_steps, configs["video"].delta_indices, episode.length)
                         if self._sources else iter(()))
        self._steps: set = set()
        self._frames: Dict[str, _StepFrames] = {}

    def at(self, step: int) -> Dict[str, _StepFrames]:
        """The frames of the window holding inference step `step` (steps asked in order)."""
        if self._sources and step not in self._steps:
            self._frames = {}  # released before the next window is decoded, not after
            steps, rows = next(self._windows)
            self._steps = set(steps)
            self._frames = {source: _StepFrames(rows, self._episode.frames(source, rows)) for source in self._sources}
        return self._frames


class _EpisodeSteps:
    """An episode's state groups and language strings, read once per trajectory: reading them at every inference
    step made an evaluation quadratic in the episode's length."""

    def __init__(self, episode: Any) -> None:
        self._episode = episode
        self.length = episode.length
        self._states: Dict[str, np.ndarray] = {}
        self._language: Dict[str, List[str]] = {}

    def states(self, key: str) -> np.ndarray:
        if key not in self._states:
            self._states[key] = self._episode.states(key)
        return self._states[key]

    def language(self, key: str) -> List[str]:
        if key not in self._language:
            self._language[key] = self._episode.language(key)
        return self._language[key]


class _KeyMap:
    """Modality-config keys -> dataset keys (by name, then those left over by position when their counts match).
    `warned` holds the pairings already warned of in this run (its trajectories share it; each run has its own)."""

    def __init__(self, kind: str, wanted: Sequence[str], available: Sequence[str], warned: Optional[set] = None) -> None:
        matched = match_keys(wanted, available)
        if matched is None:
            missing = [k for k in wanted if k not in available]
            raise ValueError(f"the policy's {kind} keys {missing} are not in the dataset's meta/modality.json; it has {list(available)}")
        self.map, by_position = matched
        said = (kind, tuple(wanted), tuple(available))
        warned = set() if warned is None else warned
        if by_position and said not in warned:  # once per run, not once per trajectory (nor once per process)
            warned.add(said)
            logger.warning("policy %s keys %s are not the dataset's; matching by position: %s", kind,
                           [w for w, _ in by_position], ", ".join(f"{w} <- {a}" for w, a in by_position))


def build_observation(
    episode: Any, step: int, configs: Mapping[str, ModalityConfig], frames: Mapping[str, np.ndarray],
    key_maps: Mapping[str, _KeyMap], observation_format: str,
) -> Dict[str, Any]:
    """The batched (B=1) observation at `step`: nested {video, state, language} or flat `video.k`/`state.k`/language key."""
    length = episode.length
    nested: Dict[str, Dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    if "video" in configs:
        rows = history_steps(step, configs["video"].delta_indices, length)
        for key, source in key_maps["video"].map.items():
            nested["video"][key] = frames[source][rows][None]
    if "state" in configs:
        rows = history_steps(step, configs["state"].delta_indices, length)
        for key, source in key_maps["state"].map.items():
            nested["state"][key] = episode.states(source)[rows][None]
    if "language" in configs:
        for key, source in key_maps["language"].map.items():
            nested["language"][key] = [[episode.language(source)[min(step, length - 1)]]]
    if observation_format == "nested":
        return {m: v for m, v in nested.items() if m in configs}
    if observation_format != "flat":
        raise ValueError(f"observation_format must be 'nested' or 'flat', got {observation_format!r}")
    flat: Dict[str, Any] = {}
    for key, value in nested["video"].items():
        flat[f"video.{key}"] = value
    for key, value in nested["state"].items():
        flat[f"state.{key}"] = value
    for key, value in nested["language"].items():
        flat[key] = [value[0][0]]
    return flat


def check_policy_position(info: Any, traj_id: int, step: int, execution_horizon: int) -> None:
    """TrajectoryError when the policy's info reports an `episode_index` or `current_step` other than traj_id, step."""
    if not isinstance(info, Mapping):
        return
    episode, current = info.get("episode_index"), info.get("current_step")
    if is_position(episode) and episode != traj_id:
        raise TrajectoryError(f"the policy reports episode {episode} while the evaluation is at trajectory {traj_id} "
                              "(does the server replay another copy of the dataset?)")
    if is_position(current) and current != step:
        served = info.get("execution_horizon")
        if is_position(served) and served != execution_horizon:  # the replay says how far it advances per call
            raise TrajectoryError(f"the policy reports step {current} while the evaluation is at step {step}: the server "
                                  f"advances {served} steps per call and this run {execution_horizon} (start the server "
                                  f"with --execution-horizon {execution_horizon}, or run with --execution-horizon {served})")
        raise TrajectoryError(f"the policy reports step {current} while the evaluation is at step {step} (start the server "
                              f"with --execution-horizon {execution_horizon}, or pass the server's here)")


def check_policy_episode(info: Any, episode_length: int, step: int, last_step: Optional[int]) -> None:
    """TrajectoryError when the policy's info reports an `episode_length` other than the recording's, or
    `episode_done` at `step` before `last_step`, the evaluation's last query (None: a reset, which serves no step).
    A replay of a trimmed or stale copy of the episode pads its chunks past its end with its last action."""
    if not isinstance(info, Mapping):
        return
    served, done = info.get("episode_length"), info.get("episode_done")
    if is_position(served) and served != episode_length:
        raise TrajectoryError(f"the policy does not follow this recording: it replays an episode of {served} steps, the "
                              f"dataset's has {episode_length} (does the server replay another copy of the dataset?)")
    if last_step is not None and is_flag(done) and done and step < last_step:
        raise TrajectoryError(f"the policy does not follow this recording: it reports its episode done at step {step}, "
                              f"and the dataset's episode of {episode_length} steps is queried up to step {last_step}")


def reset_policy(policy: BasePolicy, traj_id: int, execution_horizon: int, episode_length: Optional[int] = None) -> None:
    """Reset the policy to trajectory `traj_id`, step 0; TrajectoryError when it refuses, lands elsewhere or reports
    an episode of another length than `episode_length` (None: not checked).

    A stateless model ignores the options; a server without a reset endpoint is evaluated without one. A
    server that is gone (ConnectionError, TimeoutError) ends the run.
    """
    try:
        info = policy.reset(options={"episode_index": int(traj_id), "step_index": 0})
    except (ConnectionError, TimeoutError):
        raise
    except Exception as exc:  # noqa: BLE001 - a refused reset errors this trajectory only
        if "Unknown endpoint: reset" in str(exc):
            logger.warning("the policy server has no reset endpoint; evaluating trajectory %d without a reset", traj_id)
            return
        raise TrajectoryError(f"policy reset failed: {exc}") from exc
    check_policy_position(info, traj_id, 0, execution_horizon)
    if episode_length is not None:
        check_policy_episode(info, episode_length, 0, None)


def _chunk(action: Mapping[str, Any], keys: Sequence[str], key_dims: Mapping[str, int], step: int,
           execution_horizon: int) -> Dict[str, np.ndarray]:
    """The policy's action chunk per key, (H, D) or (H,), checked against the dataset's width of each key, for at
    least `execution_horizon` steps and for finite values: TrajectoryError otherwise (only the widths' total would be
    checked when the keys are joined, so a policy's 2 + 2 against a dataset's 3 + 1 was scored column against the
    wrong column; a shorter chunk ended the whole run with an IndexError). One observation row is sent, so a batched
    chunk must have one row: row 0 of a (2, H, D) reply was scored as if it were the answer."""
    out = {}
    for key in keys:
        value = action.get(key, action.get(f"action.{key}"))
        if value is None:  # a KeyError ended the whole run
            raise TrajectoryError(f"the policy's action has no '{key}' (nor 'action.{key}'); got keys {sorted(action)}")
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":  # strings ended the whole run with numpy's "could not convert string to float"
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has dtype {value.dtype}; expected numbers "
                                  "(a float, int or bool array)")
        value = value.astype(np.float64)
        if value.ndim == 3 and value.shape[0] != 1:
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has shape {value.shape}; expected "
                                  f"(1, {value.shape[1]}, {value.shape[2]}), one row for the one observation row sent")
        value = value[0] if value.ndim == 3 else value  # strip the batch dim
        width = value.shape[-1] if value.ndim == 2 else 1
        if value.ndim not in (1, 2) or width != key_dims[key]:
            raise TrajectoryError(f"the policy's action '{key}' has shape {value.shape} (batch row stripped); the dataset's "
                                  f"'{key}' has {key_dims[key]} values per step, so a chunk must be (horizon, {key_dims[key]})")
        if value.shape[0] < execution_horizon:
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has {value.shape[0]} steps, and "
                                  f"--execution-horizon {execution_horizon} uses {execution_horizon} of each chunk (the "
                                  "policy's modality config promises more than it returns?)")
        if not np.isfinite(value).all():
            rows = sorted({int(r) for r in np.flatnonzero(~np.isfinite(value.reshape(value.shape[0], -1)).all(axis=1))})
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has non-finite values (NaN or inf) in chunk "
                                  f"rows {rows[:8]}; nothing can be scored against them")
        out[key] = value
    return out


def dataset_action_keys(requested: Sequence[str], dataset_keys: Sequence[str]) -> List[str]:
    """The dataset action keys that `modality_keys` (--modality-keys) name, each by its own name or by its flat spelling
    `action.<key>` (a sim-wrapper server's name for it); ValueError naming the dataset's keys for any it does not have."""
    keys, missing = [], []
    for key in requested:
        if key in dataset_keys:
            keys.append(key)
        elif key.startswith("action.") and key[len("action."):] in dataset_keys:
            keys.append(key[len("action."):])
        else:
            missing.append(key)
    if missing:
        raise ValueError(f"action keys {missing} are not in the dataset; it has {list(dataset_keys)} (also taken as "
                         "action.<key>)")
    spellings: Dict[str, List[str]] = {}
    for given, key in zip(requested, keys):
        spellings.setdefault(key, []).append(given)
    repeated = {key: given for key, given in spellings.items() if len(given) > 1}
    if repeated:  # "gripper action.gripper" is one key twice: the per-key dims are a dict, the arrays would double
        raise ValueError(f"modality_keys names {', '.join(map(repr, repeated))} more than once "
                         f"({'; '.join(' and '.join(given) for given in repeated.values())}); name each action key once")
    return keys


def check_action_steps(action: ModalityConfig, execution_horizon: int) -> None:
    """ValueError unless 1 <= execution_horizon <= the policy's action horizon and its action delta_indices are
    0..H-1 (as the reference checks): the scores compare chunk element j with the step j after the query, so a
    chunk of other steps ([0, 2, 4, 6], or one starting at 1) would be scored against the wrong ground truth."""
    horizon = action.horizon
    if not 1 <= execution_horizon <= horizon:
        raise ValueError(f"execution_horizon must be in [1, {horizon}] (the policy's action horizon), got {execution_horizon}")
    check_consecutive_action_deltas(
        action.delta_indices, "open-loop scores would compare each action with another step's ground truth")


def evaluate_trajectory(
    policy: BasePolicy, dataset: LeRobotDataset, traj_id: int, config: OpenLoopConfig,
    configs: Mapping[str, ModalityConfig], report: Callable[[str], None] = logger.info, on_step: Optional[Callable[[], None]] = None,
    on_scored: Optional[Callable[[TrajectoryResult], None]] = None, warned_key_matches: Optional[set] = None,
    recording_dtype: Any = np.float64,
) -> TrajectoryResult:
    """Query the policy every `execution_horizon` steps of trajectory `traj_id` and score the stitched chunks.

    `on_scored` gets the result once it is scored, before its plot is drawn (a stop during the plot keeps it scored).
    Raises TrajectoryError when the policy does not follow the trajectory (see reset_policy, check_policy_position,
    check_policy_episode).
    `warned_key_matches`: the run's key pairings by position already warned of (None: warn of them here).
    `recording_dtype`: the precision the recorded actions are scored in: float64 keeps a float64 recording whole;
    float32 is what a replay serves of it.
    """
    episode = dataset.episode(traj_id)
    action_keys = (dataset_action_keys(config.modality_keys, dataset.action_keys) if config.modality_keys
                   else list(configs["action"].modality_keys))
    check_action_steps(configs["action"], config.execution_horizon)
    key_maps = {
        kind: _KeyMap(kind, configs[kind].modality_keys if kind in configs else [], available, warned_key_matches)
        for kind, available in (("video", dataset.video_keys), ("state", dataset.state_keys),
                                ("language", dataset.language_keys))
    }
    missing = [k for k in action_keys if k not in dataset.action_keys]
    if missing:
        raise ValueError(f"action keys {missing} are not in the dataset; it has {dataset.action_keys}")
    key_dims = {key: episode.actions(key).shape[1] for key in action_keys}
    try:  # before any query: a NaN in the recording would make this trajectory's scores, and the averages, NaN
        episode.check_finite("action", action_keys)
    except DatasetError as exc:
        raise TrajectoryError(f"its recorded actions cannot be scored against: {exc}") from None
    actual_steps = min(config.steps, episode.length)
    report(f"Running trajectory: {traj_id}")
    report(f"Using {actual_steps} steps (requested: {config.steps}, trajectory length: {episode.length})")
    inference_steps = list(range(0, actual_steps, config.execution_horizon))
    # A stateful policy (ReplayPolicy) moves to this trajectory; a stateless model ignores the options.
    reset_policy(policy, traj_id, config.execution_horizon, episode.length)
    predicted: List[np.ndarray] = []
    steps_of = _EpisodeSteps(episode)
    windows = _FrameWindows(episode, inference_steps, configs, key_maps)
    for step in inference_steps:
        logger.debug("inferencing at step: %d", step)
        observation = build_observation(steps_of, step, configs, windows.at(step), key_maps, config.observation_format)
        options = None if config.denoising_steps is None else {"denoising_steps": int(config.denoising_steps)}
        action, info = policy.get_action(observation, options=options)
        check_policy_position(info, traj_id, step, config.execution_horizon)
        check_policy_episode(info, episode.length, step, inference_steps[-1])
        chunk = _chunk(action, action_keys, key_dims, step, config.execution_horizon)
        for j in range(config.execution_horizon):
            predicted.append(np.concatenate([np.atleast_1d(np.atleast_1d(chunk[key])[j]) for key in action_keys]))
        if on_step is not None:
            on_step()
    # A model is scored against the recording in its own precision (a float64 recording cast to float32 lost digits
    # near 1e5 that were scored as error); a replay against the float32 values it serves of it, so its error is 0.
    recorded = [episode.actions(key, recording_dtype).astype(np.float64) for key in action_keys]
    ground_truth = np.concatenate(recorded, axis=1)[:actual_steps]
    prediction = np.asarray(predicted[:actual_steps])
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth {ground_truth.shape} for trajectory {traj_id}")
    errors = action_errors(ground_truth, prediction, key_dims)
    report(f"Unnormalized Action MSE across single traj: {errors.mse}")
    report(f"Unnormalized Action MAE across single traj: {errors.mae}")
    result = TrajectoryResult(traj_id, ground_truth, prediction, inference_steps, errors, episode.length)
    if not config.plot:
        if on_scored is not None:
            on_scored(result)
        return result
    from .plots import plot_trajectory

    state_keys = list(configs["state"].modality_keys) if "state" in configs else []
    if set(action_keys) <= set(state_keys):  # each action panel gets its own key's state (in --modality-keys order)
        state_keys = list(action_keys)
    state = None
    if state_keys:  # read before the trajectory counts as scored: a damaged state column errors it
        state = np.concatenate([episode.states(key_maps["state"].map[k]) for k in state_keys], axis=1)[:actual_steps]
    if on_scored is not None:  # its MSE is printed: a stop while its plot is drawn must not drop it as "not run"
        on_scored(result)
    labels = [f"{key}[{i}]" for key in action_keys for i in range(key_dims[key])]
    path = config.plot_file(traj_id, len(config.traj_ids))
    try:
        result.plot_path = str(plot_trajectory(path, traj_id, ground_truth, prediction, inference_steps, state,
                                               state_keys, action_keys, labels))
    except Exception as exc:  # noqa: BLE001 - the trajectory is scored: a plot it cannot have must not end the run
        result.plot_error = f"{path}: {type(exc).__name__}: {exc}"
        logger.warning("trajectory %d is scored, and its plot was not written: %s", traj_id, result.plot_error)
    return result


def check_open_loop_output_dir(output_dir: str) -> None:
    """OutputDirError when `output_dir` holds an earlier run's results.json: its plots (of other trajectories,
    perhaps another policy's) would be left beside this run's results."""
    from .run_dir import OutputDirError

    earlier = Path(output_dir) / RESULTS_FILENAME
    if earlier.exists():
        raise OutputDirError(f"output_dir {output_dir} holds an earlier run's {RESULTS_FILENAME}; expected a new or empty "
                             "folder (name another, or leave output_dir out for a new dated one)")


def evaluate_open_loop(
    policy: BasePolicy, config: OpenLoopConfig, report: Callable[[str], None] = logger.info, progress: bool = True
) -> OpenLoopResult:
    """Evaluate every trajectory id; write plots and results.json.

    Out-of-range ids and empty episodes are skipped with a warning; a trajectory the policy does not follow
    (TrajectoryError) is errored with its reason. Neither counts in the averages; both are in results.json.
    A run stopped part-way (KeyboardInterrupt; or "aborted": a server gone, ConnectionError or TimeoutError, or
    any other failure) still writes results.json with the trajectories it scored, its status, the ids not run
    and why; then the exception goes on up.
    """
    if config.output_dir is not None:  # before any query
        check_open_loop_output_dir(config.output_dir)
    info = server_info(policy)  # asked once: the observation format, the policy record and the pin all come from it
    guessed_nested = config.observation_format == "auto" and resolve_observation_format(info, "auto") == "nested"
    config = dataclasses.replace(config, observation_format=resolve_observation_format(info, config.observation_format))
    served = record_from_info(info)  # what results.json records, and what the run is held to (pinned_policy)
    not_applied = settings_not_applied(policy, {"denoising_steps": config.denoising_steps})
    warn_not_applied(policy, not_applied)
    served_tag = (served or {}).get("embodiment_tag")
    if config.embodiment_tag is not None and served_tag is not None and served_tag != config.embodiment_tag:
        raise ValueError(f"the server serves embodiment {served_tag!r} and this run asks for {config.embodiment_tag!r} "
                         "(--embodiment-tag); serve that embodiment, or leave the flag out to evaluate the served one")
    config = dataclasses.replace(config, embodiment_tag=config.embodiment_tag or served_tag or "new_embodiment")
    configs = policy.get_modality_config()
    if "action" not in configs:
        raise ValueError(f"the policy's modality config has no 'action' modality; got {sorted(configs)}")
    check_action_steps(configs["action"], config.execution_horizon)
    report(f"Current modality config: \n{ {k: v.to_json_dict() for k, v in configs.items()} }")
    dataset = LeRobotDataset(config.dataset_path)
    if config.modality_keys:  # a key the dataset lacks fails here, before results.json, not in every trajectory
        config = dataclasses.replace(config, modality_keys=dataset_action_keys(config.modality_keys, dataset.action_keys))
    report(f"Dataset length: {dataset.num_episodes}")
    if config.output_dir is None:  # like the CLI: a new dated folder, never one an earlier run wrote
        from .run_dir import make_fresh_dated_output_dir

        label = Path(config.dataset_path).resolve().name or "dataset"
        config = dataclasses.replace(config, output_dir=str(make_fresh_dated_output_dir(DEFAULT_OUTPUT_DIR, label)))
        report(f"Output directory: {config.output_dir}")
    result = OpenLoopResult()
    valid = []
    for traj_id in config.traj_ids:
        if not 0 <= traj_id < dataset.num_episodes:
            reason = f"out of range (the dataset has {dataset.num_episodes} episodes)"
        elif dataset.episode_lengths[traj_id] == 0:
            reason = f"empty: episode {dataset.episode_indices[traj_id]} of {dataset.root} has 0 steps"
        else:
            valid.append(int(traj_id))
            continue
        logger.warning("trajectory %d is %s; skipping it", traj_id, reason)
        result.skipped.append(int(traj_id))
        result.skip_reasons[int(traj_id)] = reason
    report(f"Running evaluation on trajectories: {valid}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(math.ceil(min(config.steps, dataset.episode_lengths[t]) / config.execution_horizon) for t in valid)
        bar = tqdm(total=total, desc="Open-loop inference", **bar_options())
    sent = dataclasses.replace(config, denoising_steps=None) if not_applied else config  # as upstream in server mode
    stopped: Optional[BaseException] = None
    position = 0
    warned_key_matches: set = set()  # this run's: a second run in the process warns again
    try:
        # A server restarted with another checkpoint stops the run (aborted); one that gave no info has nothing to pin.
        with pinned_policy(policy, served) if served is not None else contextlib.nullcontext():
            for position, traj_id in enumerate(valid):
                counted = bar.n if bar is not None else 0
                try:
                    traj = evaluate_trajectory(policy, dataset, traj_id, sent, configs, report,
                                               on_step=(bar.update if bar else None),
                                               on_scored=functools.partial(result.trajectories.__setitem__, traj_id),
                                               warned_key_matches=warned_key_matches,
                                               recording_dtype=np.float32 if serves_replay(served) else np.float64)
                except ServerStoppingError:
                    raise  # the server is going: this trajectory and the rest are not run (it was scored errored, and
                    # the next request waited out the whole timeout of a server already gone)
                except (TrajectoryError, PolicyServerError, DatasetError) as exc:
                    # A server's error reply (ours refuses a non-finite action, say) is that trajectory's: the run goes
                    # on and keeps what it scored; it ended with no results.json at all. So is a damaged file of its
                    # episode (a truncated parquet or mp4): it stopped every trajectory after it.
                    reason = (str(exc) if isinstance(exc, TrajectoryError) else
                              f"its recording cannot be read: {exc}" if isinstance(exc, DatasetError) else
                              f"the server answered with an error: {exc}")
                    if guessed_nested and isinstance(exc, PolicyServerError) and _QUOTED_FLAT_KEY.search(str(exc)):
                        reason += FLAT_FORMAT_HINT
                    result.errored[traj_id] = reason
                    report(f"trajectory {traj_id} errored: {reason}")
                    if bar is not None:  # its steps not run are done with too: a finished run's bar ends at 100%
                        steps = math.ceil(min(config.steps, dataset.episode_lengths[traj_id]) / config.execution_horizon)
                        bar.update(max(0, steps - (bar.n - counted)))
                    continue
                result.trajectories[traj_id] = traj
                report(f"MSE for trajectory {traj_id}: {traj.errors.mse}, MAE: {traj.errors.mae}")
    except (KeyboardInterrupt, Exception) as exc:  # a server gone, Ctrl-C, any failure: keep what was scored, then stop
        stopped = exc
        result.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "aborted"
        # a stop during the report of a trajectory just scored (or errored) leaves it scored, not "not run"
        result.not_run = [t for t in valid[position:] if t not in result.trajectories and t not in result.errored]
    finally:
        if bar is not None:
            bar.close()
    stop = None
    if stopped is not None:
        why = "interrupted (Ctrl-C/SIGTERM)" if result.status == "interrupted" else f"{type(stopped).__name__}: {stopped}"
        stop = {"status": result.status, "not_run": result.not_run, "reason": why}
        where = f"at trajectory {result.not_run[0]}" if result.not_run else "after the last trajectory"
        report(f"STOPPED {where}: {why}; {len(result.trajectories)} trajectories scored, {len(result.not_run)} not run")
    if result.trajectories:
        report(f"Average MSE across all trajs: {result.avg_mse}")
        report(f"Average MAE across all trajs: {result.avg_mae}")
    else:
        report("No valid trajectories were evaluated.")
    entries = {
        t: {"errors": r.errors, "steps": len(r.ground_truth), "trajectory_length": r.trajectory_length,
            "inference_steps": r.inference_steps, "plot_path": r.plot_path, "plot_error": r.plot_error}
        for t, r in result.trajectories.items()
    }
    run_config = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in vars(config).items()}
    result.results_path = write_results(Path(config.output_dir) / RESULTS_FILENAME, open_loop_results(
        entries, run_config, result.skipped, errored=result.errored, skip_reasons=result.skip_reasons, stop=stop,
        policy=served, settings_not_applied=not_applied))
    if stopped is not None:
        raise stopped
    report("Done")
    return result
