"""Rollout with client chunking: envs stepped one step at a time through ActionChunker, scored like the default mode."""

from __future__ import annotations

import json
import os
import signal
import string
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import policy_server, run_cli
from gr00t_client import ActionChunker, BasePolicy, ModalityConfig, PolicyClient
from gr00t_eval import cli, scale_cli
from gr00t_eval.rollout import RolloutConfig, RolloutRunner, register_env_prefix

ENV_NAME = "chunktrack/any"
HORIZON = 4
N_TARGETS = 5
MAX_EPISODE_STEPS = 5


class TrackEnv(gym.Env):
    """At step t the action must equal the target (seed + t) % 5, shown in state.target; an episode lasts 3 + seed % 4 steps.

    It succeeds iff every action hit its target, so a step taken from another row, a stale chunk or a misaligned
    merge fails the episode. Reward 1 per hit. With max_episode_steps=5, seeds with seed % 4 == 3 are cut unscored.
    """

    def __init__(self, **_):
        self.observation_space = gym.spaces.Dict({
            "video.cam": gym.spaces.Box(0, 255, (2, 2, 3), np.uint8),
            "state.target": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "annotation.human.action.task_description": gym.spaces.Text(64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.track": gym.spaces.Box(-10, 10, (1,), np.float32)})

    def _target(self):
        return (self.seed_value + self.t) % N_TARGETS

    def _obs(self):
        return {"video.cam": np.full((2, 2, 3), 40 * self.t, np.uint8), "state.target": np.array([self._target()], np.float32),
                "annotation.human.action.task_description": "track the target"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_value = 0 if seed is None else int(seed)
        self.length, self.t, self.all_hit = 3 + self.seed_value % 4, 0, True
        return self._obs(), {}

    def step(self, action):
        hit = abs(float(np.asarray(action["action.track"]).reshape(-1)[0]) - self._target()) < 1e-3
        self.all_hit = self.all_hit and hit
        self.t += 1
        done = self.t >= self.length
        return self._obs(), float(hit), done, False, {"success": done and self.all_hit}


register_env_prefix("chunktrack", "new_embodiment", adapter=lambda task, **kwargs: TrackEnv(**kwargs))


def expected_outcome(seed):
    """(success, length, sum_reward) of a policy that always hits."""
    length = 3 + seed % 4
    return length <= MAX_EPISODE_STEPS, min(length, MAX_EPISODE_STEPS), float(min(length, MAX_EPISODE_STEPS))


class TrackingPolicy(BasePolicy):
    """Deterministic: plans the next HORIZON targets of each row from its state.target; records its resets."""

    def __init__(self):
        super().__init__(strict=False)
        self.resets = []

    def get_modality_config(self):
        return {
            "video": ModalityConfig([0], ["cam"]),
            "state": ModalityConfig([0], ["target"]),
            "action": ModalityConfig(list(range(HORIZON)), ["track"]),
            "language": ModalityConfig([0], ["annotation.human.action.task_description"]),
        }

    def reset(self, options=None):
        self.resets.append(options)
        return {}

    def _get_action(self, observation, options=None):
        target = np.asarray(observation["state.target"])[:, -1, 0]
        chunk = (target[:, None] + np.arange(HORIZON)[None, :]) % N_TARGETS
        return {"action.track": chunk[:, :, None].astype(np.float32)}, {}


@pytest.fixture
def served():
    """(server-side policy, client) for a TrackingPolicy behind a real PolicyServer."""
    policy = TrackingPolicy()
    with policy_server(policy) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            yield policy, client


def rollout(client, **kwargs):
    """(result, runner) of a small TrackEnv rollout; rows end mid-chunk since lengths are 3..6 and chunks 3 steps."""
    settings = dict(n_episodes=7, n_envs=3, n_action_steps=3, max_episode_steps=MAX_EPISODE_STEPS, seed=0,
                    vectorization="sync")
    settings.update(kwargs)
    runner = RolloutRunner(client, RolloutConfig(env_name=ENV_NAME, **settings), progress=False)
    return runner.run(), runner


def scored(result):
    """What must not depend on the chunking mode: each episode's outcome (not the worker row or video path)."""
    return [{k: v for k, v in o.to_json_dict().items() if k not in ("env_index", "video_path")} for o in result.outcomes]


@pytest.mark.parametrize("mode, merge", [("sync", "newest"), ("async", "newest"), ("async", "weighted"), ("async", "average")])
def test_client_chunking_scores_the_same_episodes_as_the_default_mode(served, mode, merge):
    _, client = served
    default, _ = rollout(client)
    chunked, _ = rollout(client, client_chunking=mode, chunk_merge=merge)
    assert [(o.success, o.length, o.sum_reward) for o in default.outcomes] == [expected_outcome(s) for s in range(7)]
    assert scored(chunked) == scored(default)


class HoldingPolicy(TrackingPolicy):
    """Deterministic, from the observation only, but no plan: every step of its chunk repeats the current target."""

    def _get_action(self, observation, options=None):
        target = np.asarray(observation["state.target"])[:, -1, 0]
        return {"action.track": np.repeat(target[:, None, None], HORIZON, axis=1).astype(np.float32)}, {}


def test_sync_chunking_scores_the_default_modes_episodes_with_one_env_only():
    # With more envs a row's chunk is re-planned whenever another row starts an episode or uses its chunk up.
    with policy_server(HoldingPolicy()) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            default = scored(rollout(client, n_envs=3)[0])
            assert scored(rollout(client, n_envs=1)[0]) == default
            assert scored(rollout(client, n_envs=1, client_chunking="sync")[0]) == default
            assert scored(rollout(client, n_envs=3, client_chunking="sync")[0]) != default


def test_evaluation_md_says_when_the_chunking_modes_score_the_same_episodes():
    text = " ".join((Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text(encoding="utf-8").split())
    assert "scores the same episodes in all three modes" not in text
    assert "the same episodes with the default mode at any `--n-envs` and with `sync` at `--n-envs 1`" in text
    assert "`merge` refuses their shards when it differs" in text


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rows_starting_an_episode_drop_their_buffered_steps_and_reset_the_policy_for_that_row_only(served, monkeypatch, mode):
    policy, client = served
    chunker_resets = []
    original_reset = ActionChunker.reset

    def recording_reset(self, env_ids=None, options=None, **keywords):
        chunker_resets.append(None if env_ids is None else list(env_ids))
        return original_reset(self, env_ids, options, **keywords)

    monkeypatch.setattr(ActionChunker, "reset", recording_reset)
    rollout(client, client_chunking=mode)
    assert policy.resets[0] == {"episode_index": [0, 1, 2], "step_index": [0, 0, 0]}
    restarted = []
    for before, after in zip(policy.resets, policy.resets[1:]):
        rows = [r for r in range(3) if after["episode_index"][r] != before["episode_index"][r]]
        assert rows and all(after["step_index"][r] == 0 for r in rows)
        # Rows still running repeat their place: the env steps they executed in their episode so far.
        assert all(1 <= after["step_index"][r] < MAX_EPISODE_STEPS for r in range(3) if r not in rows)
        restarted.append(rows)
    assert chunker_resets == restarted  # the first start has nothing buffered; then exactly the restarted rows
    started = [e for reset in policy.resets for e in reset["episode_index"]]
    assert sorted(set(started)) == list(range(7))


def test_async_chunking_runs_on_prefetched_chunks(served):
    _, client = served
    _, runner = rollout(client, client_chunking="async")
    stats = runner.chunker.stats
    assert stats.prefetches > 0 and stats.merged_envs > 0
    assert stats.blocking_waits < stats.calls  # most steps were served from the buffer without waiting


def test_sync_chunking_asks_the_policy_once_per_executed_chunk(served):
    _, client = served
    _, runner = rollout(client, client_chunking="sync")
    stats = runner.chunker.stats
    assert stats.prefetches == 0 and stats.requests == stats.blocking_waits
    assert stats.requests < stats.calls


class StallingTrackingPolicy(TrackingPolicy):
    """TrackingPolicy whose calls from `stall_from` on hang until `release` is set (a server stalled mid-run)."""

    def __init__(self, stall_from):
        super().__init__()
        self.stall_from, self.calls = stall_from, 0
        self.stalling, self.release = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls >= self.stall_from:
            self.stalling.set()
            self.release.wait(30)
        return super()._get_action(observation, options)


def test_ctrl_c_during_an_async_rollout_waiting_on_a_stalled_prefetch_returns_at_once():
    policy = StallingTrackingPolicy(stall_from=2)  # call 1 is the first chunk, call 2 its prefetch
    interrupted = []

    def ctrl_c_once_the_robot_waits():
        if policy.stalling.wait(10):
            time.sleep(0.5)  # the robot runs out of its chunk and waits on the prefetch
            interrupted.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    try:
        with policy_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            threading.Thread(target=ctrl_c_once_the_robot_waits, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                rollout(client, client_chunking="async", n_episodes=2, n_envs=1)
            returned_after = time.monotonic() - interrupted[0]
            policy.release.set()
    finally:
        policy.release.set()
    assert returned_after < 1.0, f"the rollout waited {returned_after:.1f} s for the stalled prefetch after Ctrl-C"


def test_a_server_stopping_during_an_async_prefetch_stops_the_run_leaving_the_running_episodes_not_run():
    """The chunker drops a prefetch the server did not run as it stops (its buffered steps flow): the rollout still
    stops there, its running episodes left for --resume, not errored after a timeout of the next request."""
    from gr00t_eval.rollout.liveness import PolicyServerUnreachableError
    from serving import stopped_while_it_hangs

    policy = StallingTrackingPolicy(stall_from=2)  # call 1 is the first chunk, call 2 its prefetch (of 3 steps)
    policy.hanging = policy.stalling  # the server stops while the prefetch runs
    scored = []
    with stopped_while_it_hangs(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        started = time.monotonic()
        with pytest.raises(PolicyServerUnreachableError, match="shutting down"):
            RolloutRunner(client, RolloutConfig(env_name=ENV_NAME, n_episodes=7, n_envs=1, n_action_steps=3,
                                                max_episode_steps=MAX_EPISODE_STEPS, seed=2, vectorization="sync",
                                                client_chunking="async"),
                          progress=False, on_episode=scored.append).run()  # seed 2: an episode of 5 steps
    assert time.monotonic() - started < 4.0 and scored == []


class FailingOnceTrackingPolicy(TrackingPolicy):
    """Raises on its second get_action call (with async chunking: the first prefetch)."""

    calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("server fell over")
        return super()._get_action(observation, options)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_policy_error_under_chunking_fails_the_running_episodes_and_the_run_goes_on(mode):
    result, _ = rollout(FailingOnceTrackingPolicy(), client_chunking=mode)
    assert [o.episode_index for o in result.outcomes] == list(range(7))
    failed = [o for o in result.outcomes if o.failure_reason]
    assert 1 <= len(failed) <= 3 and all("server fell over" in o.failure_reason for o in failed)  # the rows running then
    # Every other episode, including those started on a failed row's fresh buffer, scores as a healthy run would.
    assert all((o.success, o.length) == expected_outcome(o.seed)[:2] for o in result.outcomes if not o.failure_reason)
    assert result.outcomes[-1].failure_reason is None


class ShortChunkTrackingPolicy(TrackingPolicy):
    """Declares an action horizon of HORIZON steps and returns 2."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        return {key: value[:, :2] for key, value in action.items()}, info


@pytest.mark.parametrize("mode", ["off", "sync", "async"])
def test_chunks_shorter_than_n_action_steps_error_the_episodes_in_every_mode(mode):
    """Chunking "off" errored them; sync and async took min(chunk, n_action_steps) and asked the policy every 2 steps
    while the run recorded n_action_steps 3: 100% success of another setup than the one written in results.json."""
    result, _ = rollout(ShortChunkTrackingPolicy(), client_chunking=mode)
    assert len(result.outcomes) == 7 and all("n_action_steps=3" in o.failure_reason for o in result.outcomes), \
        [o.failure_reason for o in result.outcomes]


def test_chunked_rollouts_write_the_same_videos(served, tmp_path):
    _, client = served
    rollout(client, n_episodes=3, video_dir=str(tmp_path / "off"))
    result, _ = rollout(client, n_episodes=3, video_dir=str(tmp_path / "sync"), client_chunking="sync")
    names = sorted(p.name for p in (tmp_path / "sync").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "off").iterdir())
    assert names == ["episode_0000_success.mp4", "episode_0001_success.mp4", "episode_0002_success.mp4"]
    assert result.outcomes[0].video_path == str(tmp_path / "sync" / "episode_0000_success.mp4")


def test_unknown_chunking_mode_or_merge_rule_is_refused():
    with pytest.raises(ValueError, match="client_chunking"):
        RolloutRunner(TrackingPolicy(), RolloutConfig(env_name=ENV_NAME, client_chunking="later"))
    with pytest.raises(ValueError, match="chunk_merge"):
        RolloutRunner(TrackingPolicy(), RolloutConfig(env_name=ENV_NAME, chunk_merge="median"))


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_a_merge_rule_without_async_client_chunking_is_refused_before_any_episode(mode):
    # ActionChunker refuses a merge rule it would never apply: with sync the run failed at its chunker instead
    with pytest.raises(ValueError, match=f"chunk_merge 'weighted' needs client_chunking='async' .*, got '{mode}'"):
        RolloutRunner(TrackingPolicy(), RolloutConfig(env_name=ENV_NAME, client_chunking=mode, chunk_merge="weighted"))


@pytest.mark.parametrize("flags", [["--client-chunking", "async", "--chunk-merge", "weighted"],
                                   ["--client_chunking", "async", "--chunk_merge", "weighted"]])
def test_chunking_flags_in_both_spellings_reach_the_rollout_config(flags):
    args = cli.build_parser().parse_args(["rollout", "--env-name", ENV_NAME, *flags])
    config = scale_cli.rollout_config_from_args(args, seed=0)
    assert (config.client_chunking, config.chunk_merge) == ("async", "weighted")
    default = scale_cli.rollout_config_from_args(cli.build_parser().parse_args(["rollout", "--env-name", ENV_NAME]), seed=0)
    assert (default.client_chunking, default.chunk_merge) == ("off", "newest")


def test_the_rollout_command_runs_with_client_chunking(tmp_path):
    with policy_server(TrackingPolicy()) as server:
        code = run_cli(["rollout", "--env-name", ENV_NAME, "--n-episodes", "4", "--n-envs", "2", "--n-action-steps", "3",
                        "--max-episode-steps", str(MAX_EPISODE_STEPS), "--seed", "0", "--vectorization", "sync",
                        "--policy-client-port", str(server.port), "--no-video", "--output-dir", str(tmp_path),
                        "--client-chunking", "async", "--chunk-merge", "average"])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["client_chunking"] == "async" and results["config"]["chunk_merge"] == "average"
    assert [e["success"] for e in results["per_episode"]] == [expected_outcome(s)[0] for s in range(4)]


def test_rtc_with_async_chunking_sends_the_buffered_steps_and_scores_the_same(served):
    policy, client = served
    default, _ = rollout(client)
    chunked, runner = rollout(client, client_chunking="async", rtc_frozen_steps=1)
    assert scored(chunked) == scored(default)  # this policy ignores options["rtc"]; the episodes must not change
    assert runner.chunker.rtc_frozen_steps == 1 and runner.chunker.stats.prefetches > 0


def test_rtc_needs_async_chunking():
    with pytest.raises(ValueError, match="rtc_frozen_steps needs client_chunking='async'"):
        RolloutRunner(TrackingPolicy(), RolloutConfig(env_name=ENV_NAME, client_chunking="sync", rtc_frozen_steps=2))


class StepReportingPolicy(TrackingPolicy):
    """Reports each row's position as a replay server does (current_step before the call, then execution_horizon
    more), counting from the step_index of its resets: a policy that serves steps by its own count."""

    def __init__(self, execution_horizon):
        super().__init__()
        self.execution_horizon = execution_horizon
        self.steps = None

    def reset(self, options=None):
        self.steps = list(options["step_index"])
        return super().reset(options)

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        info = {"current_step": list(self.steps), "execution_horizon": self.execution_horizon}
        self.steps = [step + self.execution_horizon for step in self.steps]
        return action, info


def test_async_chunking_refuses_a_policy_that_serves_steps_by_its_own_count():
    """Async chunking asks mid-chunk and lines the reply up with that env step; a replay server answers with the steps
    after the last ones it sent, so the envs ran recorded steps out of order (a Meta-World expert replay scored 75 %
    instead of 100 %, exit 0). Every episode now errors with the reason, at its first request."""
    result, runner = rollout(StepReportingPolicy(execution_horizon=3), client_chunking="async")
    assert [o.episode_index for o in result.outcomes] == list(range(7))
    assert all(o.error and "cannot serve --client-chunking async" in o.error for o in result.outcomes)
    assert runner.chunker.stats.requests <= 7  # one refused request per episode: no env ran on a misaligned chunk


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_a_policy_that_serves_steps_by_its_own_count_still_runs_without_async_chunking(mode):
    result, _ = rollout(StepReportingPolicy(execution_horizon=3), client_chunking=mode)
    assert [(o.success, o.length, o.error) for o in result.outcomes] == [(*expected_outcome(s)[:2], None) for s in range(7)]


def _rollout_against(port, tmp_path, *flags):
    return run_cli(["rollout", "--env-name", ENV_NAME, "--n-episodes", "4", "--n-envs", "2", "--n-action-steps", "3",
                    "--max-episode-steps", str(MAX_EPISODE_STEPS), "--seed", "0", "--vectorization", "sync",
                    "--policy-client-port", str(port), "--no-video", "--output-dir", str(tmp_path), *flags])


def test_rtc_against_a_reference_server_is_warned_and_recorded_not_applied(tmp_path, caplog):
    from reference_peer import RefModalityConfig, ReferenceServer

    policy = TrackingPolicy()
    configs = {k: RefModalityConfig(v.to_json_dict()) for k, v in policy.get_modality_config().items()}
    handlers = {"get_action": policy.get_action, "reset": policy.reset, "get_modality_config": lambda: configs}
    with ReferenceServer(handlers) as server:
        code = _rollout_against(server.port, tmp_path, "--client-chunking", "async", "--rtc-frozen-steps", "1")
    assert code == 0
    for name in ("results.json", "run.json"):
        assert json.loads((tmp_path / name).read_text())["settings_not_applied"] == {"rtc_frozen_steps": 1}, name
    assert any("--rtc-frozen-steps 1" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_rtc_against_a_gr00t_server_whose_policy_does_not_read_it_is_warned_and_recorded_not_applied(tmp_path, caplog):
    # TrackingPolicy ignores options["rtc"] and its server says nothing of RTC (no "gr00t" kind, no "rtc" limit)
    with policy_server(TrackingPolicy()) as server:
        code = _rollout_against(server.port, tmp_path, "--client-chunking", "async", "--rtc-frozen-steps", "1")
    assert code == 0
    for name in ("results.json", "run.json"):
        assert json.loads((tmp_path / name).read_text())["settings_not_applied"] == {"rtc_frozen_steps": 1}, name
    assert any("--rtc-frozen-steps 1" in r.getMessage() and "'rtc': True" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_rtc_against_an_older_gr00t_server_reporting_no_policy_identity_is_warned_as_not_known_to_be_applied(
        tmp_path, caplog):
    # an older gr00t-server's Gr00tPolicy applies options["rtc"] and reports no policy_identity: the warning said the
    # server serves "a Gr00tPolicy, not a Gr00tPolicy", and the docs that such a server ignores the option
    with policy_server(TrackingPolicy()) as server:
        code = _rollout_against(server.port, tmp_path, "--client-chunking", "async", "--rtc-frozen-steps", "1")
    assert code == 0
    assert json.loads((tmp_path / "results.json").read_text())["settings_not_applied"] == {"rtc_frozen_steps": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--rtc-frozen-steps 1" in r.getMessage()]
    assert warned and "reports no policy_identity kind 'gr00t'" in warned[0] and "not a Gr00tPolicy" not in warned[0]
    assert "an older gr00t-server that reports no policy_identity may or may not apply it" in warned[0]


class RtcReadingPolicy(TrackingPolicy):
    """A TrackingPolicy that says, as a policy of one's own may, that it reads options["rtc"]."""

    def work_limits(self):
        return {"rtc": True}


def test_rtc_against_a_gr00t_server_whose_policy_reports_it_is_recorded_applied(tmp_path):
    with policy_server(RtcReadingPolicy()) as server:
        code = _rollout_against(server.port, tmp_path, "--client-chunking", "async", "--rtc-frozen-steps", "1")
    assert code == 0
    assert json.loads((tmp_path / "results.json").read_text())["settings_not_applied"] == {}
    assert "settings_not_applied" not in json.loads((tmp_path / "run.json").read_text())
