"""Open-loop evaluation: query the policy along recorded trajectories and compare its chunks with the recorded actions.

Isaac-GR00T's open-loop algorithm with its defects fixed: history deltas before the first step
(or past the last) repeat the first (last) frame instead of failing; every trajectory gets its own plot; the
policy is reset to the trajectory (`episode_index`) before it is evaluated, so a replay server follows along.
A trajectory the policy does not follow (its reset fails, or it reports another episode, step or episode length) is
errored, not scored: comparing a replay of the wrong episode or step with the recording gives a meaningless error.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from gr00t_client import BasePolicy, ModalityConfig, PolicyServerError
from gr00t_client.cli_flags import home_expanded_path
from gr00t_client.client_options import check_flag

from .progress import bar_options
from .dataset import DatasetError, LeRobotDataset
from .metrics import ActionErrors, NonFiniteError, action_errors, dim_labels, overflow_safe_mean
from .applied_settings import settings_not_applied, warn_not_applied
from .open_loop_checks import (TrajectoryError, _chunk, check_action_steps, check_policy_episode, check_policy_position,
                               check_replay_execution_horizon, check_replays_dataset, check_sendable_language,
                               dataset_action_keys, evaluated_embodiment, execution_horizon_for,
                               replay_execution_horizon, reset_policy)
from .open_loop_observation import (FLAT_FORMAT_HINT, _EpisodeSteps, _FrameWindows, build_observation, format_hint,
                                    history_steps, observation_key_maps, resolve_observation_format)
from .policy_identity import pinned_policy, record_from_info, server_info, serves_replay
from .reported_position import is_position
from .rollout.config import check_whole_number, is_whole_number
from .run_stop import OutputFolderGone, check_folder_kept, folder_identity, interrupts_deferred
from .run_stop import stop_signals_ignored_until_exit
from .results import RESULTS_FILENAME, open_loop_results, write_results
from .server_busy import BUSY_RETRY_FIRST_S, BUSY_RETRY_TOTAL_S, asked_while_busy

__all__ = ["DEFAULT_OUTPUT_DIR", "FLAT_FORMAT_HINT", "OBSERVATION_FORMATS", "RESULTS_FILENAME", "CheckedPolicy",
           "OpenLoopConfig", "OpenLoopResult", "TrajectoryError", "TrajectoryResult", "check_action_steps",
           "check_open_loop_output_dir", "check_open_loop_policy", "evaluate_open_loop", "evaluate_trajectory",
           "history_steps", "is_position"]

logger = logging.getLogger(__name__)

# Where a run given no output_dir gets a new dated folder, as the CLI's runs do (DEFAULT_OUTPUT_DIR/YYYY-MM-DD/...).
DEFAULT_OUTPUT_DIR = "/tmp/open_loop_eval"


@dataclass
class OpenLoopConfig:
    """Settings of an open-loop run (the CLI flags)."""

    dataset_path: str
    traj_ids: Sequence[int] = (0,)
    steps: int = 200
    # None: the policy's action horizon, up to 16 (the reference's default; open_loop_checks.execution_horizon_for)
    execution_horizon: Optional[int] = None
    modality_keys: Optional[Sequence[str]] = None
    # None: a new dated folder under DEFAULT_OUTPUT_DIR (the CLI's default); a folder holding an earlier run's
    # results.json is refused: that run's plots would sit beside this run's results.
    output_dir: Optional[str] = None
    # The embodiment evaluated: None takes the one the server serves (None, unknown, for a server that does not say);
    # a tag the server does not serve is refused rather than recorded as this run's (open_loop_checks.evaluated_embodiment).
    embodiment_tag: Optional[str] = None
    # "auto" (the CLI's default): ask the server's get_server_info, "flat" for the sim wrapper, else "nested" (also for
    # an in-process policy or a server that cannot say); or "nested" (reference server), "flat" (sim wrapper) as given
    observation_format: str = "auto"
    plot: bool = True
    # The reference's --save-plot-path: the plot file of a single trajectory; with several, PATH_traj{id}.SUFFIX; a
    # directory (existing, or written DIR/) gets DIR/traj_{id}.jpeg, as the reference's README describes the flag.
    plot_path: Optional[str] = None
    # Flow-matching denoising steps sent with every request as options["denoising_steps"] (None: the server's).
    denoising_steps: Optional[int] = None

    def __post_init__(self) -> None:
        # '~' is the home folder, as in the CLI's path flags and job files (not a folder named '~' here); the type is
        # checked first: os.path's own TypeError named no argument
        for name in ("dataset_path", "output_dir", "plot_path"):
            value = getattr(self, name)
            if value is None and name != "dataset_path":
                continue
            if not isinstance(value, (str, os.PathLike)):
                expected = "a path (str or os.PathLike)" + ("" if name == "dataset_path" else " or None")
                raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
            setattr(self, name, home_expanded_path(value))
        if not is_whole_number(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1 (steps evaluated per trajectory), got {self.steps!r}")
        if self.execution_horizon is not None and (not is_whole_number(self.execution_horizon) or self.execution_horizon < 1):
            raise ValueError(f"execution_horizon must be an int >= 1 or None, got {self.execution_horizon!r}")
        self.steps = int(self.steps)  # numpy ints, as JSON can write
        if self.execution_horizon is not None:
            self.execution_horizon = int(self.execution_horizon)
        # A list of plain ints: a range was scored and then not JSON-writable, a map (an iterator) read here came
        # empty to the run, and True ran trajectory 1.
        try:
            ids = list(self.traj_ids)
        except TypeError:
            raise ValueError(f"traj_ids must be a sequence of trajectory ids (ints), got {self.traj_ids!r}") from None
        wrong = [t for t in ids if not is_whole_number(t)]
        if wrong:
            raise ValueError(f"traj_ids must hold ints (trajectory ids), got {', '.join(map(repr, wrong))}")
        if not ids:
            raise ValueError("traj_ids must name at least one trajectory")
        ids = self.traj_ids = [int(t) for t in ids]
        repeated_ids = sorted(t for t, times in collections.Counter(ids).items() if times > 1)
        if repeated_ids:  # results are kept per id: a repeat was run again and only its last run kept and averaged
            raise ValueError(f"traj_ids names {', '.join(map(str, repeated_ids))} more than once; name each trajectory once")
        if self.observation_format not in OBSERVATION_FORMATS:
            raise ValueError(f"observation_format must be one of {OBSERVATION_FORMATS}, got {self.observation_format!r}")
        if self.denoising_steps is not None:  # int() sent 2.5 as 2 (results.json kept 2.5), and True as 1
            self.denoising_steps = check_whole_number(self.denoising_steps, "denoising_steps", 1)
        self.plot = check_flag("plot", self.plot)  # bool("no") is True
        if self.modality_keys is not None:
            # A list, as traj_ids: a generator could not be copied for the check, and a str was read as its letters.
            # bytes were read as their byte values (b"arm": [97, 114, 109])
            given = self.modality_keys
            if isinstance(given, (str, bytes)):
                key = given if isinstance(given, str) else given.decode(errors="replace")
                raise ValueError(f"modality_keys must be a list of action keys, got the {type(given).__name__} "
                                 f"{given!r}; expected [{key!r}] for that one key")
            try:
                keys = self.modality_keys = list(self.modality_keys)
            except TypeError:
                raise ValueError(f"modality_keys must be a list of action keys, got {self.modality_keys!r}") from None
            wrong_keys = [key for key in keys if not isinstance(key, str)]
            if wrong_keys:  # they were taken, and the run died later on a key's str method, naming nothing given
                raise ValueError(f"modality_keys must hold action keys as str, got "
                                 f"{', '.join(f'{key!r} ({type(key).__name__})' for key in wrong_keys)}")
            repeated = sorted({key for key in keys if keys.count(key) > 1})
            if repeated:  # the per-key dims are a dict: a repeat would silently double the arrays, not the dims
                raise ValueError(f"modality_keys names {', '.join(map(repr, repeated))} more than once; "
                                 "name each action key once")
        if self.plot and self.plot_path is not None:  # before any query, not once the first trajectory is scored
            from .plots import check_plot_path

            check_plot_path(self.plot_path, traj_ids=self.traj_ids)

    def plot_file(self, traj_id: int, n_trajectories: int) -> Path:
        """Where the plot of `traj_id` goes: plot_path (suffixed per trajectory when several), PLOT_PATH/traj_{id}.jpeg
        when it is a folder, else OUTPUT_DIR/traj_{id}.jpeg (DEFAULT_OUTPUT_DIR when evaluate_trajectory is called
        alone with no output_dir: evaluate_open_loop gives every run its own)."""
        from .plots import DEFAULT_PLOT_SUFFIX, is_plot_folder, trajectory_plot_file

        if self.plot_path is None or is_plot_folder(self.plot_path):
            folder = (self.output_dir or DEFAULT_OUTPUT_DIR) if self.plot_path is None else self.plot_path
            return Path(folder) / f"traj_{traj_id}{DEFAULT_PLOT_SUFFIX}"
        return trajectory_plot_file(self.plot_path, traj_id, n_trajectories)


OBSERVATION_FORMATS = ("nested", "flat", "auto")
# What a stop prints once every trajectory is done with, while the averages are reported and results.json written
SAVING_NOTE = "saving the results of the trajectories scored (Ctrl-C again to stop waiting)"



@dataclass
class TrajectoryResult:
    """One evaluated trajectory: arrays (T, D) in physical units, where the policy was queried, and its errors.

    The arrays are None in evaluate_open_loop's results when it was called with keep_arrays=False (as the CLI is);
    `steps` (T) is kept either way."""

    traj_id: int
    ground_truth: Optional[np.ndarray]
    prediction: Optional[np.ndarray]
    inference_steps: List[int]
    errors: ActionErrors
    trajectory_length: int
    plot_path: Optional[str] = None
    plot_error: Optional[str] = None  # why its plot was not written (plot_path None); it is scored all the same
    steps: Optional[int] = None  # the steps scored; None: taken from ground_truth
    episode_index: Optional[int] = None  # the dataset's episode_index at position traj_id (they differ where it has gaps)

    def __post_init__(self) -> None:
        if self.steps is None:
            if self.ground_truth is None:
                raise ValueError(f"trajectory {self.traj_id}: steps is None and so is ground_truth; expected the "
                                 "number of steps scored, or the ground-truth array to count them")
            self.steps = len(self.ground_truth)

    def without_arrays(self) -> "TrajectoryResult":
        """This result without its ground-truth and prediction arrays: what results.json needs."""
        return dataclasses.replace(self, ground_truth=None, prediction=None)


@dataclass
class OpenLoopResult:
    """Evaluated trajectories, the ids skipped (empty episodes) and errored (with why), and the results.json path."""

    trajectories: Dict[int, TrajectoryResult] = field(default_factory=dict)
    skipped: List[int] = field(default_factory=list)
    skip_reasons: Dict[int, str] = field(default_factory=dict)
    errored: Dict[int, str] = field(default_factory=dict)
    results_path: Optional[Path] = None
    status: str = "complete"  # "incomplete" (ids skipped), "interrupted" (Ctrl-C/SIGTERM) or "aborted" (server gone, a
    # failure): results.json
    not_run: List[int] = field(default_factory=list)  # then holds what was scored, and these ids were not

    @property
    def avg_mse(self) -> float:
        """Plain mean of the per-trajectory MSEs (not weighted by length, like the reference)."""
        return overflow_safe_mean([t.errors.mse for t in self.trajectories.values()]) if self.trajectories else math.nan

    @property
    def avg_mae(self) -> float:
        """Plain mean of the per-trajectory MAEs."""
        return overflow_safe_mean([t.errors.mae for t in self.trajectories.values()]) if self.trajectories else math.nan




def evaluate_trajectory(
    policy: BasePolicy, dataset: LeRobotDataset, traj_id: int, config: OpenLoopConfig,
    configs: Mapping[str, ModalityConfig], report: Callable[[str], None] = logger.info, on_step: Optional[Callable[[], None]] = None,
    on_scored: Optional[Callable[[TrajectoryResult], None]] = None, warned_key_matches: Optional[set] = None,
    recording_dtype: Any = np.float64, output_dir_made: bool = False,
    replaceable_plots: Optional[Collection[Tuple[int, int, int]]] = None,
    check_plot_folder: Optional[Callable[[], None]] = None,
) -> TrajectoryResult:
    """Query the policy every `execution_horizon` steps of trajectory `traj_id` and score the stitched chunks.

    `on_scored` gets the result once it is scored, before its plot is drawn (a stop during the plot keeps it scored).
    Raises TrajectoryError when the policy does not follow the trajectory (see reset_policy, check_policy_position,
    check_policy_episode).
    `warned_key_matches`: the run's key pairings by position already warned of (None: warn of them here).
    `recording_dtype`: the precision the recorded actions are scored in: float64 keeps a float64 recording whole;
    float32 is what a replay serves of it.
    `output_dir_made`: config.output_dir was made, and is watched, by the caller (evaluate_open_loop): a plot into it
    never makes it again (a folder deleted meanwhile fails the plot, and the caller's check stops the run); a plot
    folder of its own (plot_path) and, called alone, the output folder are made here.
    `replaceable_plots`: the files (plots.plot_identity) outside config.output_dir its plot may replace, those the
    run's check_plot_folder_free accepted (None: any, called alone); another one there is kept and fails the plot.
    `check_plot_folder`: the plot folder of its own was made, and is watched, by the caller (_plot_folder_check):
    OutputFolderGone once it is gone (a share unmounted), and the plot then has a plot_error; it is never made again.
    """
    if config.observation_format == "auto":  # called alone: evaluate_open_loop resolves it once per run
        observation_format = resolve_observation_format(server_info(policy), "auto", policy)
        config = dataclasses.replace(config, observation_format=observation_format)
    episode = dataset.episode(traj_id)
    action_keys = (dataset_action_keys(config.modality_keys, dataset.action_keys) if config.modality_keys
                   else list(configs["action"].modality_keys))
    config = dataclasses.replace(config, execution_horizon=execution_horizon_for(configs["action"], config.execution_horizon))
    check_action_steps(configs["action"], config.execution_horizon)
    key_maps = observation_key_maps(configs, dataset, warned_key_matches)
    missing = [k for k in action_keys if k not in dataset.action_keys]
    if missing:
        raise ValueError(f"action keys {missing} are not in the dataset; it has {dataset.action_keys}")
    key_dims = {key: episode.actions(key).shape[1] for key in action_keys}
    actual_steps = min(config.steps, episode.length)
    try:  # before any query: a NaN in the scored rows would make this trajectory's scores, and the averages, NaN
        # in the precision scored: a float64 value past float32's range passed as float64 and was scored as inf
        episode.check_finite("action", action_keys, recording_dtype, rows=actual_steps)  # rows past --steps: unscored
    except DatasetError as exc:
        raise TrajectoryError(f"its recorded actions cannot be scored against: {exc}") from None
    gap = f" (episode_index {episode.episode_index})" if episode.episode_index != traj_id else ""
    report(f"Running trajectory: {traj_id}{gap}")
    report(f"Using {actual_steps} steps (requested: {config.steps}, trajectory length: {episode.length})")
    inference_steps = list(range(0, actual_steps, config.execution_horizon))
    if "state" in configs:  # the rows sent, as float32: a NaN was reported as row 0 of the request, not the file's step
        sent_rows = sorted({int(row) for step in inference_steps
                            for row in history_steps(step, configs["state"].delta_indices, episode.length)})
        state_keys = list(key_maps["state"].map.values())
        for key in state_keys:  # read first: a damaged column is "its recording cannot be read" (the caller), as before
            episode.states(key)
        try:
            episode.check_finite("state", state_keys, np.float32, rows=sent_rows)
        except DatasetError as exc:
            raise TrajectoryError(f"its recorded states cannot be sent to the policy: {exc}") from None
    steps_of = _EpisodeSteps(episode)
    if "language" in configs:  # before any query: the client refuses the whole request, which ended the run here
        for source in key_maps["language"].map.values():
            check_sendable_language(steps_of.language(source), source, inference_steps)
    # A stateful policy (ReplayPolicy) moves to this trajectory; a stateless model ignores the options.
    reset_policy(policy, traj_id, config.execution_horizon, episode.length, episode.episode_index)
    predicted: List[np.ndarray] = []
    windows = _FrameWindows(episode, inference_steps, configs, key_maps)
    for step in inference_steps:
        logger.debug("inferencing at step: %d", step)
        observation = build_observation(steps_of, step, configs, windows.at(step), key_maps, config.observation_format)
        options = None if config.denoising_steps is None else {"denoising_steps": int(config.denoising_steps)}
        # refused busy, it was not run: asked again for a while, then the trajectory errors (a busy spell of the
        # server's left it out of the averages)
        action, info = asked_while_busy(lambda: policy.get_action(observation, options=options), BUSY_RETRY_FIRST_S,
                                        BUSY_RETRY_TOTAL_S, f"the get_action at step {step} of trajectory {traj_id}")
        check_policy_position(info, traj_id, step, config.execution_horizon, episode.episode_index)
        check_policy_episode(info, episode.length, step, inference_steps[-1], config.execution_horizon)
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
    try:
        errors = action_errors(ground_truth, prediction, key_dims)
    except NonFiniteError as exc:
        raise TrajectoryError(f"it cannot be scored: {exc}") from None
    report(f"Unnormalized Action MSE across single traj: {errors.mse}")
    report(f"Unnormalized Action MAE across single traj: {errors.mae}")
    result = TrajectoryResult(traj_id, ground_truth, prediction, inference_steps, errors, episode.length,
                              episode_index=episode.episode_index)
    if not config.plot:
        if on_scored is not None:
            on_scored(result)
        return result
    from .plots import plot_trajectory

    # Each action panel gets its own key's same state dimension, or none: a key without a state of its action's width
    # gets NaN columns (no line), never another key's state that the concatenation lined up under it.
    policy_state_keys = set(configs["state"].modality_keys) if "state" in configs else set()
    state_keys, state_columns = [], []
    for key in action_keys:  # read before the trajectory counts as scored: a damaged state column errors it
        own = episode.states(key_maps["state"].map[key])[:actual_steps] if key in policy_state_keys else None
        if own is not None and own.shape[1] == key_dims[key]:
            state_keys.append(key)
            state_columns.append(np.asarray(own, dtype=np.float64))
        else:
            state_columns.append(np.full((actual_steps, key_dims[key]), np.nan))
    state = np.concatenate(state_columns, axis=1) if state_keys else None
    if on_scored is not None:  # its MSE is printed: a stop while its plot is drawn must not drop it as "not run"
        on_scored(result)
    labels = dim_labels(key_dims)
    path = config.plot_file(traj_id, len(config.traj_ids))
    try:
        if check_plot_folder is not None:
            check_plot_folder()
        elif config.plot_path is not None or not output_dir_made:
            path.parent.mkdir(parents=True, exist_ok=True)
        # a run sharing a plot folder outside the run's own may have written this plot's file since the check
        replaceable = None if _same_folder(str(path.parent), config.output_dir) else replaceable_plots
        result.plot_path = str(plot_trajectory(path, traj_id, ground_truth, prediction, inference_steps, state,
                                               state_keys, action_keys, labels,
                                               replaceable=replaceable).resolve())  # not the cwd's
    except KeyboardInterrupt:
        result.plot_error = f"{path}: not written: the run was stopped (Ctrl-C/SIGTERM) while it was drawn"
        raise
    except Exception as exc:  # noqa: BLE001 - the trajectory is scored: a plot it cannot have must not end the run
        result.plot_error = f"{path}: {type(exc).__name__}: {exc}"
        logger.warning("trajectory %d is scored, and its plot was not written: %s", traj_id, result.plot_error)
    return result


def check_open_loop_output_dir(output_dir: str) -> None:
    """OutputDirError when `output_dir` is a file (its results.json could not be written after every query), or holds
    an earlier run's results.json: its plots (of other trajectories, perhaps another policy's) would be left beside
    this run's results."""
    from .output_files import OutputDirError

    output_dir = home_expanded_path(output_dir)
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise OutputDirError(f"output_dir {output_dir} exists and is not a directory; expected a new or empty folder")
    earlier = Path(output_dir) / RESULTS_FILENAME
    if earlier.exists():
        raise OutputDirError(f"output_dir {output_dir} holds an earlier run's {RESULTS_FILENAME}; expected a new or empty "
                             "folder (name another, or leave output_dir out for a new dated one)")


