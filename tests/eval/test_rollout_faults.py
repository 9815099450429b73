"""Rollouts while the policy side goes wrong: a replay server restarted mid-episode, errored episodes in the Python
API's numbers, a server answering with the wrong batch size.

The replay tests serve a dataset_factory dataset (no cameras) with a real ReplayPolicy behind the sim wrapper in a
real PolicyServer. The probe env knows the recording it must receive (from the seed the server reports): an episode
succeeds iff every action it executed is the recorded one, so replaying anything else fails it.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from dataset_factory import expected_actions, make_dataset
from gr00t_client import BasePolicy, EmbodimentTag, ModalityConfig, PolicyClient
from gr00t_eval.metrics import rollout_aggregates
from gr00t_eval.rollout import PolicyRowCursor, RolloutConfig, register_env_prefix, run_rollout
from serving import RestartableServer

LENGTHS = (7, 10, 5, 8)  # recorded episode lengths, which the probe's episodes last; recorded seeds are 100 + episode
CHUNK = 2  # n_action_steps and the server's execution horizon
HORIZON = 4  # the action horizon


class ReplayProbeEnv(gym.Env):
    """Episode e (seed 100 + e) lasts LENGTHS[e] steps and succeeds iff step t got recorded row t.

    `on_step` (module level, sync vectorisation only) is called after every step with the steps taken so far.
    """

    on_step = None
    steps_taken = 0

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "state.arm": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "state.gripper": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        })
        self.action_space = gym.spaces.Dict({
            "action.arm": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "action.gripper": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        })

    def _obs(self):
        return {"state.arm": np.zeros(3, np.float32), "state.gripper": np.zeros(1, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = int(seed) - 100
        self.recorded = expected_actions(self.episode, LENGTHS[self.episode])
        self.t, self.all_matched = 0, True
        return self._obs(), {}

    def step(self, action):
        row = self.t
        for key in ("arm", "gripper"):
            self.all_matched &= bool(np.allclose(action[f"action.{key}"], self.recorded[key][row]))
        self.t += 1
        ReplayProbeEnv.steps_taken += 1
        if ReplayProbeEnv.on_step is not None:
            ReplayProbeEnv.on_step(ReplayProbeEnv.steps_taken)
        done = self.t >= LENGTHS[self.episode]
        return self._obs(), float(self.all_matched), done, False, {"success": done and self.all_matched}


register_env_prefix("replaycheck", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: ReplayProbeEnv())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("replay_faults") / "ds", lengths=LENGTHS, cameras=())


def replay_policy(dataset, execution_horizon=CHUNK, naming_its_episodes=True):
    """`naming_its_episodes` False: its identity names no episode count (an older server's), so a plan past its
    recording is not refused up front and each episode past it errors at its reset."""
    from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy

    class ReplayNamingNoEpisodes(ReplayPolicy):
        def identity(self):
            return {k: v for k, v in super().identity().items() if k != "episodes"}

    configs = {"state": ModalityConfig([0], ["arm", "gripper"]), "action": ModalityConfig(list(range(HORIZON)), ["arm", "gripper"])}
    replay_class = ReplayPolicy if naming_its_episodes else ReplayNamingNoEpisodes
    return Gr00tSimPolicyWrapper(replay_class(dataset, configs, execution_horizon=execution_horizon))


@pytest.fixture
def replay_server(dataset):
    server = RestartableServer(lambda: replay_policy(dataset))
    ReplayProbeEnv.steps_taken, ReplayProbeEnv.on_step = 0, None
    yield server
    ReplayProbeEnv.on_step = None
    server.stop()


def restart_after(server, steps):
    """Restart `server` once, right after the envs have taken `steps` steps in all (between two requests)."""
    def on_step(taken):
        if taken == steps:
            server.restart(reconnecting=1)
    ReplayProbeEnv.on_step = on_step


def replay(server, n_episodes=len(LENGTHS), episodes=None, **overrides):
    settings = dict(n_episodes=n_episodes, n_envs=1, n_action_steps=CHUNK, max_episode_steps=50, vectorization="sync",
                    seed=100)  # the seeds dataset_factory records, for policies that report none
    settings.update(overrides)
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        return run_rollout(client, RolloutConfig(env_name="replaycheck/any", **settings), progress=False,
                           episodes=episodes)


class ConstantPushPolicy(BasePolicy):
    """A stateless model: the same chunk for every row, and no position in its info."""

    def __init__(self, rows=None):
        super().__init__(strict=False)
        self.rows = rows

    def get_modality_config(self):
        return {"state": ModalityConfig([0], ["arm", "gripper"]), "action": ModalityConfig(list(range(HORIZON)), ["arm", "gripper"])}

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        rows = self.rows or len(observation["state.arm"])
        return {"action.arm": np.zeros((rows, HORIZON, 3), np.float32), "action.gripper": np.zeros((rows, HORIZON, 1), np.float32)}, {}


# -- a replay server restarted mid-rollout ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["off", "sync"])
def test_an_undisturbed_replay_succeeds_everywhere_even_past_its_recordings_end(replay_server, mode):
    # Two rows: a row past its recording's end is held at its last step when the other row restarts; that clamped
    # position is where the policy should be, not a lost one.
    result = replay(replay_server, n_envs=2, client_chunking=mode)
    assert [(o.error, o.success) for o in result.outcomes] == [(None, True)] * len(LENGTHS)


@pytest.fixture(params=["marked", "unmarked"])
def session_mark(request, monkeypatch):
    """"marked": the restarted server refuses the client's session it no longer knows (our client's session_continues
    mark). "unmarked": a server or client without the mark (an older version), which serves the session afresh: the
    rollout's own check of the position the replay reports must catch it."""
    if request.param == "unmarked":
        from gr00t_server.serving import loop

        monkeypatch.setattr(loop, "continues_session", lambda envelope: False)
    return request.param


