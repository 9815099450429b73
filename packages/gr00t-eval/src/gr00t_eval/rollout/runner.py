"""Closed-loop rollout: vectorised envs driven by a policy (usually a PolicyClient), exactly n_episodes scored.

Accounting (fixes the reference rollout's defects): episode i is started at most once,
with seed `seed + i`, on whichever env row is free; every started episode runs to its end and is scored;
no episode beyond n_episodes is started, so short episodes are not over-represented. When a row starts an
episode the policy is reset for that row only (per-row reset options, see `PolicyRowCursor`) with
`episode_index` i. Indices count from `first_episode`, so a shard's episodes keep the seeds and replayed
episodes they have in the whole run. An episode whose env or policy call fails is scored as errored with its
reason and the run goes on. So is an episode whose policy reports a position (episode, step) other than the one
the rollout put it at (`PolicyRowCursor.check_reply`): a replay server that was restarted, or that dropped the
session, replays another recording from there on. An env in a subprocess that does not finish a reset or step
within `env_timeout_s` (a hung simulator) stops the run with EnvStalledError, naming the env and its episode; one whose
worker process dies (a segfault, the OOM killer) stops it with EnvWorkerDiedError, naming them and the signal.

Client chunking (`client_chunking` "sync" or "async", opt-in): the envs step one env step per policy call and a
gr00t_client ActionChunker hands out the steps of its buffered chunks (async: it prefetches the next chunk in the
background); a row that starts an episode also drops its buffered steps. The accounting above is unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")  # one line naming the extra, not a deep ImportError

import gymnasium as gym  # noqa: E402
import numpy as np

from gr00t_client import ActionChunker, BasePolicy, DeadlineNotRunError, ServerBusyError, ServerStoppingError
from gr00t_client.cli_signals import stop_signals_held
from gr00t_client.peer_text import shown_text

from ..metrics import ERROR_REASON_CHARS, EpisodeOutcome
from ..policy_identity import ServedPolicyChanged, check_serves_env_embodiments, pinned_policy, policy_record
from ..run_stop import check_output_folders, take_stop_while_closing
# A get_action or policy reset the server refused busy (at its queue's cap: not run) is asked again after
# BUSY_RETRY_FIRST_S, doubled each time, until the waits come to BUSY_RETRY_TOTAL_S; then its episodes error (a reset
# of several rows: all of them, within that one bound)
from ..server_busy import BUSY_RETRY_FIRST_S, BUSY_RETRY_TOTAL_S, asked_while_busy
from .config import RolloutConfig, check_policy, check_rollout_config, draw_base_seed, is_whole_number  # noqa: F401 - draw_base_seed re-exported
from .config import check_on_episode, without_unkept_env_timeout
from .liveness import PolicyServerUnreachableError, ServerWatch
from .envs import embodiment_for_env
from .multistep import EpisodeSummary
from .policy_io import (HorizonSpec, ObservationMapper, PolicyRowCursor, PositionCheckedPolicy, policy_actions,
                        recording_ends, refused_rows, with_idle_rows_mirrored)
from .replay_plan import check_replay_horizon
from .replay_recordings import RecordedEnvMismatchError, _check_recorded_env, _note_recorded_seeds
from .result import RolloutResult
from .stalls import reset_envs, step_envs
from .vector_envs import _close_envs, make_vector_env
from .worker_deaths import PIPE_ERRORS, dead_worker_error

logger = logging.getLogger(__name__)
# What a stop prints while the episodes that just ended have their videos written and are scored
ENDED_EPISODES_NOTE = "stopping once the episodes that just ended are saved (Ctrl-C again to stop waiting)"

IDLE = -1


def _shown_reason(reason: Optional[str]) -> Optional[str]:
    """An errored episode's reason, a server's or an env's words, as logged and saved: one line, of bounded size."""
    return None if reason is None else shown_text(reason, ERROR_REASON_CHARS)