def claim_open_loop_output_dir(output_dir: Path, config: OpenLoopConfig, flag: str = "--output-dir",
                               take_over_ended: bool = False, **where: Any) -> Path:
    """Claim `output_dir` for an open-loop run: create its open_loop_run.json holding `config`, `where` (the CLI's
    server host and port) and this process as holder, atomically (run_claim.claim_output_dir); OutputDirError naming
    `flag` when another run claimed it first. With `take_over_ended` (the Python API, which has no --overwrite to
    empty a killed run's claim), a claim whose run ended or whose process is gone is taken over (run_claim.take_claim)."""
    from .open_loop_cli import OPEN_LOOP_RUN_FILENAME
    from .output_files import OutputDirError
    from .run_claim import claim_output_dir, take_claim

    settings = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in vars(config).items()}
    record = {"kind": "open_loop", "config": {**settings, "output_dir": str(output_dir)}, **where}
    try:
        return claim_output_dir(output_dir, OPEN_LOOP_RUN_FILENAME, record, flag)
    except OutputDirError:
        if not take_over_ended:
            raise
    return take_claim(output_dir, OPEN_LOOP_RUN_FILENAME, record, flag)  # refuses a holder still running


@dataclass(frozen=True)
class CheckedPolicy:
    """What a run learns of the policy before any trajectory (check_open_loop_policy): the settings resolved against
    it (observation format, embodiment, execution horizon, modality keys), what it serves, and the dataset;
    `asked`: the config the check was made for (evaluate_open_loop refuses it for another)."""

    config: OpenLoopConfig
    info: Any
    served: Optional[Dict[str, Any]]
    not_applied: Dict[str, Any]
    configs: Mapping[str, ModalityConfig]
    dataset: LeRobotDataset
    asked: OpenLoopConfig
    # the key pairings by position the check warned of (open_loop_observation._KeyMap): a run warns of each once
    warned_key_matches: frozenset = frozenset()
    # the files in plot_path the check accepted (plots.check_plot_folder_free): the only ones there its plots replace
    replaceable_plots: frozenset = frozenset()