SERVER_REFUSAL = "was dropped by the server (this server no longer knows it"


@pytest.mark.parametrize("mode", ["off", "sync"])
def test_a_replay_server_restarted_mid_episode_errors_that_episode_instead_of_failing_it(replay_server, mode, session_mark):
    # Episode 0 takes 7 steps; the server restarts after episode 1's 4th step and would replay episode 0 from step 0.
    restart_after(replay_server, LENGTHS[0] + 4)
    result = replay(replay_server, client_chunking=mode)
    assert replay_server.restarts == 1
    assert [o.success for o in result.outcomes if o.episode_index != 1] == [True] * (len(LENGTHS) - 1)
    error = result.outcomes[1].error
    if session_mark == "marked":
        assert error is not None and SERVER_REFUSAL in error and "the server restarted" in error
    else:
        assert error is not None and "policy position lost" in error
        assert "reports episode 0 step 0" in error and "expected episode 1 step 4" in error and "restarted" in error
    assert result.success_rate == 1.0 and result.n_errors == 1


def test_every_row_of_a_batch_the_restarted_server_no_longer_replays_errors(replay_server, session_mark):
    # Rows 0 and 1 run episodes 0 and 1; after 3 requests (12 steps in all) both are at step 6 when the server restarts.
    restart_after(replay_server, 12)
    result = replay(replay_server, n_envs=2)
    assert [o.error is not None for o in result.outcomes] == [True, True, False, False]
    if session_mark == "marked":
        assert all(SERVER_REFUSAL in o.error for o in result.outcomes[:2])
    else:
        assert "env row 0, expected episode 0 step 6" in result.outcomes[0].error
        assert "reports episode 0 step 0 for env row 1, expected episode 1 step 6" in result.outcomes[1].error
    assert [o.success for o in result.outcomes[2:]] == [True, True]  # the reset after the restart set the new server right


def test_async_chunking_with_a_replay_server_is_refused_before_any_episode(replay_server):
    # Prefetched chunks are lined up with the env step they were asked at, a replay serves the steps after the ones it
    # sent: the envs would run recorded steps out of order and fail plausibly (a wrong success rate, exit 0). Each
    # episode then errored (from Python and batch jobs, where the CLI refused it at once); the replay's identity
    # says it replays, so run_rollout refuses it before any episode, naming the modes that work.
    ReplayProbeEnv.steps_taken = 0
    with pytest.raises(ValueError, match=r"cannot serve --client-chunking async.*use --client-chunking off or sync$"):
        replay(replay_server, n_envs=2, client_chunking="async")
    assert ReplayProbeEnv.steps_taken == 0