class RolloutRunner:
    """Runs one rollout (see the module docstring); use `run()` once.

    `episodes` (default: first_episode .. first_episode + n_episodes - 1) lists the episode indices to run, e.g.
    the ones a resumed run still lacks. `on_episode` is called with each EpisodeOutcome as soon as it is scored.
    """

    def __init__(self, policy: BasePolicy, config: RolloutConfig, progress: bool = True,
                 on_episode: Optional[Callable[[EpisodeOutcome], None]] = None, episodes: Optional[Sequence[int]] = None) -> None:
        check_rollout_config(config)
        check_policy(policy)
        check_on_episode(on_episode)
        self.policy = policy
        self.config = config if config.seed is not None else dataclasses.replace(config, seed=draw_base_seed())
        self.progress = progress
        self.on_episode = on_episode
        self.embodiment_tag = embodiment_for_env(config.env_name)
        if episodes is None:
            self.episodes = list(range(config.first_episode, config.first_episode + config.n_episodes))
        else:
            self.episodes = list(episodes)
            for position, episode in enumerate(self.episodes):  # 1.5 ran as episode 1 and True as 1
                if not is_whole_number(episode):
                    raise ValueError(f"episodes[{position}] must be a whole number >= 0, got "
                                     f"{type(episode).__name__} {episode!r}")
            self.episodes = [int(episode) for episode in self.episodes]
        if len(set(self.episodes)) != len(self.episodes) or any(e < 0 for e in self.episodes):
            raise ValueError(f"episodes must be distinct indices >= 0, got {self.episodes}")
        self.todo: Deque[int] = collections.deque(self.episodes)
        self.outcomes: Dict[int, EpisodeOutcome] = {}
        self.row_episode: List[int] = []
        self.recorded_seeds: Dict[int, int] = {}  # episode -> seed a replay server reports it was recorded with
        # episode -> (env steps, sum and max reward) so far, from the wrapper's step infos: an episode errored by a
        # failed policy request between steps reports the steps its env ran, not 0
        self._progress: Dict[int, Tuple[int, float, float]] = {}
        self._warned_no_success = False  # an episode ended without its env ever reporting success (warned once)
        self._warned_env_truncated = False  # the env ended an episode by its own limit before max_episode_steps
        self._warned_ignored_seed = False  # a reset info's "seed" is the policy's own, not recorded ones (warned once)
        self.watch = ServerWatch(policy)
        self.chunker: Optional[ActionChunker] = None  # client chunking only; its `stats` remain after run()
        self._recording_lengths: Dict[int, int] = {}  # row -> length of the recording its replay said ends (set on its env)
        self._vec: Optional[gym.vector.VectorEnv] = None
        self._ran = False
        self.loop_ended_at: Optional[float] = None  # time.perf_counter() when the episode loop returned or raised
        self.env_stepped = False  # the envs were sent a step: the run had started when it failed, if it did

    def run(self) -> RolloutResult:
        """Create the envs, run until every episode is scored, close the envs.

        Raises PolicyServerUnreachableError when the server stops answering (the episodes scored so far
        have been passed to `on_episode`), EnvStalledError when an env reset or step outlasts `env_timeout_s`,
        EnvWorkerDiedError (naming the env row, its episode and how its worker died) when an env worker dies, and
        lets KeyboardInterrupt through after closing the envs (a stalled env's workers are terminated). A second call
        raises RuntimeError: the episodes an interrupted run was running are not in its to-do list any more.
        """
        if self._ran:
            raise RuntimeError("a RolloutRunner runs once; make a new one to run again (episodes= the ones still to run)")
        self._ran = True
        if take_stop_while_closing():  # a Ctrl-C at the teardown of the run before (complete): this one does not start
            raise KeyboardInterrupt("a stop signal while the envs of the run before closed")
        config = self.config
        start = time.perf_counter()
        if not self.episodes:
            return RolloutResult(config.env_name, self.embodiment_tag, [], 0.0)
        spec = HorizonSpec.from_modality_config(self.policy.get_modality_config())
        spec.check_n_action_steps(config.n_action_steps)
        spec.check_rtc_frozen_steps(config.rtc_frozen_steps, config.n_action_steps)
        n_envs = min(config.n_envs, len(self.episodes))
        logger.info("Running collecting %d episodes for %s with %d vec envs (base seed %d)", len(self.episodes),
                    shown_text(config.env_name), n_envs, config.seed)
        if config.video_dir:  # once, here: an episode's video only makes its own file (never a folder gone mid-run)
            check_output_folders()  # nor a claimed folder gone since the run started (a suite's next task, a job)
            Path(config.video_dir).mkdir(parents=True, exist_ok=True)
        vec = self._vec = make_vector_env(config, spec, n_envs)
        clean = False
        try:
            with pinned_policy(self.policy):  # the CLI pins the run's policy itself; this covers the Python API
                try:
                    self._loop(vec, spec, n_envs)
                finally:  # eval_s ends here: closing the envs (up to --env-timeout for a hung close) is no episode's
                    self.loop_ended_at = time.perf_counter()
            clean = True
        except PIPE_ERRORS as exc:
            if not isinstance(vec, gym.vector.AsyncVectorEnv):
                raise
            raise dead_worker_error(vec.processes, self.row_episode, self.seed_for, exc) from exc
        finally:
            _close_envs(vec, clean, config.env_timeout_s)
        eval_s = self.loop_ended_at - start
        outcomes = [self.outcomes[i] for i in sorted(self.outcomes)]
        return RolloutResult(config.env_name, self.embodiment_tag, outcomes, eval_s)

    # -- episode bookkeeping ----------------------------------------------------------------------
    def seed_for(self, episode: int) -> int:
        """The env seed of `episode`: the one a replay server reports it was recorded with, else base seed + index."""
        recorded = self.recorded_seeds.get(episode)
        return int(recorded) if recorded is not None else int(self.config.seed_for(episode))

    def _score(self, row: int, summary: EpisodeSummary, bar: Any) -> None:
        if summary.failure_reason is None and not summary.success_reported and not self._warned_no_success:
            self._warned_no_success = True  # once per run: every such episode is scored a failure, which may be wrong
            logger.warning("the env of %s reported no 'success' or 'is_success' in any step info of episode %d, which "
                           "is scored a failure; an env that ends episodes on success must report it, or its success "
                           "rate reads 0%%", shown_text(self.config.env_name), summary.episode_index)
        if summary.truncated_by_env:
            self._warn_env_truncated(summary)
        outcome = EpisodeOutcome(
            episode_index=summary.episode_index, seed=summary.seed if summary.seed is not None else self.seed_for(summary.episode_index),
            success=summary.success and summary.failure_reason is None, sum_reward=summary.sum_reward,
            max_reward=summary.max_reward, length=summary.length, env_index=row, video_path=summary.video_path,
            error=_shown_reason(summary.failure_reason), extras={"truncated_by_env": True} if summary.truncated_by_env else {},
        )
        self.outcomes[summary.episode_index] = outcome
        self._progress.pop(summary.episode_index, None)
        self._recording_lengths.pop(row, None)
        self.row_episode[row] = IDLE
        if self.on_episode is not None:
            self.on_episode(outcome)
        if bar is not None:
            finished = [o.success for o in self.outcomes.values() if o.error is None]
            errors = len(self.outcomes) - len(finished)
            bar.set_postfix(success=f"{np.mean(finished):.2f}" if finished else "-", errors=errors, refresh=False)
            bar.update(1)  # redraws at most every mininterval (a CI log got one bar line per episode)

    def _warn_env_truncated(self, summary: EpisodeSummary) -> None:
        if self._warned_env_truncated:
            return
        self._warned_env_truncated = True  # once per run; results.json marks every such episode truncated_by_env
        logger.warning("the env of %s truncated episode %d at step %d, its own step limit, before the run's "
                       "max_episode_steps of %d: such episodes are scored as they stand (a failure unless they "
                       "succeeded) and marked truncated_by_env; raise the env's limit (for a gym id, "
                       "--env-kwarg max_episode_steps=N) or lower --max-episode-steps", shown_text(self.config.env_name),
                       summary.episode_index, summary.length, self.config.max_episode_steps)

    def _fail(self, row: int, reason: str, bar: Any) -> None:
        reason = _shown_reason(reason)
        episode = self.row_episode[row]
        logger.error("episode %d (env %d) errored: %s", episode, row, reason)
        steps, sum_reward, max_reward = self._progress.get(episode, (0, 0.0, 0.0))
        video_path = self._write_videos({row: reason})[row]
        self._score(row, EpisodeSummary(episode, self.seed_for(episode), False, sum_reward, max_reward, steps, video_path,
                                        reason), bar)

    def _write_videos(self, errored_rows: Mapping[int, str]) -> Sequence[Optional[str]]:
        """Each env row's video now due (MultiStepWrapper.write_video): of the episode its last step ended, or of the
        frames so far of an episode in `errored_rows`. Written outside the timed env step: an encode is no hung
        simulator (--env-timeout)."""
        if not self.config.video_dir or self._vec is None:
            return [None] * len(self.row_episode)
        check_output_folders()  # a run whose folder was deleted (and re-made by another run) writes no video there
        try:
            return self._vec.call("write_video", dict(errored_rows))
        except OSError as exc:  # an async worker's error comes back as OSError(its error): its errno (a full disk) lost
            cause = exc.args[0] if len(exc.args) == 1 else None
            if isinstance(cause, OSError):
                raise cause from None
            raise

    def _policy_failed(self, rows: Sequence[int], what: str, exc: BaseException, bar: Any) -> None:
        """Score `rows` as errored by a failed policy request; stop the run if the server is gone (a server that said
        it is shutting down did not run the request: its rows' episodes are left not run, for --resume)."""
        gone = self.watch.unreachable_reason(exc)
        if gone is not None and isinstance(exc, (ServerStoppingError, ServedPolicyChanged)):
            raise PolicyServerUnreachableError(f"{gone}; stopping the run (finished episodes are kept)") from exc
        for row in rows:
            self._fail(row, f"policy {what} failed: {type(exc).__name__}: {exc}", bar)
        if gone is not None:
            raise PolicyServerUnreachableError(f"{gone}; stopping the run (finished episodes are kept)") from exc

    def _start_rows(self, vec: gym.vector.VectorEnv, rows: Set[int], first: bool, cursor: PolicyRowCursor, bar: Any) -> Any:
        """Start the next episodes on `rows` (or idle them); rows whose reset fails are scored as errors and retried.

        The policy is reset first, so a replay server can report the seed each recorded episode was made with,
        then the envs are reset with those seeds.
        """
        obs = None
        while rows:
            plan = list(self.row_episode)
            for row in sorted(rows):
                plan[row] = self.todo.popleft() if self.todo else IDLE
            self.row_episode = plan
            starting = {row: plan[row] for row in sorted(rows) if plan[row] != IDLE}
            refused: Set[int] = set()
            if starting:
                self._restart_chunks(starting)
                refused = self._reset_policy(cursor, starting, bar)
            env_rows = set(range(len(plan))) if first else rows - refused
            if not env_rows:
                rows = refused
                continue
            episodes = [IDLE if r in refused else plan[r] for r in range(len(plan))]
            seeds = [self.seed_for(episodes[r]) if r in env_rows and episodes[r] != IDLE else None for r in range(len(plan))]
            options: Dict[str, Any] = {"episodes": episodes}
            if not first:
                options["reset_mask"] = np.array([r in env_rows for r in range(len(plan))], dtype=bool)
            obs, infos = reset_envs(vec, self.config.env_timeout_s, episodes, seed=seeds, options=options)
            first = False
            failed = set()
            for row in sorted(env_rows):
                if episodes[row] == IDLE:
                    continue
                summary = _row_info(infos, "episode", row)
                if summary is not None:
                    self._score(row, summary, bar)
                    failed.add(row)
            rows = refused | failed
        return obs

    def _reset_policy(self, cursor: PolicyRowCursor, started: Dict[int, int], bar: Any) -> Set[int]:
        """Reset the policy for the rows that start episodes; return the rows whose reset was refused (scored)."""
        try:
            info = self._reset_when_not_busy(cursor.reset_options(started))
            # No request_succeeded(): a reset answered between failed get_actions (each refused, or timed out, after a
            # reset) zeroed their count, so a policy too slow for every call errored each episode and ended `complete`
            cursor.commit(started)
            _check_recorded_env(info, started, len(self.row_episode), self.config.env_name)
            self._note_recorded_seeds(info, started)
            return set()
        except RecordedEnvMismatchError:
            raise  # stops the run: every episode would replay another task's recording
        except Exception as exc:  # noqa: BLE001 - retried row by row below, so one bad row fails alone
            # Still busy past the bound: its rows error now (asked again row by row, each waited out a bound of its own)
            if len(started) == 1 or isinstance(exc, ServerBusyError) or self.watch.unreachable_reason(exc) is not None:
                self._policy_failed(list(started), "reset", exc, bar)
                return set(started)
        failed = set()
        for row, episode in started.items():
            try:
                info = self._reset_when_not_busy(cursor.reset_options({row: episode}))
                cursor.commit({row: episode})
                _check_recorded_env(info, {row: episode}, len(self.row_episode), self.config.env_name)
                self._note_recorded_seeds(info, {row: episode})
            except RecordedEnvMismatchError:
                raise
            except Exception as exc:  # noqa: BLE001 - score the episode, keep going
                self._policy_failed([row], "reset", exc, bar)
                failed.add(row)
        return failed

    def _reset_when_not_busy(self, options: Dict[str, Any]) -> Any:
        """The policy's reset, asked again while the server refuses it busy (not run: no row has moved)."""
        return asked_while_busy(lambda: self.policy.reset(options=options), BUSY_RETRY_FIRST_S, BUSY_RETRY_TOTAL_S,
                                "a policy reset")

    def _note_recorded_seeds(self, info: Any, started: Mapping[int, int]) -> None:
        if _note_recorded_seeds(info, started, len(self.row_episode), self.config, self.recorded_seeds,
                                warn_ignored=not self._warned_ignored_seed):
            self._warned_ignored_seed = True  # once per run: such a policy reports its seed at every reset

    # -- policy calls -----------------------------------------------------------------------------
    def _make_chunker(self, policy: PositionCheckedPolicy) -> Optional[ActionChunker]:
        mode = self.config.client_chunking
        if mode == "off":
            return None
        # per_env=False: every request carries all rows, so a server keeping per-row state sees each row in place.
        logger.info("client chunking %s: one env step per call, %d steps of each chunk, merge %s, rtc frozen steps %s",
                    mode, self.config.n_action_steps, self.config.chunk_merge, self.config.rtc_frozen_steps)
        return ActionChunker(policy, n_action_steps=self.config.n_action_steps, asynchronous=mode == "async",
                             merge=self.config.chunk_merge, rtc_frozen_steps=self.config.rtc_frozen_steps)

    def _restart_chunks(self, started: Mapping[int, int]) -> None:
        """Drop the buffered steps of rows starting an episode, before the policy reset (never concurrent with a prefetch)."""
        chunker = self.chunker
        if chunker is None:
            return
        chunker.wait_for_prefetch()  # the policy must not be reset while a background request still runs
        if chunker.n_envs is not None:  # None: no chunk fetched yet, nothing buffered
            chunker.reset(env_ids=sorted(started), policy_reset_by_caller=True)  # _reset_policy resets the rows

    def _act(self, policy: PositionCheckedPolicy, observation: Dict[str, Any],
             action_space: gym.spaces.Dict) -> Tuple[Dict[str, np.ndarray], Mapping[str, Any]]:
        """The env action for this vector step and the info for the row cursor."""
        n_rows = len(self.row_episode)
        if self.chunker is None:
            action, info = policy.get_action(observation)
            return policy_actions(action, action_space, self.config.n_action_steps, n_rows), info or {}
        step, chunk_info = self.chunker.get_action(observation)
        # The chunker drops a prefetch the server did not run as it stops, and runs on: the run stops here, as at
        # any request it answers so (its rows' episodes left not run, for --resume).
        if isinstance(self.chunker.dropped_prefetch_failure, ServerStoppingError):
            raise self.chunker.dropped_prefetch_failure
        # The cursor counts one step per call (no execution_horizon); the replay's place in its recording comes along.
        policy_info = chunk_info["policy_info"]
        info = {key: policy_info[key] for key in ("episode_length", "episode_done", "current_step") if key in policy_info}
        single_step = {key: np.asarray(value)[:, None] for key, value in step.items()}  # (B, D) -> (B, 1, D)
        return policy_actions(single_step, action_space, 1, n_rows), info

    def _act_once_more_if_not_run(self, policy: PositionCheckedPolicy, observation: Dict[str, Any],
                                  action_space: gym.spaces.Dict) -> Tuple[Dict[str, np.ndarray], Mapping[str, Any]]:
        """`_act`, asked once more when the server did not run the request (DeadlineNotRunError): the envs have not
        moved, and a server refuses on the word of a slow call (a cold start's) only until its next request, a probe.
        A sync chunker asks only for rows with no step left and keeps its buffers as they were when a request fails."""
        try:
            return self._act_when_not_busy(policy, observation, action_space)
        except DeadlineNotRunError as exc:
            if self.chunker is not None and self.chunker.asynchronous:  # it asks its prefetch again itself: the episodes error
                raise
            logger.warning("the policy server did not run a get_action (%s); asking once more", exc)
            return self._act_when_not_busy(policy, observation, action_space)

    def _act_when_not_busy(self, policy: PositionCheckedPolicy, observation: Dict[str, Any],
                           action_space: gym.spaces.Dict) -> Tuple[Dict[str, np.ndarray], Mapping[str, Any]]:
        """`_act`, asked again while the server refuses it busy (ServerBusyError: its queue was full, the request not
        run, the envs have not moved) after BUSY_RETRY_FIRST_S, doubled each time, up to BUSY_RETRY_TOTAL_S of waits;
        then the refusal is raised (the episodes error). An async chunker drops a busy prefetch and asks it again
        itself while steps are buffered; only the fetch of a call with none left raises it, at once."""
        if self.chunker is not None and self.chunker.asynchronous:
            return self._act(policy, observation, action_space)
        return asked_while_busy(lambda: self._act(policy, observation, action_space), BUSY_RETRY_FIRST_S,
                                BUSY_RETRY_TOTAL_S, "a get_action")

    def _end_replays_with_their_recordings(self, vec: gym.vector.VectorEnv, info: Mapping[str, Any]) -> None:
        """Tell the envs of rows whose replay says its recording ends where it ends: they run no step past it."""
        ends = recording_ends(info, len(self.row_episode))
        ends = {row: length for row, length in ends.items() if self.row_episode[row] != IDLE}
        if all(self._recording_lengths.get(row) == length for row, length in ends.items()):
            return
        self._recording_lengths.update(ends)
        vec.set_attr("recording_length", [self._recording_lengths.get(row) for row in range(len(self.row_episode))])

    def _loop(self, vec: gym.vector.VectorEnv, spec: HorizonSpec, n_envs: int) -> None:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            from ..progress import bar_options

            bar = tqdm(total=len(self.episodes), desc="Episodes", **bar_options())
        self.row_episode = [IDLE] * n_envs
        cursor = PolicyRowCursor(n_envs, self.config.env_steps_per_call)
        checked = PositionCheckedPolicy(self.policy, cursor, asynchronous=self.config.client_chunking == "async",
                                        n_action_steps=self.config.n_action_steps)
        self.chunker = self._make_chunker(checked)
        mapper: Optional[ObservationMapper] = None
        pending: Set[int] = set(range(n_envs))
        first = True
        obs: Any = None
        try:
            while len(self.outcomes) < len(self.episodes):
                if pending:
                    new_obs = self._start_rows(vec, pending, first, cursor, bar)
                    obs = new_obs if new_obs is not None else obs
                    first, pending = False, set()
                active = [r for r, e in enumerate(self.row_episode) if e != IDLE]
                if not active:
                    if not self.todo:
                        break
                    pending = set(range(n_envs))
                    continue
                if mapper is None:
                    mapper = ObservationMapper(spec, _env_key_order(vec, obs), _keys_dropped_by_vector_env(vec, obs))
                bad_rows = mapper.language_errors(obs, active)
                for row, reason in mapper.state_errors(obs, active).items():
                    bad_rows.setdefault(row, reason)
                for row, reason in sorted(bad_rows.items()):  # that env's episode errors, not its neighbours'
                    self._fail(row, reason, bar)
                    pending.add(row)
                if bad_rows:
                    continue
                try:
                    observation = with_idle_rows_mirrored(mapper(obs, active), active)
                    env_action, info = self._act_once_more_if_not_run(checked, observation, vec.single_action_space)
                    self.watch.request_succeeded()
                except Exception as exc:  # noqa: BLE001 - one batch failed: score its episodes, keep going
                    failed = refused_rows(exc, active)  # the rows it names, if any: the others are asked again
                    pending.update(failed)
                    self._policy_failed(failed, "get_action", exc, bar)
                    continue
                cursor.after_get_action(info)
                self._end_replays_with_their_recordings(vec, info)
                lost = cursor.take_position_errors(active)
                for row, reason in sorted(lost.items()):  # the policy replays something else for these rows now
                    self._fail(row, reason, bar)
                    pending.add(row)
                active = [row for row in active if row not in lost]
                if not active:
                    continue
                self.env_stepped = True
                obs, _, terminated, truncated, infos = step_envs(vec, env_action, self.config.env_timeout_s, self.row_episode)
                ended = any(terminated[row] or truncated[row] for row in active)
                # a stop waits for the ended episodes' videos and scores: it dropped episodes whose videos were written
                with stop_signals_held(ENDED_EPISODES_NOTE) if ended else contextlib.nullcontext():
                    videos = self._write_videos({}) if ended else [None] * n_envs
                    for row in active:
                        steps = _row_info(infos, "env_steps", row)
                        if steps is not None:
                            self._progress[self.row_episode[row]] = (int(steps), float(_row_info(infos, "sum_reward", row) or 0.0),
                                                                     float(_row_info(infos, "max_reward", row) or 0.0))
                        if terminated[row] or truncated[row]:
                            summary = _row_info(infos, "episode", row)
                            if summary is None:  # an env that ended without the wrapper's summary
                                episode = self.row_episode[row]
                                summary = EpisodeSummary(episode, self.seed_for(episode), False, 0.0, 0.0, 0, None, "episode ended without a summary")
                            if videos[row] is not None:
                                summary = dataclasses.replace(summary, video_path=videos[row])
                            self._score(row, summary, bar)
                            pending.add(row)
        finally:
            if bar is not None:
                bar.close()
            if self.chunker is not None:
                self.chunker.close()
                stats = self.chunker.stats
                logger.info("client chunking: %d calls, %d policy requests (%d prefetched), %d blocking waits",
                            stats.calls, stats.requests, stats.prefetches, stats.blocking_waits)


