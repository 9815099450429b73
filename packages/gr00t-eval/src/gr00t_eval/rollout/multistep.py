"""MultiStepWrapper: run n_action_steps of each action chunk, stack observation history, own the episode's end."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any, Deque, Dict, Mapping, Optional, Sequence, Tuple

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")  # one line naming the extra, not a deep ImportError

import gymnasium as gym  # noqa: E402
import numpy as np

from gr00t_client.peer_text import shown_text
from gr00t_client.policy import ObservationError

from ..metrics import ERROR_REASON_CHARS
from ..run_stop import is_storage_error
from ..video import EpisodeVideoRecorder, episode_video_name, frame_from_observation
from .config import RESET_FAILED, check_whole_number, env_error_text
from .policy_io import language_row, state_in_float32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSummary:
    """What the wrapper reports in info["episode"] when an episode ends (one object, so vector infos stay simple)."""

    episode_index: int
    seed: Optional[int]
    success: bool
    sum_reward: float
    max_reward: float
    length: int
    video_path: Optional[str] = None
    failure_reason: Optional[str] = None
    success_reported: bool = True  # False: no step info of the episode had 'success'/'is_success' (scored a failure)
    truncated_by_env: bool = False  # the inner env truncated it before max_episode_steps (its own time limit)


def _caption(raw: Mapping[str, Any]) -> str:
    """The episode video's caption: the first `annotation.*` text of the env's observation ("" when it holds no text,
    which the rollout refuses as the policy's language)."""
    key = next((key for key in raw if key.startswith("annotation.")), None)
    try:
        return language_row(raw[key], key) if key is not None else ""
    except ObservationError:
        return ""


def success_from_info(info: Mapping[str, Any]) -> bool:
    """An inner step's success flag: info["success"], else info["is_success"] (gym-pusht, robomimic style).

    Raises ValueError for a flag that is not one boolean, integer or finite float: bool() read NaN and "False" as a
    success, and np.any a [True, False] of several values. A flag of None is no report (that step says nothing).
    Raises ValueError for an info that is not a dict (None)."""
    if not isinstance(info, Mapping):
        raise ValueError(f"the env returned the step info {_describe(info)}, not a dict; the episode cannot be scored")
    for key in ("success", "is_success"):
        if info.get(key) is not None:  # None: not reported at this step
            return _success_flag(key, info[key])
    return False


def _success_flag(key: str, value: Any) -> bool:
    flag = _one_value(value)
    if isinstance(flag, (bool, np.bool_, int, np.integer)):
        return bool(flag)
    if isinstance(flag, (float, np.floating)) and np.isfinite(flag):
        return bool(flag)
    raise ValueError(f"the env reported {key}={_describe(value)}, which is not a boolean (expected a bool, an integer "
                     "or a finite float); the episode cannot be scored")


def _one_value(value: Any) -> Any:
    """The one value a list, tuple or array-like holds (a numpy array or scalar, a torch tensor, a jax array: anything
    with `.item()` or `__array__`), `value` itself when it is none of those, None when it holds several or none."""
    if callable(getattr(value, "item", None)):
        try:  # .item() first: it also reads a torch tensor that np.asarray refuses (on a GPU, or tracking gradients)
            return value.item()
        except (ValueError, RuntimeError):  # several values (numpy says ValueError, torch RuntimeError)
            return None
    if isinstance(value, (list, tuple)) or hasattr(value, "__array__"):
        array = np.asarray(value, dtype=object)
        return array.item() if array.size == 1 else None
    return value


# The steps of history a modality config may ask for: far beyond any policy's (GR00T's reach a few steps back), and
# each kept step holds an observation's frames
MAX_HISTORY_STEPS = 10000


def _check_deltas(name: str, deltas: Sequence[int]) -> Tuple[int, ...]:
    deltas = tuple(int(d) for d in deltas)
    if not deltas:
        raise ValueError(f"{name} delta indices must not be empty")
    if any(d > 0 for d in deltas):
        raise ValueError(f"{name} delta indices must be <= 0 (history only), got {list(deltas)}")
    if min(deltas) < -MAX_HISTORY_STEPS:
        raise ValueError(f"{name} delta indices reach {min(deltas)} steps back; at most {MAX_HISTORY_STEPS} are kept "
                         "(the policy server's modality config: is it the right server?)")
    return deltas



def _log_env_failure(what: str, exc: BaseException) -> None:
    """`what` and the env's error at ERROR, bounded and escaped as the episode's reason is (an env's words must neither
    flood the log nor forge a line of it); its traceback at DEBUG."""
    logger.error("%s: %s", what, shown_text(env_error_text(exc), ERROR_REASON_CHARS))
    logger.debug("%s", what, exc_info=exc)

class MultiStepWrapper(gym.Wrapper):
    """Run `n_action_steps` rows of each action chunk in the inner env and return a history-stacked observation.

    Observations: `video.*` keys become (T_v, H, W, 3) and `state.*` keys (T_s, D) (D = 1 for a scalar state), taken
    at `video_delta_indices` / `state_delta_indices` (<= 0) of the inner steps; before the episode has that much
    history the first observation is repeated. Other keys (language) pass through. The episode ends on success (when
    `terminate_on_success`), when the inner env ends it, or after `max_episode_steps` inner steps; then
    info["episode"] holds an EpisodeSummary (`truncated_by_env` when the inner env truncated it before
    `max_episode_steps`) and, with a recorder, the captioned video is written.
    An exception from the inner env ends the episode as failed with the reason, instead of killing the worker.
    `recording_length` (set by the runner when a replay says its recording ends; cleared by reset): the episode stops
    after that many inner steps and, unless the env ended it there, errors, as no recorded action is left to replay.
    Reset options: {"episodes": [episode index per env row, -1 = idle]} with this wrapper's `env_index`.
    `defer_video`: the episode's video is written by `write_video()` (the runner calls it after the env step that ended
    the episode, outside the step's --env-timeout), not inside that step; the summary's video_path is then None.
    """

    def __init__(
        self,
        env: gym.Env,
        n_action_steps: int,
        max_episode_steps: int,
        video_delta_indices: Sequence[int] = (0,),
        state_delta_indices: Sequence[int] = (0,),
        terminate_on_success: bool = True,
        recorder: Optional[EpisodeVideoRecorder] = None,
        env_index: int = 0,
        render_below: Optional[int] = None,
        defer_video: bool = False,
    ) -> None:
        super().__init__(env)
        # as RolloutConfig: int() cut 2.5 steps to 2 and took True as 1
        self.n_action_steps = check_whole_number(n_action_steps, "n_action_steps", 1)
        self.max_episode_steps = check_whole_number(max_episode_steps, "max_episode_steps", 1)
        self.video_delta_indices = _check_deltas("video", video_delta_indices)
        self.state_delta_indices = _check_deltas("state", state_delta_indices)
        self.terminate_on_success = terminate_on_success
        self.recorder = recorder
        self.render_below = render_below  # record videos only of episodes with a smaller index (None: all)
        self._recording = False
        self.defer_video = defer_video
        self._video_due: Optional[Tuple[bool, Optional[str]]] = None  # (success, failure) of the episode to write
        self.env_index = env_index
        self._history_len = 1 - min(self.video_delta_indices + self.state_delta_indices)
        self._history: Deque[Dict[str, Any]] = collections.deque(maxlen=self._history_len)
        self.observation_space = self._stacked_space(env.observation_space)
        if recorder is not None and render_below != 0:
            self._check_recordable_cameras(env.observation_space)
        self.action_space = self._chunk_space(env.action_space)
        self._idle = True
        self._done = True
        self._episode_index = -1
        self._seed: Optional[int] = None
        self._last_obs: Optional[Dict[str, Any]] = None
        self._rewards: list = []
        self._success = False
        self._success_reported = False  # a step's info carried 'success' or 'is_success'
        self._truncated_by_env = False
        self._steps = 0
        self._task = ""
        self.recording_length: Optional[int] = None
        # The keys of the env's first observation in its own order: gymnasium's Dict space, and so every vector env
        # observation, sorts them, and position pairing with the policy's keys must follow the env's order.
        self.observation_keys: Optional[Tuple[str, ...]] = None

    # -- spaces -----------------------------------------------------------------------------------
    def _stacked_space(self, space: gym.Space) -> gym.spaces.Dict:
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"MultiStepWrapper needs a Dict observation space of flat GR00T keys, got {type(space).__name__}")
        out = {}
        for key, sub in space.spaces.items():
            if isinstance(sub, gym.spaces.Box) and (key.startswith("video.") or key.startswith("state.")):
                if key.startswith("video."):
                    horizon, step_shape = len(self.video_delta_indices), sub.shape
                else:  # a scalar state is sent as (T, 1): the policy takes states as (T, D)
                    horizon, step_shape = len(self.state_delta_indices), sub.shape or (1,)
                low = np.broadcast_to(sub.low, (horizon, *step_shape))
                high = np.broadcast_to(sub.high, (horizon, *step_shape))
                # states are sent as float32 (state_in_float32): an int Box declared as such failed every vector
                # env's reset ("Cannot cast ... float32 to int32"), naming no key
                dtype = np.float32 if key.startswith("state.") else sub.dtype
                with np.errstate(over="ignore"):  # a float64 bound beyond float32 is an unbounded one
                    out[key] = gym.spaces.Box(low=low.astype(dtype), high=high.astype(dtype), dtype=dtype)
            else:
                out[key] = sub
        return gym.spaces.Dict(out)

    def _check_recordable_cameras(self, space: gym.spaces.Dict) -> None:
        """Refuse a `video.*` Box the episode videos cannot show (grayscale, channels-first, RGBA, float): it failed the
        task in the recorder at the first frame, naming no key. Not converted for the video: the policy would still
        get that layout and refuse every episode."""
        env = type(self.env.unwrapped).__name__
        for key, sub in space.spaces.items():
            if not key.startswith("video.") or not isinstance(sub, gym.spaces.Box):
                continue
            if len(sub.shape) != 3 or sub.shape[-1] != 3 or sub.dtype != np.uint8:
                raise ValueError(f"env {env} declares {key!r} as {sub.shape} {sub.dtype}; episode videos take (H, W, 3) "
                                 "uint8 frames: convert the frames in the env, or record no videos (--no-video)")

    def _chunk_space(self, space: gym.Space) -> gym.spaces.Dict:
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"MultiStepWrapper needs a Dict action space of 'action.*' keys, got {type(space).__name__}")
        out = {}
        for key, sub in space.spaces.items():
            if not isinstance(sub, gym.spaces.Box):
                raise TypeError(f"env {type(self.env.unwrapped).__name__} declares {key!r} as a "
                                f"{type(sub).__name__} space; each 'action.*' subspace must be a gym.spaces.Box "
                                "(for a discrete action, a Box of an integer dtype: the policy's values are rounded)")
            low = np.broadcast_to(sub.low, (self.n_action_steps, *sub.shape))
            high = np.broadcast_to(sub.high, (self.n_action_steps, *sub.shape))
            out[key] = gym.spaces.Box(low=low, high=high, dtype=sub.dtype)
        return gym.spaces.Dict(out)

    # -- observation history ----------------------------------------------------------------------
    def _stacked(self) -> Dict[str, Any]:
        history = list(self._history)
        last = len(history) - 1
        # a step before the episode's first is its first observation (padded by index: inserting copies was quadratic
        # in the history, and a config's far-back delta, [-1000000, 0], hung the env's reset)
        latest = history[-1]
        out: Dict[str, Any] = {}
        for key, value in latest.items():
            if key.startswith("video."):
                out[key] = np.stack([history[max(0, last + d)][key] for d in self.video_delta_indices])
            elif key.startswith("state."):
                states = np.stack([history[max(0, last + d)][key] for d in self.state_delta_indices])
                out[key] = state_in_float32(key, states[:, None] if states.ndim == 1 else states)
            else:
                out[key] = value
        return out

    def _placeholder(self) -> Dict[str, Any]:
        out = {}
        for key, sub in self.observation_space.spaces.items():
            out[key] = np.zeros(sub.shape, sub.dtype) if isinstance(sub, gym.spaces.Box) else ""
        return out

    def _check_against_space(self, raw: Mapping[str, Any]) -> None:
        """Refuse a camera of another dtype or shape, or a state of another shape, than the env's space declares: the
        vector env's cast of it failed naming neither the key nor the fix."""
        spaces = self.env.observation_space.spaces
        env = type(self.env.unwrapped).__name__
        for key, value in raw.items():
            space = spaces.get(key)
            if not isinstance(space, gym.spaces.Box) or not key.startswith(("video.", "state.")):
                continue
            array = np.asarray(value)
            if key.startswith("video.") and array.dtype != space.dtype:
                raise TypeError(f"env {env} returned {array.dtype} images for {key!r} (its observation space says "
                                f"{space.dtype} {space.low.min():g}..{space.high.max():g}): convert them in the env")
            if array.shape != space.shape:
                raise ValueError(f"env {env} returned {key!r} of shape {array.shape}; its observation space says "
                                 f"{space.shape}")

    def _missing_from(self, raw: Any) -> Optional[str]:
        """What an env's observation lacks of the keys its observation space declares (None: it has them all): the
        vector env's concatenation of it failed with a bare KeyError or AttributeError, naming no env or episode."""
        where = f"env {self.env_index} (episode {self._episode_index})"
        if not isinstance(raw, Mapping):
            return f"{where} returned the observation {_describe(raw)}, not a dict of its observation space's keys"
        missing = [key for key in self.env.observation_space.spaces if key not in raw]
        if missing:
            return f"{where} returned an observation without {missing}, which its observation space declares"
        return None

    def _observe(self, raw: Mapping[str, Any]) -> None:
        self._check_against_space(raw)
        # An env may hand out views of buffers it updates in place (MuJoCo's data.qpos, a reused render buffer, a list
        # or a torch tensor): an entry kept past this step is a copy, or every entry of the history became the current
        # observation ([s_t, s_t] for delta indices [-1, 0]) without a word.
        if self._history_len > 1:
            self._history.append({key: np.array(value, copy=True) if key.startswith(("video.", "state.")) else value
                                  for key, value in raw.items()})
        else:
            self._history.append(dict(raw))
        if self._recording:
            self.recorder.add(frame_from_observation(raw))

    # -- gym API ----------------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        """Start episode options["episodes"][env_index] (or go idle when it is -1)."""
        options = dict(options or {})
        plan = options.pop("episodes", None)
        episode_index = int(plan[self.env_index]) if plan is not None else self._episode_index + 1
        self._rewards, self._success, self._steps = [], False, 0
        self._success_reported = self._truncated_by_env = False
        self.recording_length = None
        self._video_due = None
        if episode_index < 0:
            self._idle, self._done = True, True
            return (self._last_obs if self._last_obs is not None else self._placeholder()), {"idle": True}
        self._idle, self._done = False, False
        self._episode_index, self._seed = episode_index, seed
        self._history.clear()
        self._recording = self.recorder is not None and (self.render_below is None or episode_index < self.render_below)
        if self._recording:
            self.recorder.start()
        try:
            raw, _ = self.env.reset(seed=seed, options=options or None)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - isolate the episode: report and let the run go on
            _log_env_failure(f"env {self.env_index}: reset for episode {episode_index} failed", exc)
            self._done = True
            self._last_obs = self._placeholder()
            return self._last_obs, {"episode": self._summary(f"{RESET_FAILED}{env_error_text(exc)}")}
        missing = self._missing_from(raw)
        if missing is not None:
            self._done = True
            self._last_obs = self._placeholder()
            return self._last_obs, {"episode": self._summary(f"reset: {missing}")}
        self._task = _caption(raw)
        if self.observation_keys is None:
            self.observation_keys = tuple(raw)
        self._observe(raw)
        try:
            self._last_obs = self._stacked()
        except ValueError as exc:  # a state the policy cannot take: report the episode, keep the worker
            self._done = True
            self._last_obs = self._placeholder()
            return self._last_obs, {"episode": self._summary(f"reset: {exc}")}
        return self._last_obs, {"idle": False}

    def step(self, action: Mapping[str, np.ndarray]):
        """Execute the first n_action_steps rows of every `action.*` array; reward is the sum over them."""
        if self._idle or self._done:
            obs = self._last_obs if self._last_obs is not None else self._placeholder()
            return obs, 0.0, False, False, {"idle": True}
        chunk_reward = 0.0
        failure = self._replay_ran_out()
        terminated, truncated = failure is not None, False
        for i in range(0 if terminated else self.n_action_steps):
            inner_action = {key: np.asarray(value)[i] for key, value in action.items()}
            try:
                raw, reward, inner_term, inner_trunc, info = self.env.step(inner_action)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - isolate the episode: report and let the run go on
                _log_env_failure(f"env {self.env_index}: step {self._steps} of episode {self._episode_index} failed", exc)
                failure = f"step {self._steps} failed: {env_error_text(exc)}"
                terminated = True
                break
            self._steps += 1
            number = _reward_number(reward)
            if number is None or not np.isfinite(number):  # null, read back as 0.0: a merged or resumed run averaged
                got = (f"the reward {number}, which is not a finite number" if number is not None else
                       f"the reward {_describe(reward)}, which is not a number")
                failure = f"step {self._steps - 1}: the env returned {got}; the episode cannot be scored"
                terminated = True
                break
            missing = self._missing_from(raw)
            if missing is not None:
                failure, terminated = f"step {self._steps - 1}: {missing}; the episode cannot be scored", True
                break
            reward = number
            self._rewards.append(reward)
            chunk_reward += reward
            try:
                step_success = success_from_info(info)
            except ValueError as exc:
                failure, terminated = f"step {self._steps - 1}: {exc}", True
                break
            self._success = self._success or step_success
            self._success_reported = (self._success_reported or info.get("success") is not None
                                      or info.get("is_success") is not None)
            self._observe(raw)
            if inner_term or (self.terminate_on_success and self._success):
                terminated = True
            if inner_trunc or self._steps >= self.max_episode_steps:
                truncated = True
                self._truncated_by_env = not terminated and self._steps < self.max_episode_steps
            if terminated or truncated:
                break
            failure = self._replay_ran_out()
            if failure is not None:
                terminated = True
                break
        if self._history:
            try:
                self._last_obs = self._stacked()
            except ValueError as exc:  # an episode that ended sends the policy no more observations
                if not (terminated or truncated):
                    failure, terminated = f"step {self._steps - 1}: {exc}", True
        sum_reward, max_reward = self._reward_totals()  # so far: the runner reports them for an episode it errors
        if not np.isfinite(sum_reward) and failure is None:  # finite rewards past float64's range: inf written as null
            failure, terminated = (f"step {self._steps - 1}: the env's rewards add up to {sum_reward} (each is finite, "
                                   "their sum is past float64's range); the episode cannot be scored"), True
        out_info: Dict[str, Any] = {"success": self._success, "env_steps": self._steps, "idle": False,
                                    "sum_reward": sum_reward, "max_reward": max_reward}
        if terminated or truncated:
            self._done = True
            out_info["episode"] = self._summary(failure)
        return self._last_obs, chunk_reward, terminated, truncated, out_info

    def close(self) -> None:
        """Close the inner env; an unfinished episode's video frames (and their temporary file) are dropped."""
        try:
            super().close()
        finally:
            if self.recorder is not None:
                self.recorder.close()

    def _replay_ran_out(self) -> Optional[str]:
        """The error of an episode that has executed every recorded action of the replay it runs (None: steps remain)."""
        length = self.recording_length
        if length is None or self._steps < length:
            return None
        said = (f"the replay ran out of recorded actions at step {self._steps} (the recording has {length} steps); "
                "a replay cannot say what the policy would do after it")
        if self._success and not self.terminate_on_success:  # a recording that stops at success (as `record` writes)
            said += ("; this episode reached success, and terminate_on_success=false runs it on past success, where "
                     "the recording ends: roll a replay out with terminate_on_success true (the default)")
        return said

    def _reward_totals(self) -> Tuple[float, float]:
        """The episode's sum and max reward so far (0.0 before its first step)."""
        if not self._rewards:
            return 0.0, 0.0
        with np.errstate(over="ignore"):  # a sum past float64's range errors the episode (step), without numpy's warning
            return float(np.sum(self._rewards)), float(np.max(self._rewards))

    def write_video(self, errored_rows: Mapping[int, str]) -> Optional[str]:
        """With `defer_video`: write the video of this env's episode that ended, or, when `errored_rows` names this
        env's row (the runner errored its episode: a failed policy request), end that episode and write its frames so
        far as its error video. Returns the video's path (None: no video is due)."""
        reason = errored_rows.get(self.env_index)
        if reason is not None and not self._done:
            self._done = True
            self._video_due = (False, reason) if self._recording and self.recorder.n_frames else None
        due, self._video_due = self._video_due, None
        return None if due is None else self._write_video(*due)

    def _write_video(self, success: bool, failure: Optional[str]) -> Optional[str]:
        note = failure.split(":")[0] if failure else ""
        try:
            errored = failure is not None
            name = episode_video_name(self._episode_index, success, errored)
            return self.recorder.finish(name, self._task, success, note, errored)
        except Exception as exc:  # noqa: BLE001 - a broken video (codec, frames) must not lose the episode's score
            if is_storage_error(exc):  # a full disk: the run stops before this episode is logged, for --resume to rerun
                raise
            _log_env_failure(f"env {self.env_index}: writing the video of episode {self._episode_index} failed", exc)
            return None

    def _summary(self, failure: Optional[str]) -> EpisodeSummary:
        success = self._success and failure is None
        video_path = None
        if self._recording and self.recorder.n_frames:
            if self.defer_video:
                self._video_due = (success, failure)
            else:
                video_path = self._write_video(success, failure)
        sum_reward, max_reward = self._reward_totals()
        return EpisodeSummary(
            episode_index=self._episode_index,
            seed=self._seed,
            success=success,
            sum_reward=sum_reward,
            max_reward=max_reward,
            length=self._steps,
            video_path=video_path,
            failure_reason=failure,
            success_reported=self._success_reported,
            truncated_by_env=self._truncated_by_env,
        )


def _reward_number(reward: Any) -> Optional[float]:
    """The reward as a float, or None when it is not one number (None, a string, an array of several values)."""
    if isinstance(reward, (str, bytes)) or reward is None:
        return None
    try:
        return float(reward)
    except (TypeError, ValueError):
        return None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} ({value.dtype})"
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.generic):  # torch, jax
        shape = tuple(value.shape)
        one = f" holding {_one_value(value)!r:.20}" if int(np.prod(shape)) == 1 else ""
        return f"{type(value).__name__} of shape {shape} ({value.dtype}){one}"
    return f"{value!r:.60} ({type(value).__name__})"