def test_a_replay_server_advancing_other_than_n_action_steps_is_refused_before_any_episode(dataset, tmp_path):
    # --execution-horizon other than --n-action-steps: the replay advances its own count per call while the envs run
    # fewer steps of each chunk, so it drifted and the episodes failed plausibly (a warning only). Each episode then
    # errored at its first request; run_rollout, run_suite and batch jobs now refuse it before any episode, saying
    # which setting to change.
    from gr00t_eval.batch import Job, PolicyServerAddress, connect, run_batch
    from gr00t_eval.shard import run_suite

    server = RestartableServer(lambda: replay_policy(dataset, execution_horizon=HORIZON))
    refusal = (rf"advances {HORIZON} steps per call, but the envs execute n_action_steps=2 of each chunk.*"
               rf"serve it with --execution-horizon 2 \(if its action chunks hold that many\), or run with "
               rf"--n-action-steps {HORIZON}$")
    config = dict(n_episodes=2, n_envs=1, n_action_steps=CHUNK, max_episode_steps=50, vectorization="sync", seed=100)
    ReplayProbeEnv.steps_taken = 0
    try:
        with pytest.raises(ValueError, match=refusal):
            replay(server, n_envs=2)
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, pytest.raises(ValueError, match=refusal):
            run_suite(client, "replaycheck/any", RolloutConfig(env_name="", **config))
        job = Job("drift", "replaycheck/any", PolicyServerAddress("127.0.0.1", server.port), config)
        record = run_batch([job], tmp_path / "batch_results.json", policy_factory=connect)["jobs"][0]
    finally:
        server.stop()
    assert record["status"] == "failed" and f"advances {HORIZON} steps per call" in record["reason"]
    assert ReplayProbeEnv.steps_taken == 0


@pytest.mark.parametrize("flags, refusal", [
    (["--n-action-steps", str(CHUNK)], f"advances {HORIZON} steps per call, but the envs execute n_action_steps={CHUNK}"),
    (["--n-action-steps", str(HORIZON), "--client-chunking", "async"], "cannot serve --client-chunking async"),
], ids=["n-action-steps", "async"])
def test_the_cli_refuses_a_plan_the_replay_server_cannot_follow_before_any_episode(dataset, tmp_path, capsys, flags,
                                                                                     refusal):
    # Every episode errored at its first request, the run scored nothing, and its advice (--n-action-steps N, or
    # --resume) was refused: the folder held the failed run. The server's identity says it replays, and by how much.
    from gr00t_eval.cli import main

    server = RestartableServer(lambda: replay_policy(dataset, execution_horizon=HORIZON))
    ReplayProbeEnv.steps_taken = 0
    command = ["rollout", "--env-name", "replaycheck/any", "--n-episodes", "2", "--n-envs", "1", "--seed", "100",
               "--vectorization", "sync", "--max-episode-steps", "50", "--no-video", "--policy-client-port",
               str(server.port), "--output-dir", str(tmp_path / "out")]
    try:
        assert main([*command, *flags]) == 2
        err = capsys.readouterr().err
        assert "the policy server cannot run this rollout: " in err and refusal in err, err
        assert ReplayProbeEnv.steps_taken == 0 and not (tmp_path / "out" / "run.json").exists()
        assert main([*command, "--n-action-steps", str(HORIZON)]) == 0  # the corrected command, same folder
    finally:
        server.stop()


def refused_past_the_recording(replay_server, *flags):
    """Run the CLI with a plan past the 4 recorded episodes, which the server's identity refuses before any episode."""
    from gr00t_eval.cli import main

    return main(["rollout", "--env-name", "replaycheck/any", "--n-episodes", str(len(LENGTHS) + 6), "--n-envs", "1",
                 "--n-action-steps", str(CHUNK), "--seed", "100", "--vectorization", "sync", "--max-episode-steps", "50",
                 "--no-video", "--policy-client-port", str(replay_server.port), *flags])