def _env_key_order(vec: gym.vector.VectorEnv, obs: Mapping[str, Any]) -> List[str]:
    """The keys of the vector observation `obs` in the order the env returned them (`obs` has them sorted)."""
    declared = next((keys for keys in vec.get_attr("observation_keys") if keys), ())
    return [key for key in declared if key in obs] + [key for key in obs if key not in declared]


def _keys_dropped_by_vector_env(vec: gym.vector.VectorEnv, obs: Mapping[str, Any]) -> List[str]:
    """The keys of the env's first observation that the vector observation `obs` lacks: its observation_space does
    not declare them."""
    returned = next((keys for keys in vec.get_attr("observation_keys") if keys), ())
    return [key for key in returned if key not in obs]


def _row_info(infos: Mapping[str, Any], key: str, row: int) -> Any:
    if key not in infos:
        return None
    mask = infos.get(f"_{key}")
    if mask is not None and not mask[row]:
        return None
    return infos[key][row]


def run_rollout(policy: BasePolicy, config: RolloutConfig, progress: bool = True,
                on_episode: Optional[Callable[[EpisodeOutcome], None]] = None, episodes: Optional[Sequence[int]] = None) -> RolloutResult:
    """Roll `policy` out in `config.env_name` for exactly `config.n_episodes` episodes (or the listed `episodes`).

    The policy gets flat observations (`video.<camera>`, `state.<key>`, the language key) and returns flat
    `action.<key>` arrays, as a `--use-sim-policy-wrapper` server does: a PolicyClient of such a server, or a local
    policy that takes the flat form (wrapped in Gr00tSimPolicyWrapper, or with strict=False). A server that serves
    another embodiment than the env's, or a replay the plan cannot follow (check_replay_horizon), is refused before
    any episode.
    """
    check_policy(policy)
    check_rollout_config(config)
    check_on_episode(on_episode)
    config = without_unkept_env_timeout(config)  # envs in this process keep no default timeout
    episodes = None if episodes is None else list(episodes)  # read once: a generator was used up by the replay check
    served = policy_record(policy)
    check_serves_env_embodiments(served, [config.env_name])
    check_replay_horizon(served, config, episodes)
    return RolloutRunner(policy, config, progress=progress, on_episode=on_episode, episodes=episodes).run()