def check_open_loop_policy(policy: BasePolicy, config: OpenLoopConfig,
                           report: Callable[[str], None] = logger.info) -> CheckedPolicy:
    """Ask the policy what it serves and check the run's settings against it and the dataset, before any trajectory:
    ValueError for trajectory ids the dataset lacks, an execution horizon it cannot serve, another embodiment, action
    keys the dataset or the policy lacks, camera, state or language keys of the policy that the dataset lacks, or a
    replay of another dataset (the CLI checks this before it empties an --overwrite folder, so a refused run leaves the
    earlier results there)."""
    asked = copy.deepcopy(config)  # the caller's config may be changed afterwards: what it was when checked
    replaceable_plots: frozenset = frozenset()
    if config.plot and config.plot_path is not None:  # another run's plots would be replaced (before the CLI's claim
        from .plots import check_plot_folder_free  # empties its --output-dir, whose results.json names its own plots)

        replaceable_plots = check_plot_folder_free(config.plot_path, config.output_dir, traj_ids=config.traj_ids)
    info = server_info(policy)  # asked once: the observation format, the policy record and the pin all come from it
    observation_format = resolve_observation_format(info, config.observation_format, policy)
    config = dataclasses.replace(config, observation_format=observation_format)
    served = record_from_info(info)  # what results.json records, and what the run is held to (pinned_policy)
    not_applied = settings_not_applied(policy, {"denoising_steps": config.denoising_steps})
    warn_not_applied(policy, not_applied)
    served_tag = (served or {}).get("embodiment_tag")
    config = dataclasses.replace(config, embodiment_tag=evaluated_embodiment(config.embodiment_tag, served_tag))
    configs = policy.get_modality_config()
    if "action" not in configs:
        raise ValueError(f"the policy's modality config has no 'action' modality; got {sorted(configs)}")
    horizon = replay_execution_horizon(served, config.execution_horizon, report)  # a replay's own when left out
    config = dataclasses.replace(config, execution_horizon=execution_horizon_for(configs["action"], horizon))
    check_replay_execution_horizon(served, config.execution_horizon,  # first: it names the replay's own, to pass
                                   configs["action"].horizon)
    check_action_steps(configs["action"], config.execution_horizon)
    report(f"Current modality config: \n{ {k: v.to_json_dict() for k, v in configs.items()} }")
    _refuse_flat_spelt_configs(configs)
    dataset = LeRobotDataset(config.dataset_path)
    _warn_if_recording_unfinished(dataset)
    check_traj_ids_in_dataset(config.traj_ids, dataset.num_episodes, config.dataset_path)
    if config.modality_keys:  # a key the dataset lacks fails here, before results.json, not in every trajectory
        config = dataclasses.replace(config, modality_keys=dataset_action_keys(config.modality_keys, dataset.action_keys))
        _check_modality_keys_served(list(config.modality_keys), list(configs["action"].modality_keys))
    else:  # the policy's keys: once here, not as an aborted run in the first trajectory
        _check_policy_action_keys(list(configs["action"].modality_keys), list(dataset.action_keys))
    warned: set = set()  # its camera, state and language keys too: each trajectory pairs them the same way
    observation_key_maps(configs, dataset, warned)
    check_replays_dataset(served, dataset)  # a replay of a split or another export is scored as this one otherwise
    return CheckedPolicy(config, info, served, not_applied, configs, dataset, asked, frozenset(warned),
                         replaceable_plots)