def test_a_refused_rollout_without_output_dir_leaves_no_folder_it_made(replay_server, tmp_path, monkeypatch, capsys):
    # Each refused try left an empty dated folder (and the date folder and base it made) under the default base.
    from gr00t_eval import rollout_output

    monkeypatch.setattr(rollout_output, "DEFAULT_ROLLOUT_BASE", str(tmp_path / "made" / "base"))
    assert refused_past_the_recording(replay_server) == 2
    assert "replays a recording of 4 episodes" in capsys.readouterr().err
    assert not (tmp_path / "made").exists()


def test_a_refused_rollout_keeps_the_folders_that_were_there_before(replay_server, tmp_path, monkeypatch):
    from gr00t_eval import rollout_output

    base, named = tmp_path / "base", tmp_path / "named"
    base.mkdir()
    named.mkdir()
    monkeypatch.setattr(rollout_output, "DEFAULT_ROLLOUT_BASE", str(base))
    assert refused_past_the_recording(replay_server) == 2
    assert refused_past_the_recording(replay_server, "--output-dir", str(named)) == 2
    assert base.is_dir() and list(base.iterdir()) == []  # its dated folder and date folder gone, the base kept
    assert named.is_dir() and not (named / "run.json").exists()


def test_evaluation_md_says_async_against_a_replay_server_is_refused_before_any_episode():
    # It said so under "Per-row resets" and, under client-side chunking, that every episode errors at its first request.
    text = " ".join((Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text(encoding="utf-8").split())
    assert "with `async` every episode errors at its first request" not in text
    assert "`async` against a gr00t-server replay is refused before any episode (exit 2" in text


@pytest.mark.parametrize("deltas", [list(range(1, HORIZON + 1)), list(range(0, 2 * HORIZON, 2))], ids=["shifted", "strided"])
def test_action_delta_indices_other_than_each_next_step_are_refused_before_any_episode(dataset, deltas):
    # Row j of a chunk runs as the j-th env step after the query: a replay served with action deltas 1..H or a stride
    # of 2 executed other recorded steps than it replayed and still reported 100 % (open-loop refused the same server).
    from gr00t_server.policies import Gr00tSimPolicyWrapper, ReplayPolicy

    class ReportedDeltasReplay(ReplayPolicy):  # a replay itself refuses such deltas: a policy that only reports them
        def get_modality_config(self):
            return {**super().get_modality_config(), "action": ModalityConfig(deltas, ["arm", "gripper"])}

    configs = {"state": ModalityConfig([0], ["arm", "gripper"]),
               "action": ModalityConfig(list(range(HORIZON)), ["arm", "gripper"])}
    server = RestartableServer(
        lambda: Gr00tSimPolicyWrapper(ReportedDeltasReplay(dataset, configs, execution_horizon=CHUNK)))
    ReplayProbeEnv.steps_taken = 0
    try:
        with pytest.raises(ValueError) as refused:
            replay(server)
    finally:
        server.stop()
    assert str(refused.value).startswith(f"the policy's action delta_indices are {deltas[:8] + ['...'] if len(deltas) > 8 else deltas}; "
                                         f"this needs 0..{HORIZON - 1} (one action per step from the query on), or the "
                                         "rollout would execute each action at another step than it was predicted for")
    assert ReplayProbeEnv.steps_taken == 0


def test_a_lost_position_noted_by_a_prefetch_is_forgotten_only_for_rows_that_restart():
    # An async prefetch's reply can be checked while the envs step; rows restarted before the runner looks have left
    # the episode it was about, the others still have that chunk to execute.
    cursor = PolicyRowCursor(3, n_action_steps=1)
    cursor.commit({0: 4, 1: 5, 2: 6})
    cursor.check_reply({"episode_index": [0, 0, 6], "current_step": [0, 0, 0], "execution_horizon": 8})
    cursor.commit({0: 7})
    assert list(cursor.take_position_errors([0, 1, 2])) == [1]
    assert cursor.take_position_errors([0, 1, 2]) == {}


def test_a_restarted_server_of_a_policy_that_reports_no_position_changes_nothing():
    server = RestartableServer(ConstantPushPolicy)
    ReplayProbeEnv.steps_taken = 0
    restart_after(server, 4)
    try:
        result = replay(server, n_episodes=2)
    finally:
        ReplayProbeEnv.on_step = None
        server.stop()
    assert server.restarts == 1
    assert [(o.error, o.success) for o in result.outcomes] == [(None, False), (None, False)]


# -- the Python API's numbers -------------------------------------------------------------------------------

@pytest.fixture
def older_replay_server(dataset):
    server = RestartableServer(lambda: replay_policy(dataset, naming_its_episodes=False))
    ReplayProbeEnv.steps_taken, ReplayProbeEnv.on_step = 0, None
    yield server
    server.stop()


def test_the_api_success_rate_leaves_errored_episodes_out_like_results_json(older_replay_server):
    # A fifth episode has no recording: the server refuses its reset, so it errors (a server that names its episode
    # count is refused such a plan before any episode: test_shard_replay_alignment).
    result = replay(older_replay_server, n_episodes=len(LENGTHS) + 1)
    assert result.success_rate == 1.0 == rollout_aggregates(result.outcomes, result.eval_s)["pc_success"] / 100
    assert result.successes == [True] * len(LENGTHS) and [o.episode_index for o in result.finished] == list(range(len(LENGTHS)))
    assert result.errored_episodes == [len(LENGTHS)] and result.n_errors == 1


def test_the_api_success_rate_is_none_when_every_episode_errored(older_replay_server):
    result = replay(older_replay_server, n_episodes=2, first_episode=len(LENGTHS))
    assert result.success_rate is None and result.successes == [] and result.n_errors == 2


def test_listed_episodes_past_a_replays_recording_are_refused_before_any_episode(replay_server):
    # run_rollout(episodes=[1, 7]) of 4 recorded: 7 errored at its reset, after 1 ran (only n_episodes was checked)
    with pytest.raises(ValueError, match=r"replays a recording of 4 episodes \(0 \.\. 3\).*episodes= lists \[7\], past "
                                         r"the recording.*list episodes below 4"):
        replay(replay_server, n_episodes=2, episodes=[1, 7])
    assert ReplayProbeEnv.steps_taken == 0


def test_listed_episodes_within_a_replays_recording_run_whatever_n_episodes_says(replay_server):
    # n_episodes=10 with episodes=[0, 1] was refused as past the recording of 4, though both are recorded
    result = replay(replay_server, n_episodes=10, episodes=[0, 1])
    assert [o.episode_index for o in result.finished] == [0, 1] and result.n_errors == 0
    # episodes as a generator: the replay check used it up, and the run ran no episode, reporting nothing wrong
    result = replay(replay_server, n_episodes=2, episodes=(episode for episode in [0, 1]))
    assert [o.episode_index for o in result.finished] == [0, 1] and result.n_errors == 0


# -- a server answering with the wrong batch size -----------------------------------------------------------

def test_a_chunk_with_the_wrong_batch_size_errors_the_episodes_naming_key_and_shapes():
    server = RestartableServer(lambda: ConstantPushPolicy(rows=1))
    try:
        result = replay(server, n_episodes=2, n_envs=2)
    finally:
        server.stop()
    assert result.n_errors == 2
    for outcome in result.outcomes:
        assert "action.arm has shape (1, 4, 3); expected (2, 4, 3), one row per env" in outcome.error


def test_replay_drift_advice_names_an_execution_horizon_only_where_the_chunk_holds_it():
    # A replay of 4-action chunks was advised "serve it with --execution-horizon 8", which the server refuses.
    from gr00t_eval.rollout.replay_plan import replay_drift_error

    assert "serve it with" not in replay_drift_error(4, 8, chunk=4)
    assert replay_drift_error(4, 2, chunk=4).endswith("serve it with --execution-horizon 2, or run with --n-action-steps 4")
