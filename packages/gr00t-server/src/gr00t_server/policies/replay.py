"""ReplayPolicy: serve a LeRobot dataset's recorded actions as action chunks, with a cursor per client session."""

from __future__ import annotations

import logging
import numbers
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from gr00t_client.cli_flags import home_expanded_path
from gr00t_client.modality import ModalityConfig, copy_modality_configs, modality_configs_from_json
from gr00t_client.policy import BasePolicy, ObservationError, nested_batch_size, validate_observation

from ..extras import require_lerobot_dataset
from ..fork_locks import renew_locks_after_fork
from ..modality_configs import derive_from_dataset
from ..serving.endpoints import RateLimitedLog, named_session
from ..serving.sessions import DROPPED_MARK_MIN_S, MAX_DROPPED_MARKS, DroppedMarks, SegmentedLRU, used_how_often
from .dataset_changes import DatasetChanges
from .option_names import OptionNames
from .recorded_seeds import recorded_seeds

if TYPE_CHECKING:  # gr00t-eval comes with the `replay` extra, imported when a ReplayPolicy is made
    from gr00t_eval.dataset import LeRobotDataset

logger = logging.getLogger(__name__)

SESSION_OPTION = "_session_id"
# Set True by the server on a reset of our client's session (served before) that the server does not know: it
# restarted, or dropped the session longer ago than it remembers, so its episodes are gone with the old server.
SESSION_LOST_OPTION = "_session_lost"
DEFAULT_SESSION = "default"
DEFAULT_MAX_ROWS = 128  # rows one session may replay at once (options["batch_size"], episode_index lists)
# A forgotten session's mark (a _Forgotten and its DroppedMarks entry) with a 128-character id takes about 480 bytes
# plus 4 per row (tracemalloc: 970-1000 bytes at max_rows 128), so at most this many bytes of marks are held: 15,625
# marks at the default max_rows (or 4 x max_sessions where more, as the server's table). A flood of one-shot sessions
# resetting max_rows rows each made 65,536 marks of ~1.6 KB, about 100 MB.
FORGOTTEN_MARKS_BYTES = 16 * 10**6
_FORGOTTEN_MARK_BYTES = 512  # a mark's bytes besides its episodes (4 per row), rounded up
DEFAULT_MAX_SESSIONS = 1024  # cursors kept; the least recently used (of those used only once, first) is forgotten
DEFAULT_MAX_CACHED_BYTES = 256 * 1024 * 1024  # episodes' actions kept read; the least recently used is dropped first
MAX_WARNED_WIDTHS = 64  # (state key, width) pairs a strict=False replay warns about once each; past them, no more
# The options each call takes. get_action also takes a model's options (seed, noise, rtc, denoising_steps) and the
# rollout's reset_mask, and ignores them: a replay is the recording, whatever the noise, and evaluations send them to
# any server. Any other name is a typo ({"episode": 2} restarted the episode the session was on, without a word).
_RESET_OPTIONS = frozenset({"episode_index", "step_index"})
_GET_ACTION_OPTIONS = frozenset({"batch_size", "reset_mask", "seed", "noise", "rtc", "denoising_steps"})


@dataclass
class _Cursor:
    """Replay position of one session: an episode position and a step per batch row."""

    episodes: List[int]
    steps: List[int]


class _Forgotten(NamedTuple):
    """Why the replay forgot a session, and the episodes its rows replayed (a reset that keeps them restarts them).
    Compact (a use count for a reason, the episodes as an int32 array): FORGOTTEN_MARKS_BYTES' worth are held."""

    uses: int  # 0: dropped (drop_session); else forgotten for room after this many uses
    episodes: array

    def reason(self, max_sessions: int) -> str:
        if not self.uses:
            return ("which was told to drop it (drop_session: its server dropped the session, or its client "
                    "disconnected)")
        return (f"which keeps at most {max_sessions} sessions (max_sessions) and it was the least recently used (of "
                f"those {used_how_often(self.uses)})")