def _warn_if_recording_unfinished(dataset: LeRobotDataset) -> None:
    """A warning when the dataset read here was recorded by a run killed or stopped part-way: scored silently, its
    episodes were taken for the whole set (the replay server and make-test-checkpoint warn of it the same way)."""
    from .dataset.unfinished_recording import unfinished_recording_warning

    unfinished = unfinished_recording_warning(Path(dataset.root), dataset.num_episodes)
    if unfinished is not None:
        logger.warning("%s", unfinished)


def check_traj_ids_in_dataset(traj_ids: Sequence[int], num_episodes: int, dataset_path: str) -> None:
    """ValueError naming the traj_ids (--traj-ids) past the dataset's end (a truncated copy, another split): a run that
    scored only the others read as complete."""
    missing = [int(t) for t in traj_ids if not 0 <= t < num_episodes]
    if missing:
        from .dataset.unfinished_recording import unfinished_recording_warning

        held = f"ids 0 to {num_episodes - 1}" if num_episodes else "no ids"
        why = unfinished_recording_warning(Path(dataset_path), num_episodes)  # a recording cut short says so
        raise ValueError(f"traj_ids (--traj-ids) {missing} are not in the dataset {dataset_path}: it has {num_episodes} "
                         f"episodes ({held}); expected ids the dataset has" + (f" ({why})" if why else ""))


