"""What crosses between envs and the policy: horizons from the modality config, env observation keys to the
policy's, policy action chunks to env actions, and each row's position in the policy's replay (for resets, and
to notice a policy that lost it)."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")  # one line naming the extra, not a deep ImportError

import gymnasium as gym  # noqa: E402
import numpy as np

from gr00t_client import ActionChunker, ModalityConfig, PolicyServerError
from gr00t_client.flat import language_batch, language_source, language_text
from gr00t_client.policy import (ActionError, NonFiniteActionError, ObservationError, PolicyValidationError,
                                 non_finite_rows, unreal_dtype)
from gr00t_client.wire_errors import lone_surrogate_at, lone_surrogate_text

from ..action_steps import check_consecutive_action_deltas
from ..key_matching import match_keys
from ..reported_position import is_flag, is_position
from .replay_plan import ASYNC_REPLAY_ERROR, replay_drift_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HorizonSpec:
    """What the policy reads and writes, from its modality config: history deltas, keys and the action horizon."""

    video_delta_indices: Sequence[int]
    state_delta_indices: Sequence[int]
    action_horizon: int
    video_keys: Sequence[str]
    state_keys: Sequence[str]
    action_keys: Sequence[str]
    language_keys: Sequence[str]
    action_delta_indices: Sequence[int] = ()  # () when built by hand: the rows are taken as consecutive steps

    @classmethod
    def from_modality_config(cls, configs: Mapping[str, ModalityConfig]) -> "HorizonSpec":
        """Read a policy's {modality: ModalityConfig}; video/state default to the current step only."""
        if "action" not in configs:
            raise ValueError(f"the policy's modality config has no 'action' modality; got {sorted(configs)}")
        video, state, action, language = (configs.get(m) for m in ("video", "state", "action", "language"))
        return cls(
            video_delta_indices=list(video.delta_indices) if video else [0],
            state_delta_indices=list(state.delta_indices) if state else [0],
            action_horizon=len(action.delta_indices),
            video_keys=list(video.modality_keys) if video else [],
            state_keys=list(state.modality_keys) if state else [],
            action_keys=list(action.modality_keys),
            language_keys=list(language.modality_keys) if language else [],
            action_delta_indices=list(action.delta_indices),
        )

    def check_n_action_steps(self, n_action_steps: int) -> None:
        """Refuse executing more steps of a chunk than the policy predicts, or a chunk whose rows are not
        consecutive steps from the query on (a rollout runs row j as the j-th step after it)."""
        if not 1 <= n_action_steps <= self.action_horizon:
            raise ValueError(
                f"n_action_steps must be in [1, {self.action_horizon}] (the policy's action horizon), got {n_action_steps}"
            )
        check_consecutive_action_deltas(
            self.action_delta_indices or range(self.action_horizon), "the rollout would execute each action at another step than it was predicted for")

    def check_rtc_frozen_steps(self, rtc_frozen_steps: Optional[int], n_action_steps: int) -> None:
        """Refuse pinning more steps of a new chunk than the policy predicts, or than a prefetch of the rollout's
        ActionChunker can overlap (n_action_steps // 2 + 1): a prefetch pins at most its overlap, so a larger K
        silently froze the whole overlap (no ramped rows) and was recorded as asked."""
        if rtc_frozen_steps is None:
            return
        if not 1 <= rtc_frozen_steps <= self.action_horizon:
            raise ValueError(f"rtc_frozen_steps must be in [1, {self.action_horizon}] (the policy's action horizon), "
                             f"got {rtc_frozen_steps}")
        problem = ActionChunker.rtc_frozen_steps_problem(rtc_frozen_steps, min(n_action_steps, self.action_horizon))
        if problem is not None:  # the chunker's own refusal, in its words
            raise ValueError(problem)