def _warn_if_still_recorded(root: Path, n_episodes: int) -> None:
    """A warning when `gr00t-eval record` is still writing the dataset (its claim is live), or ended without
    finishing it (killed): served silently, the replay held only the episodes finished so far."""
    from gr00t_eval.dataset.overwrite import RECORD_CLAIM
    from gr00t_eval.dataset.unfinished_recording import unfinished_recording_warning
    from gr00t_eval.run_claim import holder_gone, read_holder

    unfinished = unfinished_recording_warning(root, n_episodes)
    if unfinished is not None:
        logger.warning("%s", unfinished)
        return
    holder = read_holder(root / RECORD_CLAIM)
    if holder is None or holder.finished:
        return
    if not holder_gone(holder, root / RECORD_CLAIM):  # another host's or pid namespace's: by its alive lock
        logger.warning("dataset %s is still being recorded by `gr00t-eval record` (%s, in %s): serving the %d episodes "
                       "finished so far, and once it lists another, refusing those not yet read (the dataset changed "
                       "on disk); start the server again once the recording ends", root, holder.describe(),
                       RECORD_CLAIM, n_episodes)


class ReplayPolicy(BasePolicy):
    """Replays dataset actions in chunks laid out by the action config's delta indices.

    Each call returns, for every batch row, rows `step + delta` of the row's episode (clamped to the
    episode, so past the end the last row repeats) and then advances the row by `execution_horizon`.
    State is kept per session (`options["_session_id"]`, set by the server); a session that was never
    reset starts at episode position 0, step 0. Episodes are addressed by position in the episode list.
    Only actions are read from the dataset; no video is decoded. A session replays at most `max_rows` rows,
    at most `max_sessions` sessions are kept (a SegmentedLRU, as the server's table: sessions used only once are
    forgotten first) and at most `max_cached_bytes` of episodes' actions stay read (least recently used forgotten
    first), so memory stays bounded. An episode whose rows are out of order or
    whose actions hold NaN or inf as served in float32 (a float64 recording's values beyond float32's range too) is
    refused (DatasetError naming the file and row) when a reset or call reaches it, before the cursor moves.
    An episode read from disk after the dataset's meta files or its data file changed (re-recorded under the server)
    is refused (DatasetError: restart the server); episodes already read keep replaying the recording loaded.
    A state whose width is not the dataset's (meta/modality.json) is refused when strict, as a model refuses it,
    else warned about once per key and width.
    """

    stateful_sessions = True
    takes_session_lost = True  # reset options[SESSION_LOST_OPTION] (the server's mark of a session it does not know)
    observation_format = "nested"  # reported by get_server_info

    def __init__(
        self,
        dataset: Union[LeRobotDataset, str, Path],
        modality_configs: Optional[Mapping[str, ModalityConfig]] = None,
        execution_horizon: Optional[int] = None,
        *,
        strict: bool = True,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
        dataset_changes: Optional[DatasetChanges] = None,
    ) -> None:
        super().__init__(strict=strict)
        for name, value in (("max_rows", max_rows), ("max_sessions", max_sessions), ("max_cached_bytes", max_cached_bytes)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.max_rows = int(max_rows)  # numpy ints as plain ints
        self.max_sessions = int(max_sessions)
        self.max_cached_bytes = int(max_cached_bytes)
        dataset_class = require_lerobot_dataset()
        # The files' signatures before the dataset is read (a change while it is read is then seen): a path's taken
        # here, a dataset object's by whoever read it (`dataset_changes`; serve reads it before its modality config,
        # user code that can take seconds), else now.
        # '~' expanded as LeRobotDataset does: ./~/ds was watched (a stale folder, or none) while $HOME/ds was served
        changes = dataset_changes
        if changes is None and not isinstance(dataset, dataset_class):
            changes = DatasetChanges(Path(home_expanded_path(dataset)))
        self.dataset = dataset if isinstance(dataset, dataset_class) else dataset_class(dataset)
        self._changes = changes or DatasetChanges(Path(self.dataset.root))
        if self.dataset.num_episodes == 0:
            raise ValueError(f"dataset {self.dataset.root} has no episodes to replay")
        _warn_if_still_recorded(Path(self.dataset.root), self.dataset.num_episodes)
        # Read once: a request reads them per row, under the lock (a dataset's lists may be rebuilt on every read)
        self._episode_lengths = list(self.dataset.episode_lengths)
        self._dataset_episode_indices = list(self.dataset.episode_indices)  # each position's own episode_index field
        empty = [i for i, length in enumerate(self._episode_lengths) if length == 0]
        if len(empty) == self.dataset.num_episodes:
            raise ValueError(f"dataset {self.dataset.root} has no steps to replay: every episode has length 0")
        if empty:
            logger.warning("dataset %s: episodes %s have no steps (length 0); requests for them are refused",
                           self.dataset.root, empty[:20])
        # Every data file's footer now (no rows are read): a truncated or missing file fails the start, not the
        # first request for its episode in the middle of an evaluation.
        for position in range(self.dataset.num_episodes):
            self._changes.record_data_file(self.dataset.episode_data_path(position))
        self.dataset.check_data_files()
        configs = modality_configs or derive_from_dataset(self.dataset)
        if isinstance(configs, Mapping) and not all(isinstance(c, ModalityConfig) for c in configs.values()):
            try:  # the JSON form (json.load of a modality config file, or of get_modality_config's wire form)
                configs = modality_configs_from_json(configs)
            except ValueError as exc:
                raise ValueError(f"modality_configs: {exc}; expected ModalityConfig objects or their JSON form") from exc
        self.modality_configs: Dict[str, ModalityConfig] = copy_modality_configs(configs)
        action_config = self.modality_configs.get("action")
        if action_config is None:
            raise ValueError(f"modality configs need an 'action' modality to replay; got {sorted(self.modality_configs)}")
        missing = [k for k in action_config.modality_keys if k not in self.dataset.action_keys]
        if missing:
            raise ValueError(
                f"action keys {missing} are not in {self.dataset.root}/meta/modality.json; dataset action keys: {self.dataset.action_keys}"
            )
        from gr00t_eval.action_steps import check_consecutive_action_deltas  # with the dataset reader (replay extra)

        # Steps advance by chunk length: only 0..H-1 serves every recorded row once, in order ([0, 2, 4] served rows
        # 0, 2, 4, 3, 5, 7; [-1, 0, 1] each chunk a step late)
        check_consecutive_action_deltas(
            action_config.delta_indices,
            "the replay serves recorded rows out of order (modality_configs['action'])")
        self.delta_indices = np.asarray(action_config.delta_indices, dtype=np.int64)
        chunk = default_execution_horizon(action_config)
        if execution_horizon is None:
            execution_horizon = chunk
        if isinstance(execution_horizon, bool) or not isinstance(execution_horizon, int) or not 1 <= execution_horizon <= chunk:
            # Past the chunk, rows between two chunks were never served (delta [1, 2, 3, 4] advanced 5: row 5 skipped)
            raise ValueError(
                f"execution_horizon must be an int in [1, {chunk}] (each action chunk holds {chunk} actions, action "
                f"delta_indices {_shown(action_config.delta_indices)}), got {execution_horizon!r}"
            )
        self.execution_horizon = execution_horizon
        self._sessions: SegmentedLRU[str, _Cursor] = SegmentedLRU(max_sessions)
        # One line per forgotten session was 16 GB a day from one peer sending fresh session ids: 20 per 10 s, the
        # rest counted (as the server's refusals are)
        self._forgetting_log = RateLimitedLog(logger, level=logging.INFO)
        self._option_names = OptionNames(logger)  # unknown option names: refused when strict, else warned once
        self._state_dims = self.dataset.state_dims()
        self._seeds = recorded_seeds(self.dataset)  # by episode position; its unusable seeds warned of here, once
        self._warned_widths: set = set()  # (state key, width) pairs warned about (strict=False)
        # Sessions this replay forgot, for room or dropped (for a week, the last FORGOTTEN_MARKS_BYTES' worth or
        # 4 * max_sessions where more, as the server's table): their get_action is refused until a reset, not replayed
        # from episode 0, step 0 (behind a server that holds more sessions than this, or through a handler of the
        # server's that calls get_action itself, the robot was sent the start of episode 0 without an error).
        marks = min(MAX_DROPPED_MARKS, FORGOTTEN_MARKS_BYTES // (_FORGOTTEN_MARK_BYTES + 4 * self.max_rows))
        self._forgotten: DroppedMarks[_Forgotten] = DroppedMarks(max(marks, 4 * self.max_sessions),
                                                                  DROPPED_MARK_MIN_S)  # session -> why, its episodes
        self._actions: "OrderedDict[int, Dict[str, np.ndarray]]" = OrderedDict()  # most recently used last
        self._cached_bytes = 0
        self._lock = threading.Lock()
        renew_locks_after_fork(self)  # a forked child's calls wait on no lock a parent thread held at the fork
        self._identity: Optional[Dict[str, Any]] = None
        self.identity()  # now: get_server_info answers it on the socket thread, which must not read files

    # -- BasePolicy -------------------------------------------------------------------------------
    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        return copy_modality_configs(self.modality_configs)

    def identity(self) -> Dict[str, Any]:
        """What this server replays, the same wherever the dataset is copied: hashes of the dataset's meta/ files
        (its episode list, tasks and info) and of its data files (the recorded actions served), and the execution
        horizon; get_server_info reports it so that an evaluation can tell one policy's results from another's."""
        if self._identity is None:
            from gr00t_eval.dataset.identity import replay_hashes  # open-loop hashes its dataset with it too

            self._identity = {"kind": "replay", **replay_hashes(self.dataset),
                              "episodes": self.dataset.num_episodes, "execution_horizon": self.execution_horizon}
        return dict(self._identity)

    def dims(self) -> Dict[str, Dict[str, int]]:
        """Each configured state key's and action key's last-axis width D, from the dataset (the widths its observation
        checks expect and its actions have), as get_server_info reports them."""
        state_config = self.modality_configs.get("state")
        state_keys = state_config.modality_keys if state_config is not None else []
        action_dims = self.dataset.action_dims()
        return {"state": {key: self._state_dims[key] for key in state_keys if key in self._state_dims},
                "action": {key: action_dims[key] for key in self.modality_configs["action"].modality_keys}}

    @property
    def num_episodes(self) -> int:
        """How many episodes the dataset holds (episode indices 0 .. num_episodes - 1)."""
        return self.dataset.num_episodes

    def check_observation(self, observation: Any) -> None:
        """A missing or empty observation is allowed (replay ignores it); anything else must fit the configs."""
        if observation is None or (isinstance(observation, Mapping) and not observation):
            return
        validate_observation(observation, self.modality_configs)
        self._check_state_widths(observation, strict=True)
        _check_frame_sides(observation, self.modality_configs)

    def _check_state_widths(self, observation: Any, strict: bool) -> None:
        """Each state key's last dimension must be the dataset's: a replay that took any width told a user the
        observation plumbing was right, and the model served next refused the same states. ObservationError when
        `strict`, else a warning once per key and width."""
        state = observation.get("state") if isinstance(observation, Mapping) else None
        config = self.modality_configs.get("state")
        if not isinstance(state, Mapping) or config is None:
            return
        for key in config.modality_keys:
            value, expected = state.get(key), self._state_dims.get(key)
            if expected is None or not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[-1] == expected:
                continue
            message = (f"State key '{key}' has dimension {value.shape[-1]}; the dataset expects {expected} "
                       f"({self.dataset.root}/meta/modality.json)")
            if strict:
                raise ObservationError(message)
            if (key, value.shape[-1]) in self._warned_widths or len(self._warned_widths) >= MAX_WARNED_WIDTHS:
                continue
            self._warned_widths.add((key, value.shape[-1]))
            logger.warning("%s (ignored: strict=False; said once per key and dimension)", message)

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Move the session to options["episode_index"] (int or one per row; default: the session's episodes, a
        forgotten session's too, which a session lost with a restarted server must be given) and
        options["step_index"] (default 0)."""
        options = options or {}
        # reset takes no server option: the server refuses return_server_timing there (it answers no timing)
        self._option_names.check(options, _RESET_OPTIONS, self.strict, "reset options", "ReplayPolicy's reset",
                                 server_options=frozenset())
        session = _session_id(options)
        with self._lock:
            cursor = self._sessions.get(session)
            forgotten = self._forgotten.get(session)
            if cursor is None and forgotten is not None:  # the server's "call reset to start it again": its episodes
                cursor = _Cursor(forgotten.episodes.tolist(), [0] * len(forgotten.episodes))
            elif cursor is None and options.get(SESSION_LOST_OPTION) and options.get("episode_index") is None:
                # Its episodes went with the old server: a reset that keeps the episode moved every row to episode 0
                raise ValueError(f"{named_session(session)} was served before (the client's mark, or the server's "
                                 "record of dropping it) but is not known to this replay (the server restarted or took "
                                 "another's place, or the replay forgot the session longer ago than it remembers): the "
                                 "episodes it replayed, if any, are not known here; reset it with "
                                 "options['episode_index'] (one per row)")
            cursor = cursor or _Cursor([0], [0])
            episodes = cursor.episodes
            if options.get("episode_index") is not None:
                listed = _as_list(options["episode_index"], "episode_index", self.max_rows)
                if len(listed) > self.max_rows:
                    raise ValueError(f"episode_index lists {len(listed)} rows; this policy replays at most {self.max_rows} rows per session")
                episodes = [self._check_episode(e) for e in listed]
            steps_option = options.get("step_index")
            steps = [0] * len(episodes) if steps_option is None else _as_list(steps_option, "step_index", self.max_rows)
            if len(steps) == 1 and len(episodes) > 1:
                steps = steps * len(episodes)
            if len(steps) != len(episodes):
                if options.get("episode_index") is None:  # the session's rows, not a list the caller sent
                    raise ValueError(f"step_index has {len(steps)} entries but {named_session(session)} replays "
                                     f"{len(episodes)} rows (episodes {episodes}); expected one per row, or send "
                                     "episode_index with one episode per row")
                raise ValueError(f"step_index has {len(steps)} entries but episode_index has {len(episodes)}; expected one per row")
            checked = []  # Python ints: a numpy uint8 step wrapped on the cursor's advance (250 + 8 = 2)
            for episode, step in zip(episodes, steps):
                checked.append(self._check_step(episode, step))
                self._episode_actions(episode)  # a broken episode is refused at its reset, not at its first call
            self._forgotten.pop(session)
            cursor = _Cursor(list(episodes), checked)
            self._keep(session, cursor)
            info = self._info(cursor, done=None)
        logger.debug("session %r reset to episodes %s steps %s", str(session)[:40], episodes, checked)
        return info

    def _get_action(self, observation: Any, options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        options = options or {}
        self._option_names.check(options, _GET_ACTION_OPTIONS, self.strict, "get_action options", "ReplayPolicy's get_action")
        if not self.strict:  # a strict replay refused it in check_observation
            self._check_state_widths(observation, strict=False)
            _check_frame_sides(observation, self.modality_configs)
        session = _session_id(options)
        batch = _observation_rows(observation, self.modality_configs)
        if batch is not None:  # checked before the session is touched: a bad request never breaks it
            if not 1 <= batch <= self.max_rows:  # named as the observation's: batch_size is an option it never sent
                raise ObservationError(f"the observation has {batch} rows (its arrays' first axis); expected 1 to "
                                       f"{self.max_rows}")
        if options.get("batch_size") is not None:
            asked = self._check_batch_size(options["batch_size"])
            if batch is not None and batch != asked:
                raise ValueError(f"options['batch_size'] is {asked} but the observation has batch size {batch}; send "
                                 "one of them, or both the same")
            batch = asked
        with self._lock:
            cursor = self._sessions.get(session)
            forgotten = self._forgotten.get(session) if cursor is None else None
            if forgotten is not None:
                raise ValueError(f"{named_session(session)} was forgotten by this replay, "
                                 f"{forgotten.reason(self.max_sessions)}; call reset to start it again")
            cursor = cursor or _Cursor([0], [0])
            if batch is not None and batch != len(cursor.episodes):
                # Rows at one position (never reset row by row) take any batch size, as the reference's replay
                # does on every call; rows at different positions cannot be re-tiled without dropping one.
                if len(set(zip(cursor.episodes, cursor.steps))) != 1:
                    raise ValueError(
                        f"observation has batch size {batch} but {named_session(session)} replays "
                        f"{len(cursor.episodes)} rows at different positions (episodes {cursor.episodes}, steps "
                        f"{cursor.steps}); reset with one episode_index per row"
                    )
                cursor.episodes, cursor.steps = cursor.episodes[:1] * batch, cursor.steps[:1] * batch
            chunks = [self._chunk(e, s) for e, s in zip(cursor.episodes, cursor.steps)]
            lengths = [self._length(e) for e in cursor.episodes]
            done = [s + self.execution_horizon >= n for s, n in zip(cursor.steps, lengths)]
            info = self._info(cursor, done)
            cursor.steps = [s + self.execution_horizon for s in cursor.steps]
            # Kept (and another forgotten for room) only once the call succeeded: a refused first call of a new client
            # (a damaged episode 0) pushed a live robot's session out of the table.
            self._keep(session, cursor)
        action = {key: np.stack([chunk[key] for chunk in chunks]) for key in self.modality_configs["action"].modality_keys}
        return action, info

    # -- helpers ----------------------------------------------------------------------------------
    def _keep(self, session: str, cursor: _Cursor) -> None:
        """Store a session's cursor as used now; forget, over max_sessions, the least recently used (of the sessions
        used only once, first: SegmentedLRU)."""
        for forgotten, forgotten_cursor, uses in self._sessions.use(session, cursor):
            self._remember_forgotten(forgotten, uses, forgotten_cursor.episodes)
            self._forgetting_log.warning("replay session %r forgotten (more than %d sessions)", str(forgotten)[:40],
                                         self.max_sessions)

    def _check_batch_size(self, batch: Any) -> int:
        """Rows requested (options['batch_size'] or the observation's): an int in [1, max_rows]."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
            raise ValueError(f"batch_size must be an int in [1, {self.max_rows}], got {str(batch)[:40]!r} ({type(batch).__name__})")
        if not 1 <= batch <= self.max_rows:
            raise ValueError(f"batch_size must be an int in [1, {self.max_rows}], got {batch}")
        return int(batch)

    def _remember_forgotten(self, session: str, uses: int, episodes: Sequence[int]) -> None:
        """Remember `session` as forgotten (for room after `uses` uses, or dropped: 0), with the `episodes` its rows
        replayed, until its reset (DroppedMarks' bounds)."""
        self._forgotten.add(session, _Forgotten(uses, array("i", episodes)))

    def _renew_locks(self) -> None:
        """In a forked child (fork_locks): a fresh lock over the sessions and the cached episodes."""
        self._lock = threading.Lock()

    def drop_session(self, session_id: str) -> None:
        """Forget a session's cursor (its server dropped the session, or its client disconnected): its get_action is
        refused, whoever calls it, until it is reset."""
        with self._lock:
            cursor = self._sessions.pop(session_id)
            earlier = self._forgotten.get(session_id)  # not held: forgotten before (for room), or never reset
            episodes = cursor.episodes if cursor is not None else earlier.episodes if earlier is not None else [0]
            self._remember_forgotten(session_id, 0, episodes)

    def _episode_actions(self, position: int) -> Dict[str, np.ndarray]:
        """The episode's actions per key, read once and kept while they fit max_cached_bytes (least recently used
        dropped first; the newest is kept whatever its size). DatasetError for rows out of order or NaN/inf, and for
        any episode read once the dataset changed on disk since it was loaded (its lengths and seeds are the old ones:
        the new recording's rows were served cut to them, under the old seeds)."""
        actions = self._actions.get(position)
        if actions is not None:
            self._actions.move_to_end(position)
            return actions
        keys = self.modality_configs["action"].modality_keys
        self._changes.check(self.dataset.episode_data_path(position))
        episode = self.dataset.episode(position)
        episode.check_finite("action", keys, np.float32)  # as served: a float64 value past float32's range is inf
        actions = {k: episode.actions(k) for k in keys}
        self._actions[position] = actions
        self._cached_bytes += sum(values.nbytes for values in actions.values())
        while self._cached_bytes > self.max_cached_bytes and len(self._actions) > 1:
            _, dropped = self._actions.popitem(last=False)
            self._cached_bytes -= sum(values.nbytes for values in dropped.values())
        return actions

    def _length(self, position: int) -> int:
        return self._episode_lengths[position]

    def _empty_episode(self, position: int) -> ValueError:
        return ValueError(f"episode {position} (episode_index {self._dataset_episode_indices[position]}) of "
                          f"{self.dataset.root} has no steps to replay (length 0); reset to another episode")

    def _chunk(self, position: int, step: int) -> Dict[str, np.ndarray]:
        length = self._length(position)
        if length == 0:
            raise self._empty_episode(position)
        actions = self._episode_actions(position)
        rows = np.clip(step + self.delta_indices, 0, length - 1)
        return {key: values[rows] for key, values in actions.items()}

    def _check_episode(self, episode: Any) -> int:
        if isinstance(episode, bool) or not isinstance(episode, (int, np.integer)):
            raise ValueError(f"episode_index must be an int, got {episode!r}")
        if not 0 <= episode < self.num_episodes:
            raise IndexError(f"episode_index {episode} out of range: it is a position in the dataset's episode list "
                             f"(meta/episodes order), and the dataset has {self.num_episodes} episodes "
                             f"(0..{self.num_episodes - 1}){self._own_indices_note()}")
        return int(episode)

    def _own_indices_note(self) -> str:
        """For a dataset whose own episode_index values are not 0..N-1, a few of them: a reset by such a value (7 of
        0, 3, 7, 8, 11) is not the position the replay takes."""
        own = self._dataset_episode_indices
        if own == list(range(len(own))):
            return ""
        shown = ", ".join(str(i) for i in own[:6]) + (", ..." if len(own) > 6 else "")
        return f"; their own episode_index values are {shown} (reported in info as dataset_episode_index)"

    def _check_step(self, episode: int, step: Any) -> int:
        """The step as a Python int, once it is an int in the episode's range."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step_index must be an int, got {step!r}")
        length = self._length(episode)
        if length == 0:
            raise self._empty_episode(episode)
        if not 0 <= step < length:
            raise IndexError(f"step_index {step} out of range for episode {episode} of length {length} (0..{length - 1})")
        return int(step)

    def _info(self, cursor: _Cursor, done: Optional[List[bool]]) -> Dict[str, Any]:
        lengths = [self._length(e) for e in cursor.episodes]
        if done is None:
            done = [s >= n for s, n in zip(cursor.steps, lengths)]
        single = len(cursor.episodes) == 1

        def pack(values: Sequence[Any]) -> Any:
            return values[0] if single else list(values)

        info: Dict[str, Any] = {
            "current_step": pack([int(s) for s in cursor.steps]),
            "episode_length": pack([int(n) for n in lengths]),
            "episode_index": pack([int(e) for e in cursor.episodes]),
            "dataset_episode_index": pack([int(self._dataset_episode_indices[e]) for e in cursor.episodes]),
            "episode_done": pack([bool(d) for d in done]),
            "num_episodes": int(self.num_episodes),
            "execution_horizon": int(self.execution_horizon),
        }
        # The env seed each episode was recorded with (`gr00t-eval record` stores it), so a rollout replays the
        # recorded scene without --seed; only for datasets that store seeds.
        seeds = [self._seeds[e] for e in cursor.episodes]
        if any(seed is not None for seed in seeds):
            info["seed"] = pack(seeds)
        # And the env each episode was recorded in (`record` stores it too), so a rollout of another task is refused
        # instead of scoring this task's actions in that one (a plausible 0%); only for datasets that store it.
        env_names = [self._recorded_env_name(e) for e in cursor.episodes]
        if any(name is not None for name in env_names):
            info["env_name"] = pack(env_names)
        return info

    def _recorded_env_name(self, position: int) -> Optional[str]:
        env_name = self.dataset.episode_extras(position).get("env_name")
        return env_name if isinstance(env_name, str) and env_name else None


def default_execution_horizon(action_config: ModalityConfig) -> int:
    """Steps a replay advances per call unless told: the actions one chunk holds (len(delta_indices)), so that every
    recorded row is served once (ReplayPolicy takes only delta indices 0..H-1)."""
    return len(action_config.delta_indices)


def _shown(values: Sequence[Any]) -> str:
    """A list as an error names it: its first 8 values."""
    return f"[{', '.join(str(v) for v in values[:8])}{', ...' if len(values) > 8 else ''}]"


def _session_id(options: Mapping[str, Any]) -> str:
    session = options.get(SESSION_OPTION, DEFAULT_SESSION)
    if not isinstance(session, str):
        raise ValueError(f"options['{SESSION_OPTION}'] must be a str, got {session!r}")
    return session


def _as_list(value: Any, name: str, max_rows: int) -> List[Any]:
    if isinstance(value, np.ndarray):
        if value.size > max_rows:  # before tolist(): a 256 MiB array made 32 million Python ints to be refused
            raise ValueError(f"{name} lists {value.size} rows; this policy replays at most {max_rows} rows per session")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must not be an empty list")
        return list(value)
    return [value]


def _shape(value: Any) -> Tuple[int, ...]:
    """The shape of an array or of nested lists (a lenient call's); () for a ragged list or anything else."""
    try:
        return np.shape(value)
    except ValueError:  # a ragged list
        return ()


def _entries(observation: Any, configs: Mapping[str, ModalityConfig],
             modalities: Tuple[str, ...] = ("video", "state")) -> List[Tuple[str, Any, str]]:
    """(key, value, name) of each entry of `modalities` the modality `configs` name (others the model never reads, as
    the model server ignores them), nested ('image' of observation['video'], named "video['image']" as the model
    server names it, and the sim wrapper renames) or flat ('video.image', named "'video.image'")."""
    if not isinstance(observation, Mapping):
        return []
    entries = []
    for modality in modalities:
        config = configs.get(modality)
        keys = list(config.modality_keys) if config is not None else []
        group = observation.get(modality)
        if isinstance(group, Mapping):
            entries += [(key, group[key], f"{modality}['{key}']") for key in keys if key in group]
        entries += [(f"{modality}.{key}", observation[f"{modality}.{key}"], f"'{modality}.{key}'") for key in keys
                    if f"{modality}.{key}" in observation]
    return entries


def _language_rows(observation: Any, configs: Mapping[str, ModalityConfig]) -> List[Tuple[str, int]]:
    """(key, rows) of each configured language entry sent as rows (a list or an array; one bare str has none), nested
    or flat (the bare key, as the sim wrapper sends it)."""
    config = configs.get("language")
    if config is None or not isinstance(observation, Mapping):
        return []
    group = observation.get("language")
    found = []
    for key in config.modality_keys:
        value = group.get(key) if isinstance(group, Mapping) and key in group else observation.get(key)
        if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim >= 1):
            found.append((key, len(value)))
    return found


def _observation_rows(observation: Any, configs: Mapping[str, ModalityConfig]) -> Optional[int]:
    """The rows of a nested or flat observation, from its configured video and state entries with an axis (arrays
    or, from a lenient call, nested lists) and its language rows (ObservationError when they disagree, as the model
    server refuses them), else from its language lists; None when it has none (an empty observation)."""
    shapes = ((name, _shape(value)) for _, value, name in _entries(observation, configs))
    rows = [(name, int(shape[0])) for name, shape in shapes if shape]
    if not rows:  # language alone: its rows, as an array too (nested_batch_size counts lists only)
        language = _language_rows(observation, configs)
        return language[0][1] if language else nested_batch_size(observation)
    first_name, first = rows[0]
    for name, count in rows[1:]:  # as the model server refuses: entries of another batch are no observation of one
        if count != first:
            raise ObservationError(f"{name} has {count} rows; the observation's batch size is {first} (the rows of "
                                   f"{first_name}): every video and state entry needs the same rows on its first axis")
    for key, count in _language_rows(observation, configs):
        if count != first:
            raise ObservationError(f"Language key '{key}' has batch size {count}; expected {first} (the rows of "
                                   f"{first_name}): one instruction per row")
    return first


def _check_frame_sides(observation: Any, configs: Mapping[str, ModalityConfig]) -> None:
    """ObservationError naming the camera whose (B, T, H, W, 3) frames (an array or nested lists, nested or flat) have
    an empty side, as the model server says: a replay that took them told a user the camera plumbing was right."""
    for key, frames, _ in _entries(observation, configs, ("video",)):
        shape = _shape(frames)
        if len(shape) == 5 and min(shape[2:4]) < 1:
            raise ObservationError(f"Video key '{key}' has {shape[2]}x{shape[3]} images; an image needs at least one "
                                   "pixel on each side")
        if not isinstance(frames, np.ndarray) and len(shape) in (3, 4) and shape[-1] == 0:  # lists end at an empty side
            raise ObservationError(f"Video key '{key}' has images of {'height' if len(shape) == 3 else 'width'} 0 "
                                   f"(nested lists of shape {shape}); an image needs at least one pixel on each side")