def _check_modality_keys_served(keys: List[str], policy_keys: List[str]) -> None:
    """ValueError naming the policy's action keys when it lacks some of the modality_keys (--modality-keys) asked for:
    every trajectory errored on it."""
    missing = [key for key in keys if key not in policy_keys]
    if missing:
        raise ValueError(f"modality_keys (--modality-keys) {missing} are not among the policy's action keys "
                         f"{policy_keys}; expected keys the policy outputs (and the dataset has)")


def _refuse_other_check(checked: CheckedPolicy, config: OpenLoopConfig) -> None:
    """ValueError naming the settings in which `config` differs from the one `checked` was made for (output_dir
    aside): the run would evaluate the settings checked, not the ones asked for."""
    differing = [f.name for f in dataclasses.fields(OpenLoopConfig) if f.name != "output_dir"
                 and _comparable(getattr(checked.asked, f.name)) != _comparable(getattr(config, f.name))]
    if differing:
        shown = "; ".join(f"{name}: checked {getattr(checked.asked, name)!r}, given {getattr(config, name)!r}"
                          for name in differing)
        raise ValueError(f"checked was made for another config ({shown}); expected check_open_loop_policy's answer "
                         "for this config (output_dir aside): check it again with this config")


def _comparable(value: Any) -> Any:
    """A config value as _refuse_other_check compares it: a path as its text, a tuple as a list (equal settings)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_comparable(item) for item in value]
    return value


def _plot_folder_check(config: OpenLoopConfig, traj_ids: Sequence[int]) -> Optional[Callable[[], None]]:
    """The plot folder of its own (plot_path), outside the output folder, made now and watched as the output folder is
    (check_folder_kept, by its identity: it holds no claim): OutputFolderGone once it is gone (a share unmounted,
    deleted), so a plot is never written into a folder made again beneath the mount point. None without one, or when
    it cannot be made now (each plot then says why)."""
    if not config.plot or config.plot_path is None or not traj_ids:
        return None
    folder = config.plot_file(traj_ids[0], len(config.traj_ids)).parent
    if _same_folder(str(folder), config.output_dir):
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        identity = folder_identity(folder)
    except OSError:
        return None
    return functools.partial(check_folder_kept, folder, identity, None, what="plot folder")


def _same_folder(a: Optional[str], b: Optional[str]) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _refuse_flat_spelt_configs(configs: Mapping[str, ModalityConfig]) -> None:
    """ValueError when the policy reports its keys in the flat spelling (`state.arm`, `action.arm`), as no gr00t-server
    or upstream N1.6+ server does: matched by name against the dataset's plain keys they were sent back doubled
    (`state.state.arm`), or scored against no recorded action."""
    flat = {kind: [key for key in config.modality_keys if key.startswith(f"{kind}.")]
            for kind, config in configs.items() if kind in ("video", "state", "action")}
    flat = {kind: keys for kind, keys in flat.items() if keys}
    if flat:
        shown = "; ".join(f"{kind}: {keys}" for kind, keys in flat.items())
        raise ValueError(f"the policy's modality config names its keys in the flat spelling ({shown}); expected the "
                         "plain names (`arm`, not `action.arm`) that gr00t-server and upstream Isaac-GR00T N1.6+ "
                         "servers report and the dataset's meta/modality.json uses, which open-loop matches")


def _check_policy_action_keys(policy_keys: List[str], dataset_keys: List[str]) -> None:
    """ValueError naming both key sets when the dataset lacks some of the policy's action keys, suggesting
    --modality-keys with the keys they share (when they share any)."""
    missing = [key for key in policy_keys if key not in dataset_keys]
    if not missing:
        return
    shared = [key for key in policy_keys if key in dataset_keys]
    advice = (f"pass --modality-keys {' '.join(shared)} (modality_keys) to compare the keys both have" if shared
              else "they share none: evaluate this policy against a dataset of its own embodiment")
    raise ValueError(f"the policy's action keys {policy_keys} are not all in the dataset (it lacks {missing}); the "
                     f"dataset's action keys are {dataset_keys}; expected a dataset with the policy's action keys, or "
                     f"{advice}")


def evaluate_open_loop(
    policy: BasePolicy, config: OpenLoopConfig, report: Callable[[str], None] = logger.info, progress: bool = True,
    claim: Optional[str] = None, checked: Optional[CheckedPolicy] = None, keep_arrays: bool = True,
) -> OpenLoopResult:
    """Evaluate every trajectory id; write plots and results.json.

    Ids past the dataset's end are refused (ValueError) before any trajectory; empty episodes are skipped with a
    warning, which makes the run "incomplete"; a trajectory the policy does not follow (TrajectoryError) is errored
    with its reason. Neither counts in the averages; both are in results.json.
    A run stopped part-way (KeyboardInterrupt; or "aborted": a server gone, ConnectionError or TimeoutError, or
    any other failure) still writes results.json with the trajectories it scored, its status, the ids not run
    and why; then the exception goes on up. A stop once the last trajectory is done with, while results.json is
    written, is noted (on the main thread) and the run ends as it would have; a second one stops the waiting.
    An output folder that disappears meanwhile (deleted, unmounted, or deleted and made again) stops the run with
    OutputFolderGone before the next plot, and nothing more is written: results.json written there would make the
    folder again and report a run that is not there. `claim` names a file in it that must stay there (the CLI's run
    claim, taken by the caller); with None, the run claims the folder as the CLI does (claim_open_loop_output_dir), so
    a folder a run still running holds is refused with OutputDirError, and removes its claim once results.json is
    written (a run killed mid-way may leave it, as a CLI run leaves its claim). A results.json that another writer put
    there during the run is never replaced: OutputDirError naming it.
    `checked`: check_open_loop_policy's answer for this policy and config, when the caller asked it already; one made
    for another config (output_dir aside) is refused with ValueError naming the settings that differ.
    `keep_arrays`: each trajectory's result keeps its ground-truth and prediction arrays (memory grows with steps x
    trajectories); False keeps only its errors, steps and plot, what results.json holds (the CLI's choice).
    """
    if config.output_dir is not None:  # before any query
        check_open_loop_output_dir(config.output_dir)
        if claim is None:  # a folder a run still running holds (the CLI's, another call's); the CLI's is its caller's
            from .run_claim import refuse_live_claims

            refuse_live_claims(config.output_dir, "output_dir")
    replaceable_plots = None
    if checked is not None:
        _refuse_other_check(checked, config)
        if config.plot and config.plot_path is not None and not _same_folder(checked.asked.output_dir, config.output_dir):
            # checked for another output folder: whether the plots there are this run's own was not asked
            from .plots import check_plot_folder_free

            replaceable_plots = check_plot_folder_free(config.plot_path, config.output_dir, traj_ids=config.traj_ids)
    checked = checked or check_open_loop_policy(policy, config, report)
    if replaceable_plots is None:
        replaceable_plots = checked.replaceable_plots
    hint_for = functools.partial(format_hint, checked.info, config.observation_format)  # the form asked, not resolved
    config = dataclasses.replace(checked.config, output_dir=config.output_dir)
    served, not_applied, configs, dataset = checked.served, checked.not_applied, checked.configs, checked.dataset
    report(f"Dataset length: {dataset.num_episodes}")
    if config.output_dir is None:  # like the CLI: a new dated folder, never one an earlier run wrote
        from .run_dir import make_fresh_dated_output_dir

        label = Path(config.dataset_path).resolve().name or "dataset"
        config = dataclasses.replace(config, output_dir=str(make_fresh_dated_output_dir(DEFAULT_OUTPUT_DIR, label)))
        report(f"Output directory: {config.output_dir}")
    output_folder = Path(config.output_dir)
    output_folder.mkdir(parents=True, exist_ok=True)  # now, so that a folder deleted or unmounted later is told apart
    watch = None
    if claim is None:  # atomically, as the CLI claims it: of two runs into one folder the second is refused; and a
        # folder deleted and made again, which may get the freed inode (ext4), is told apart by the claim's absence
        watch = claim_open_loop_output_dir(output_folder, config, flag="output_dir", take_over_ended=True)
        claim = watch.name
    check_output_folder = functools.partial(check_folder_kept, output_folder, folder_identity(output_folder), claim)
    result = OpenLoopResult()

    def scored(traj_id: int, traj: TrajectoryResult) -> None:
        result.trajectories[traj_id] = traj
        check_output_folder()  # before its plot: a plot saved into a vanished folder would make it again

    lengths = dataset.episode_lengths  # read once: a dataset's list may be built on every read
    valid = []
    for traj_id in config.traj_ids:
        if lengths[traj_id] != 0:  # an id past the end was refused by check_open_loop_policy
            valid.append(int(traj_id))
            continue
        reason = f"empty: episode {dataset.episode_indices[traj_id]} of {dataset.root} has 0 steps"
        logger.warning("trajectory %d is %s; skipping it", traj_id, reason)
        result.skipped.append(int(traj_id))
        result.skip_reasons[int(traj_id)] = reason
    if result.skipped:  # asked for and not scored: not a complete run, whatever else happens
        result.status = "incomplete"
    check_plot_folder = _plot_folder_check(config, valid)
    report(f"Running evaluation on trajectories: {valid}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(math.ceil(min(config.steps, lengths[t]) / config.execution_horizon) for t in valid)
        bar = tqdm(total=total, desc="Open-loop inference", **bar_options())
    sent = dataclasses.replace(config, denoising_steps=None) if not_applied else config  # as upstream in server mode
    stopped: Optional[BaseException] = None
    position = 0
    warned_key_matches = set(checked.warned_key_matches)  # this run's: a second run in the process warns again
    try:
        # A server restarted with another checkpoint stops the run (aborted); one that gave no info has nothing to pin.
        with pinned_policy(policy, served) if served is not None else contextlib.nullcontext():
            for position, traj_id in enumerate(valid):
                counted = bar.n if bar is not None else 0
                try:
                    traj = evaluate_trajectory(policy, dataset, traj_id, sent, configs, report,
                                               on_step=(bar.update if bar else None),
                                               on_scored=functools.partial(scored, traj_id),
                                               warned_key_matches=warned_key_matches,
                                               recording_dtype=np.float32 if serves_replay(served) else np.float64,
                                               output_dir_made=True, replaceable_plots=replaceable_plots,
                                               check_plot_folder=check_plot_folder)
                except ConnectionError:  # ServerStoppingError, a relay's UpstreamFailedError: PolicyServerErrors too
                    raise  # the server is going: this trajectory and the rest are not run (it was scored errored, and
                    # the next request waited out the whole timeout of a server already gone)
                except (TrajectoryError, PolicyServerError, DatasetError) as exc:
                    # A server's error reply (ours refuses a non-finite action, say) is that trajectory's: the run goes
                    # on and keeps what it scored; it ended with no results.json at all. So is a damaged file of its
                    # episode (a truncated parquet or mp4): it stopped every trajectory after it.
                    reason = (str(exc) if isinstance(exc, TrajectoryError) else
                              f"its recording cannot be read: {exc}" if isinstance(exc, DatasetError) else
                              f"the server answered with an error: {exc}")
                    if isinstance(exc, PolicyServerError):
                        reason += hint_for(str(exc))
                    result.errored[traj_id] = reason
                    report(f"trajectory {traj_id} errored: {reason}")
                    if bar is not None:  # its steps not run are done with too: a finished run's bar ends at 100%
                        steps = math.ceil(min(config.steps, lengths[traj_id]) / config.execution_horizon)
                        bar.update(max(0, steps - (bar.n - counted)))
                    continue
                result.trajectories[traj_id] = traj if keep_arrays else traj.without_arrays()  # scored and plotted
                report(f"MSE for trajectory {traj_id}: {traj.errors.mse}, MAE: {traj.errors.mae}")
    except (KeyboardInterrupt, Exception) as exc:  # a server gone, Ctrl-C, any failure: keep what was scored, then stop
        stopped = exc
        result.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "aborted"
        # a stop during the report of a trajectory just scored (or errored) leaves it scored, not "not run"
        result.not_run = [t for t in valid[position:] if t not in result.trajectories and t not in result.errored]
    finally:
        if bar is not None:
            bar.close()
        dataset.close()  # the camera files its decoders kept open between windows
    # Scored: a stop from here to results.json is noted, not acted on (it lost every score, and the CLI emptied the
    # output folder); a second one stops waiting.
    with interrupts_deferred(SAVING_NOTE):
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
            t: {"errors": r.errors, "steps": r.steps, "trajectory_length": r.trajectory_length, "episode_index": r.episode_index,
                "inference_steps": r.inference_steps, "plot_path": r.plot_path, "plot_error": r.plot_error}
            for t, r in result.trajectories.items()
        }
        run_config = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in vars(config).items()}
        # absolute: results.json does not record the working directory relative paths were given in
        run_config.update(dataset_path=str(Path(config.dataset_path).resolve()),
                          output_dir=str(Path(config.output_dir).resolve()))
        if config.plot_path is not None:  # a folder keeps its trailing '/', which says it is one (plots.is_plot_folder)
            run_config["plot_path"] = str(Path(config.plot_path).resolve()) + (
                os.sep if config.plot_path.endswith(("/", os.sep)) else "")
        results_path = Path(config.output_dir) / RESULTS_FILENAME
        try:
            check_output_folder()  # results.json written into a vanished folder would make it again
            # created, never replacing one: another writer's (a gr00t-eval older than this claim, say) is kept
            result.results_path = write_results(results_path, open_loop_results(
                entries, run_config, result.skipped, errored=result.errored, skip_reasons=result.skip_reasons,
                stop=stop, policy=served, settings_not_applied=not_applied), exclusive=True)
        except OutputFolderGone as gone:
            raise gone from stopped
        except FileExistsError:
            from .output_files import OutputDirError

            raise OutputDirError(f"output_dir {config.output_dir}: {RESULTS_FILENAME} appeared there during this run "
                                 "(another run wrote it); it is kept, and this run's results were not written: "
                                 "expected a folder no other run writes to (a new one, or none for a new dated one)"
                                 ) from stopped
        finally:
            if watch is not None:  # its own claim: the folder keeps only the run's plots and results.json
                from .run_claim import release_alive_lock
                from .run_dir import remove_quietly

                release_alive_lock(watch, remove=True)
                remove_quietly(watch)
        stop_signals_ignored_until_exit()  # saved: from now on a stop leaves the CLI's exit status and claim the results'
    if stopped is not None:
        raise stopped
    report("Done")
    return result