class ObservationMapper:
    """Batched env observations -> the flat observation the policy's modality config asks for.

    Keys are matched by name (`video.<k>`, `state.<k>`, the language key; "task" is read from the legacy language key
    when the env sends it, as Gr00tSimPolicyWrapper reads it); those left over are matched by position when the env
    has as many left over (cameras, state groups, `annotation.*` keys) as the config. `undeclared` are keys the env
    returns that its observation_space does not declare, which the vector env drops.
    """

    def __init__(self, spec: HorizonSpec, env_keys: Sequence[str], undeclared: Sequence[str] = ()) -> None:
        self.sources: Dict[str, str] = {}
        wanted_keys = [f"{prefix}.{k}" for prefix, keys in (("video", spec.video_keys), ("state", spec.state_keys))
                       for k in keys] + list(spec.language_keys)
        _refuse_undeclared([key for key in wanted_keys if key in undeclared])
        for prefix, keys in (("video", spec.video_keys), ("state", spec.state_keys)):
            available = [k for k in env_keys if k.startswith(prefix + ".")]
            wanted = [f"{prefix}.{k}" for k in keys]
            self._match(prefix, wanted, available)
        legacy = {key: language_source(key, env_keys) for key in spec.language_keys}
        legacy = {key: source for key, source in legacy.items() if source != key}
        self.sources.update(legacy)
        available = [k for k in env_keys if (k.startswith("annotation.") or k in spec.language_keys)
                     and k not in legacy.values()]
        self._match("language", [key for key in spec.language_keys if key not in legacy], available)

    def _match(self, kind: str, wanted: List[str], available: List[str]) -> None:
        matched = match_keys(wanted, available)
        if matched is None:
            missing = [w for w in wanted if w not in available]
            raise ValueError(f"the env has no {kind} keys {missing} that the policy needs; the env provides {available}")
        sources, by_position = matched
        if by_position:
            logger.warning("env %s keys differ from the policy's; matching them by position: %s", kind,
                           ", ".join(f"{w} <- {a}" for w, a in by_position))
        self.sources.update(sources)

    def language_errors(self, obs: Mapping[str, Any], rows: Sequence[int]) -> Dict[int, str]:
        """{row: why} for each of `rows` whose language is not one text (ObservationError's message, naming the key),
        or holds a lone surrogate, which no wire carries (naming the key, row and position): only those rows' episodes
        are errored, not the ones running beside them."""
        errors: Dict[int, str] = {}
        for target, source in self.sources.items():
            if target.startswith(("video.", "state.")):
                continue
            for row in rows:
                try:
                    text = language_row(obs[source][row], source)
                except ObservationError as exc:
                    errors.setdefault(row, str(exc))
                    continue
                surrogate = lone_surrogate_at(text)
                if surrogate is not None:  # the client's encoder would refuse the whole batch
                    errors.setdefault(row, f"the env's language key {source!r} row {row}: "
                                           + lone_surrogate_text(text, surrogate))
        return errors

    def state_errors(self, obs: Mapping[str, Any], rows: Sequence[int]) -> Dict[int, str]:
        """{row: why} for each of `rows` whose state holds NaN or inf (a simulator that blew up): the server refuses the
        whole request for one such row, so only that row's episode is errored, not the ones running beside it."""
        errors: Dict[int, str] = {}
        for target, source in self.sources.items():
            value = obs[source]
            if not target.startswith("state.") or not isinstance(value, np.ndarray) or value.dtype.kind not in "fc":
                continue
            finite = np.isfinite(value.reshape(len(value), -1))
            for row in rows:
                if not finite[row].all():
                    bad = value[row].reshape(-1)[~finite[row]][0]
                    errors.setdefault(row, f"the env's {source!r} holds {bad} in row {row}; the policy takes finite "
                                           "states (not NaN or inf): the env's simulation may have blown up")
        return errors

    def __call__(self, obs: Mapping[str, Any], rows: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """The policy's observation of `obs`; the language of rows outside `rows` (default: all rows) is not read,
        they get the first of `rows`'s (an idle row may hold a finished episode's bad language)."""
        out: Dict[str, Any] = {}
        for target, source in self.sources.items():
            value = obs[source]
            if target.startswith("video."):
                if np.asarray(value).dtype != np.uint8:  # a cast would turn [0, 1] float images black, without a word
                    raise ValueError(f"the env's {source!r} images are {np.asarray(value).dtype}; the policy takes uint8 "
                                     "images (0..255): convert them in the env")
                out[target] = np.ascontiguousarray(value)
            elif target.startswith("state."):
                out[target] = state_in_float32(source, value)
            else:
                read = range(len(value)) if rows is None else rows
                texts = [value[row] if row in read else value[read[0]] for row in range(len(value))]
                out[target] = [language_row(text, source) for text in texts]
        return out


def state_in_float32(key: str, value: Any) -> np.ndarray:
    """The env's state `value` as the float32 array the policy takes, or ValueError naming `key`, the row and the value
    when a finite value is beyond float32's range (the cast made it inf, which the server refused as a NaN/inf state),
    and naming `key` and the dtype when the state is not real numbers (the cast dropped a complex part, read NaT as
    -9.2e18 and text as the number it spells). An object array of Python or numpy real numbers is cast as before."""
    unreal = unreal_dtype(value)
    if unreal is not None:
        raise ValueError(f"the env's {key!r} state has dtype {unreal}; the policy takes states of real numbers (a "
                         "bool, int or float dtype): return them as such from the env")
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(value, dtype=np.float32)
    beyond = np.isinf(cast) & np.isfinite(np.asarray(value, dtype=np.float64))
    if beyond.any():
        index = tuple(int(i) for i in np.argwhere(beyond)[0])
        number = float(np.asarray(value, dtype=np.float64)[index])
        raise ValueError(f"the env's {key!r} holds {number:g} in row {index[0] if index else 0}, beyond float32's range "
                         f"(+-{np.finfo(np.float32).max:.4g}), the dtype the policy takes states in: return states "
                         "within it (in the units the policy was trained on)")
    return cast


def _refuse_undeclared(keys: Sequence[str]) -> None:
    if keys:
        raise ValueError(f"the env returns {list(keys)}, which the policy needs, but its observation_space does not "
                         "declare them, so the vector env drops them: declare them in the env's observation_space")


def language_row(value: Any, key: str) -> str:
    """One env row's language as text: a str, UTF-8 bytes or a one-string numpy array; ObservationError naming `key`
    for anything else (str() of bytes or of an array gave the policy "b'pick ...'" or "['pick ...']")."""
    if isinstance(value, np.ndarray):
        texts = language_batch(value, key)
        if len(texts) != 1:
            raise ObservationError(f"the env's language key {key!r} holds {len(texts)} strings in one env row; "
                                   "expected one")
        return texts[0]
    return language_text(value, f"the env's language key {key!r}", "must be a str or UTF-8 bytes in each env row")


# As the server renumbers a merged call's rows for each request: "rows [1]", and its request limits' "in row 1"
_NAMED_ROWS = re.compile(r"\brows \[([\d, ]*)\]|\bin row (\d+)\b")


def refused_rows(exc: BaseException, rows: Sequence[int]) -> List[int]:
    """The rows of `rows` a get_action refusal names (a NaN action in one row: the server's "... in rows [1]", an
    instruction over its request limits "... in row 1", a NonFiniteActionError's rows), so only their episodes error
    and the others are asked again, as for a NaN state (ObservationMapper.state_errors); all of `rows` when it names
    none of them, or every one. A row outside `rows` (no episode running) holds a copy of the first of them
    (with_idle_rows_mirrored): its refusal is that row's."""
    named = list(getattr(exc, "rows", None) or []) if isinstance(exc, NonFiniteActionError) else []
    if not named and isinstance(exc, (PolicyServerError, PolicyValidationError)):
        found = _NAMED_ROWS.search(str(exc))
        listed = (found.group(1) if found.group(1) is not None else found.group(2)) if found else ""
        named = [int(row) for row in listed.replace(",", " ").split()]
    named = [row if row in rows or not rows else rows[0] for row in named]
    picked = [row for row in rows if row in named]
    return picked or list(rows)


def with_idle_rows_mirrored(observation: Mapping[str, Any], active_rows: Sequence[int]) -> Dict[str, Any]:
    """The batched `observation` with each row outside `active_rows` (no episode running) holding a copy of the first
    active row's: an idle row still holds its finished episode's last observation, and a NaN that ended that episode
    made the server refuse every later request, erroring the episodes still running."""
    n_rows = len(next(iter(observation.values())))
    idle = [row for row in range(n_rows) if row not in active_rows]
    if not idle:
        return dict(observation)
    donor = active_rows[0]
    out: Dict[str, Any] = {}
    for key, value in observation.items():
        if isinstance(value, list):
            out[key] = [value[donor] if row in idle else item for row, item in enumerate(value)]
        else:
            out[key] = np.array(value)
            out[key][idle] = out[key][donor]
    return out


class PolicyRowCursor:
    """Where a policy serving a batch of env rows holds each row: per-row reset options, and a check of its replies.

    A stateful policy (ReplayPolicy) takes one `episode_index` and `step_index` per row, so restarting one row
    must repeat the other rows' current positions: they are read from the last get_action info
    (`current_step` + `execution_horizon`, clamped to `episode_length` - 1) or counted in n_action_steps.

    A policy that reports its position in each get_action info (`episode_index`, and `current_step` before the
    call with the `execution_horizon` it then advances) must report, per row, the episode it was last reset to
    and the step it was reset to plus one execution horizon per request since. Anything else means it lost this
    client's session (a restarted server, an evicted session) and replays another episode: `check_reply` notes
    such rows and `take_position_errors` hands them to the runner. Policies that report no position pass.
    """

    def __init__(self, n_rows: int, n_action_steps: int) -> None:
        self.episodes = [0] * n_rows
        self.next_steps = [0] * n_rows
        self.lengths: List[Optional[int]] = [None] * n_rows
        self.n_action_steps = n_action_steps
        # The step the policy must report at its next request, per row (None: unknown); set by each reset.
        self._expected_steps: List[Optional[int]] = [None] * n_rows
        self._position_errors: Dict[int, str] = {}
        self._lock = threading.Lock()  # replies may come from an ActionChunker's prefetch thread

    def after_get_action(self, info: Mapping[str, Any]) -> None:
        """Advance every row's expected next step from a get_action info."""
        n = len(self.episodes)
        current = _per_row(info.get("current_step"), n)
        horizon = info.get("execution_horizon")
        lengths = _per_row(info.get("episode_length"), n)
        for row in range(n):
            if current is not None and is_position(horizon):
                self.next_steps[row] = int(current[row]) + int(horizon)
            else:
                self.next_steps[row] += self.n_action_steps
            if lengths is not None:
                self.lengths[row] = int(lengths[row])

    def reset_options(self, started: Mapping[int, int]) -> Dict[str, Any]:
        """Options restarting rows `started` ({row: episode_index}) at step 0, the others where they are."""
        episodes = [started.get(row, episode) for row, episode in enumerate(self.episodes)]
        steps = [0 if row in started else self._held_step(row) for row in range(len(self.episodes))]
        return {"episode_index": episodes, "step_index": steps}

    def commit(self, started: Mapping[int, int]) -> None:
        """Record that the policy accepted the reset of rows `started` (and so holds every row where it was told)."""
        with self._lock:
            self._expected_steps = [0 if row in started else self._held_step(row) for row in range(len(self.episodes))]
            for row, episode in started.items():
                self.episodes[row], self.next_steps[row], self.lengths[row] = episode, 0, None
                self._position_errors.pop(row, None)  # about the episode the row has just left

    def _held_step(self, row: int) -> int:
        """The step_index a reset repeats for a row it does not restart: where it is, clamped to its episode."""
        length = self.lengths[row]
        return min(self.next_steps[row], length - 1) if length else self.next_steps[row]

    def check_reply(self, info: Any) -> None:
        """Compare the position a get_action reply reports with the expected one, per row, then advance it."""
        if not isinstance(info, Mapping):
            return
        n = len(self.episodes)
        reported_episodes = _per_row(info.get("episode_index"), n)
        reported_steps = _per_row(info.get("current_step"), n)
        horizon = info.get("execution_horizon")
        advance = int(horizon) if is_position(horizon) else None
        with self._lock:
            for row in range(n):
                episode = reported_episodes[row] if reported_episodes is not None else None
                step = reported_steps[row] if reported_steps is not None else None
                expected_step = self._expected_steps[row]
                episode_differs = is_position(episode) and episode != self.episodes[row]
                step_differs = is_position(step) and expected_step is not None and step != expected_step
                if (episode_differs or step_differs) and row not in self._position_errors:
                    self._position_errors[row] = _position_error(row, episode, step, self.episodes[row], expected_step)
                # Without its execution horizon the policy's next position is unknown: no step check until a reset.
                self._expected_steps[row] = int(step) + advance if is_position(step) and advance is not None else None

    def take_position_errors(self, rows: Sequence[int]) -> Dict[int, str]:
        """{row: reason} for `rows` whose policy position was lost since the last call; forgets every noted row."""
        with self._lock:
            errors = {row: reason for row, reason in self._position_errors.items() if row in rows}
            self._position_errors.clear()
        return errors


class PositionCheckedPolicy:
    """The policy as the rollout asks it for actions: each get_action reply's info goes to `cursor.check_reply`.

    It also wraps what an ActionChunker calls, so prefetched replies are checked in the order they arrive.
    """

    def __init__(self, policy: Any, cursor: PolicyRowCursor, asynchronous: bool = False,
                 n_action_steps: Optional[int] = None) -> None:
        self.policy = policy
        self.cursor = cursor
        self.asynchronous = asynchronous  # requests made mid-chunk (client_chunking "async")
        self.n_action_steps = n_action_steps  # env steps the rollout executes of each chunk

    def get_action(self, observation: Any, options: Optional[Dict[str, Any]] = None) -> Tuple[Any, Any]:
        """The policy's (action, info), after the info's positions were checked."""
        # Options only when there are some: the rollout has always called get_action(observation) alone.
        action, info = self.policy.get_action(observation) if options is None else self.policy.get_action(observation, options)
        if isinstance(info, Mapping) and _reports_steps(info):
            if self.asynchronous:
                raise ValueError(ASYNC_REPLAY_ERROR)
            horizon = info.get("execution_horizon")
            if self.n_action_steps is not None and is_position(horizon) and horizon != self.n_action_steps:
                raise ValueError(replay_drift_error(horizon, self.n_action_steps, _chunk_length(action)))
        self.cursor.check_reply(info)
        return action, info

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Any:
        """The policy's reset, unchanged."""
        return self.policy.reset(options)

    def get_modality_config(self) -> Any:
        """The policy's modality configs, unchanged (an ActionChunker cuts an RTC previous_action to their horizon)."""
        return self.policy.get_modality_config()


# A policy that reports its step (a replay server) serves the recorded steps by its own count, whatever the observation:
# asynchronous chunking asks for the next chunk mid-chunk and lines the reply up with that env step, so the envs
# would run recorded steps out of order (measured: Meta-World expert replays at 75 % instead of 100 %, exit 0).


def recording_ends(info: Any, n_rows: int) -> Dict[int, int]:
    """{row: the recording's length} for the rows whose replay reply says their recording ends within this chunk
    (`episode_done`, or a `current_step` at or past `episode_length`); {} for a policy that reports neither (a model)."""
    if not isinstance(info, Mapping):
        return {}
    lengths = _per_row(info.get("episode_length"), n_rows)
    if lengths is None:
        return {}
    done = _per_row(info.get("episode_done"), n_rows) or [None] * n_rows
    steps = _per_row(info.get("current_step"), n_rows) or [None] * n_rows
    ends = {}
    for row, (length, row_done, step) in enumerate(zip(lengths, done, steps)):
        past_end = is_position(step) and is_position(length) and step >= length
        if is_position(length) and ((is_flag(row_done) and bool(row_done)) or past_end):
            ends[row] = int(length)
    return ends


def _reports_steps(info: Mapping[str, Any]) -> bool:
    steps = info.get("current_step")
    return is_position(steps) or (isinstance(steps, (list, tuple, np.ndarray)) and any(is_position(s) for s in steps))


def _position_error(row: int, episode: Any, step: Any, expected_episode: int, expected_step: Optional[int]) -> str:
    reported = " ".join(part for part in (
        f"episode {episode}" if is_position(episode) else "", f"step {step}" if is_position(step) else "") if part)
    expected = f"episode {expected_episode}" + ("" if expected_step is None else f" step {expected_step}")
    return (f"policy position lost: the policy reports {reported} for env row {row}, expected {expected} "
            f"(the policy server was probably restarted or dropped this client's session, so it no longer replays "
            f"this episode)")


def _per_row(value: Any, n: int) -> Optional[List[Any]]:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if len(values) == 1 and n > 1:
        values = values * n
    return values if len(values) == n else None


def policy_actions(action: Mapping[str, Any], action_space: gym.spaces.Dict, n_action_steps: int,
                   n_rows: int) -> Dict[str, np.ndarray]:
    """The policy's (B, H, D) `action.*` arrays, one row per env (B = n_rows), cut to the first n_action_steps
    steps, in the env's dtypes; for a scalar (shape ()) action space, D = 1 and each step is that one value."""
    out = {}
    for key, space in action_space.spaces.items():
        if key not in action:
            raise KeyError(f"the policy's action has no {key!r} that the env needs; got keys {sorted(action)}")
        value = np.asarray(action[key])
        if value.ndim != 3 or value.shape[1] < n_action_steps:
            raise ValueError(f"{key} must be (B, H, D) with H >= n_action_steps={n_action_steps}; got shape {value.shape}")
        if value.shape[0] != n_rows:  # else the vector env fails deep inside gymnasium (a zip() of unequal lengths)
            raise ValueError(f"{key} has shape {value.shape}; expected {(n_rows, *value.shape[1:])}, one row per env")
        step_shape = tuple(space.shape[1:]) if space.shape is not None and len(space.shape) >= 1 else None
        if step_shape == () and value.shape[2:] == (1,):  # a scalar action space: each D=1 step is its value
            value = value[:, :, 0]
        if step_shape is not None and tuple(value.shape[2:]) != step_shape:  # numpy would broadcast or slice it
            raise ValueError(f"{key} has steps of shape {tuple(value.shape[2:])} (chunk {value.shape}); the env's action "
                             f"space takes steps of shape {step_shape}")
        rows = non_finite_rows(value[:, :n_action_steps]) if value.dtype.kind in "fc" else []
        if rows:  # executed, a NaN step was scored as a plain success or failure
            raise ActionError(f"action key '{key}' has non-finite values (NaN or inf) in rows {rows}; it was not "
                              "executed")
        out[key] = _in_env_dtype(key, value[:, :n_action_steps], np.dtype(space.dtype))
    return out


def _in_env_dtype(key: str, steps: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`steps` in the env's action dtype (rounded to the nearest integer for an integer dtype, to the nearer of
    False and True for a bool one: 0.2 was cast to True), or ActionError naming the key when the cast would change
    what is executed otherwise: a finite value past a float dtype's range (1e39 into float32 became inf, executed,
    with only numpy's warning), a value past an integer dtype's range (70000.0 wrapped to 112 in int8; 0.9 was
    truncated to 0, now rounded to 1)."""
    if steps.dtype == dtype:
        return steps
    if dtype.kind == "b" and steps.dtype.kind in "fiu":
        return steps >= 0.5
    if dtype.kind in "iu" and steps.dtype.kind == "f":
        steps = np.rint(steps)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = steps.astype(dtype)
    if dtype.kind == "f":
        bad = ~np.isfinite(cast) & np.isfinite(steps) if steps.dtype.kind in "fc" else ~np.isfinite(cast)
    elif dtype.kind in "iu":
        bad = cast.astype(np.float64) != steps.astype(np.float64)
    else:
        return cast
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise ActionError(f"action key '{key}' has values beyond {dtype.name}'s range, the env's action dtype (row {row}: "
                          f"{steps[row].ravel()[:4].tolist()}); it was not executed")
    return cast


def _chunk_length(action: Any) -> Optional[int]:
    """The steps of a reply's action chunk ((B, T, D) arrays); None where the reply shows none."""
    for value in action.values() if isinstance(action, Mapping) else ():
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) >= 2:
            return int(shape[1])
    return None
