"""A hung simulator stops the rollout within --env-timeout, names the env and episode it held, leaves no worker
process behind, and the run resumes; before, `vec.step` waited for ever. Real subprocess vector envs and a real
loopback server."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from eval.scale_fixtures import ConstantPolicy, WalkToEnv, run_cli
from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout import RolloutConfig
from gr00t_eval.rollout.envs import register_env_prefix
from serving import running_server


class HangingWalkEnv(WalkToEnv):
    """WalkTo whose step (or reset) hangs for `hang_s` in the episode with seed 103, as a deadlocked renderer does."""

    def __init__(self, hang_in: str, hang_s: float = 3600):
        super().__init__(1.0)
        self.hang_in = hang_in
        self.hang_s = hang_s
        self.hangs = False

    def reset(self, *, seed=None, options=None):
        self.hangs = seed == 103
        if self.hangs and self.hang_in == "reset":
            time.sleep(self.hang_s)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.hangs and self.hang_in == "step":
            self.hangs = False  # once: an env waited for goes on after its hang
            time.sleep(self.hang_s)
        return super().step(action)


def rollout_argv(env_name, port, output_dir, *extra):
    return ["rollout", "--env-name", env_name, "--n-episodes", "6", "--n-envs", "2", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--seed", "100", "--no-video", "--policy-client-port", str(port),
            "--output-dir", str(output_dir), *extra]


def stopped_within_env_timeout(argv_for_port, capsys, reason, expected_code=2):
    """Run `gr00t-eval` with `argv_for_port(port)` against a loopback server and check that it stopped with
    `expected_code` (2: nothing ran; 1: a run that started) well within a hung env's 30 s, its error naming `reason`,
    and left no env worker (those still hanging killed)."""
    with running_server(ConstantPolicy()) as server:
        started = time.monotonic()
        code = main(argv_for_port(server.port))
        took = time.monotonic() - started
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert reason in err, err
    assert code == expected_code and took < 20, f"exit {code} after {took:.0f} s"
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hang_in", ["step", "reset"])
def test_a_hung_env_stops_the_run_naming_its_episode_and_leaves_no_worker(tmp_path, capsys, hang_in):
    register_env_prefix("hanging", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: HangingWalkEnv(task))
    with running_server(ConstantPolicy()) as server:
        code = run_cli(rollout_argv(f"hanging/{hang_in}", server.port, tmp_path / "run", "--env-timeout", "2",
                                    "--env-import", "eval.scale_fixtures"))
    out = capsys.readouterr().out
    assert code == 1
    assert f"(episode 3) did not finish a {hang_in} within 2 s (--env-timeout)" in out, out
    # the registration flags too: the resume failed with "unknown prefix" without them
    assert (f"continue with: gr00t-eval rollout --resume {tmp_path / 'run'} --env-import eval.scale_fixtures and the "
            "same server flags)") in out
    assert multiprocessing.active_children() == []  # the hung worker was stopped, not left sleeping
    scored = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert 3 not in [entry["episode_index"] for entry in scored]  # left to the resume, not scored a failure


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_envs", ["2", "0"])
def test_a_run_of_one_episode_keeps_its_env_in_a_worker_that_env_timeout_stops(tmp_path, capsys, n_envs):
    """The envs were cut to min(--n-envs, episodes left) = 1 (and --n-envs 0, auto, picked 1), which ran the env in this
    process: a resume with one episode left, a one-episode task or shard, or any auto run on 2 cores, waited on a hung
    env for ever (and an env's crash killed gr00t-eval). Its step was sent, so the run had started: exit 1, with
    results.json and the --resume line, not the exit 2 of a run that never ran."""
    register_env_prefix("lasthang", EmbodimentTag.NEW_EMBODIMENT,
                        lambda task, **kwargs: HangingWalkEnv("step", hang_s=30))
    stopped_within_env_timeout(
        lambda port: ["rollout", "--env-name", "lasthang/walk", "--n-episodes", "1", "--n-envs", n_envs,
                      "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "103", "--no-video",
                      "--env-timeout", "2", "--policy-client-port", str(port), "--output-dir", str(tmp_path / "run")],
        capsys, "env 0 (episode 0) did not finish a step within 2 s (--env-timeout)", expected_code=1)
    assert (tmp_path / "run" / "results.json").is_file()


class SlowToBuildWalkEnv(WalkToEnv):
    """WalkTo whose constructor hangs for 30 s in an env worker (a renderer's EGL set-up deadlock)."""

    def __init__(self):
        if multiprocessing.current_process().name != "MainProcess":
            time.sleep(30)
        super().__init__(1.0)


@pytest.mark.timeout(120)
def test_an_env_whose_construction_hangs_in_its_worker_stops_the_run_within_env_timeout(tmp_path, capsys):
    """gymnasium's AsyncVectorEnv waited on each worker's first answer without a timeout: --env-timeout did not
    cover a constructor that hung."""
    register_env_prefix("slowbuild", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: SlowToBuildWalkEnv())
    stopped_within_env_timeout(lambda port: rollout_argv("slowbuild/walk", port, tmp_path / "run", "--env-timeout", "2"),
                               capsys, "env 0, env 1 did not finish building within 2 s (--env-timeout)")


class BuildHangsEverywhereWalkEnv(WalkToEnv):
    """WalkTo whose constructor hangs for 30 s in whatever process builds it (a renderer's EGL set-up deadlock)."""

    def __init__(self):
        time.sleep(30)
        super().__init__(1.0)


@pytest.mark.timeout(120)
def test_an_env_whose_construction_hangs_in_this_process_too_stops_the_run_within_env_timeout(tmp_path, capsys):
    """gymnasium's AsyncVectorEnv builds env 0 once in this process, for its spaces, before any worker starts: a
    constructor that hung everywhere held the run there, with no limit."""
    register_env_prefix("buildhangs", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: BuildHangsEverywhereWalkEnv())
    stopped_within_env_timeout(lambda port: rollout_argv("buildhangs/walk", port, tmp_path / "run", "--env-timeout", "2"),
                               capsys, "env 0, env 1 did not finish building within 2 s (--env-timeout)")


class RefusesItsSettingsWalkEnv(WalkToEnv):
    """WalkTo whose constructor refuses a setting it does not take, as an env does an --env-kwarg it has no use for."""

    def __init__(self, **kwargs):
        raise TypeError(f"WalkToEnv.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")


@pytest.mark.timeout(120)
def test_an_env_constructor_error_in_a_worker_is_the_tasks_reason_not_a_crashed_worker(tmp_path, capsys):
    """Once no env was built in this process, an env's own error in its worker killed the worker: the task failed
    "an env worker process died (a simulator crash, or the process was killed)", the TypeError only in stderr."""
    register_env_prefix("refuses", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: RefusesItsSettingsWalkEnv(**kwargs))
    with running_server(ConstantPolicy()) as server:
        code = main(rollout_argv("refuses/walk", server.port, tmp_path / "run", "--env-kwarg", "bogus=1"))
    err = capsys.readouterr().err
    assert code == 2
    assert "task refuses/walk failed: TypeError: WalkToEnv.__init__() got an unexpected keyword argument 'bogus'" in err
    assert "env worker process died" not in err
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(120)
def test_a_run_stopped_by_a_hung_env_resumes_with_another_env_timeout(tmp_path, capsys):
    register_env_prefix("stalls", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: HangingWalkEnv("step"))
    with running_server(ConstantPolicy()) as server:
        assert run_cli(rollout_argv("stalls/walk", server.port, tmp_path / "run", "--env-timeout", "2")) == 1
        register_env_prefix("stalls", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: WalkToEnv(1.0))  # fixed
        code = run_cli(["rollout", "--resume", str(tmp_path / "run"), "--env-timeout", "30",
                        "--policy-client-port", str(server.port)])
    capsys.readouterr()
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted(entry["episode_index"] for entry in results["per_episode"]) == list(range(6))
    assert results["overall"]["n_errors"] == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert saved["env_timeout_s"] == 2.0  # the run file keeps the first attempt's settings


@pytest.mark.parametrize("value, message", [
    (0, "env_timeout_s must be seconds > 0, or None for no limit; got 0"),
    (1e10, "env_timeout_s must be at most 604800 seconds"),  # overflowed at the first env reset
])
def test_env_timeout_must_be_positive_and_at_most_a_week(value, message):
    from gr00t_eval.rollout.runner import RolloutRunner

    with pytest.raises(ValueError, match=message):
        RolloutRunner(ConstantPolicy(), RolloutConfig(env_name="walkto/fast", env_timeout_s=value))


def test_a_negative_env_timeout_flag_is_a_usage_error(tmp_path):
    from gr00t_eval.cli_errors import UsageError

    with pytest.raises(UsageError, match="--env-timeout must be seconds > 0, or 0 for no limit; got -1"):
        run_cli(rollout_argv("walkto/fast", 1, tmp_path / "run", "--env-timeout", "-1"))


class NoisyCameraEnv(WalkToEnv):
    """WalkTo that never reaches its goal, with a 256x256 camera of noise: each step takes microseconds, and an
    episode's video takes seconds to encode."""

    def __init__(self):
        super().__init__(0.0)
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "video.cam": gym.spaces.Box(0, 255, (256, 256, 3), np.uint8)})
        self.noise = np.random.default_rng(0)

    def _obs(self):
        return {**super()._obs(), "video.cam": self.noise.integers(0, 255, (256, 256, 3), dtype=np.uint8)}


@pytest.mark.timeout(120)
def test_writing_an_episodes_video_does_not_count_as_an_env_step_against_env_timeout(tmp_path, capsys):
    """The video was encoded inside the env step that ended the episode: a run of millisecond steps stopped as 'a hung
    simulator?' because the encode outlasted --env-timeout, while --no-video passed."""
    register_env_prefix("noisycam", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: NoisyCameraEnv())
    with running_server(ConstantPolicy()) as server:
        code = run_cli(["rollout", "--env-name", "noisycam/walk", "--n-episodes", "2", "--n-envs", "2",
                        "--vectorization", "async", "--n-action-steps", "4", "--max-episode-steps", "100", "--seed",
                        "0", "--env-timeout", "1", "--policy-client-port", str(server.port), "--output-dir",
                        str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["per_episode"]
    assert [row["error"] for row in rows] == [None, None]
    videos = tmp_path / "run" / "videos"
    assert [row["video_path"] for row in rows] == [str(videos / f"episode_000{i}_failure.mp4") for i in (0, 1)]
    assert sorted(path.name for path in videos.iterdir()) == ["episode_0000_failure.mp4", "episode_0001_failure.mp4"]


class StubbornHangingWalkEnv(HangingWalkEnv):
    """HangingWalkEnv whose worker, once hung, answers SIGTERM by carrying on (a simulator that handles the signal to
    clean up and stays in its hung step)."""

    def step(self, action):
        if self.hangs:
            import signal

            signal.signal(signal.SIGTERM, lambda *_: None)
        return super().step(action)


@pytest.mark.timeout(120)
def test_a_hung_env_whose_worker_survives_sigterm_still_stops_the_run(tmp_path, capsys):
    """gymnasium's close(terminate=True) joins the workers without a timeout: the run waited for ever after
    --env-timeout, printing nothing more and writing no results."""
    register_env_prefix("stubborn", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: StubbornHangingWalkEnv("step"))
    with running_server(ConstantPolicy()) as server:
        started = time.monotonic()
        code = run_cli(rollout_argv("stubborn/walk", server.port, tmp_path / "run", "--env-timeout", "2"))
        took = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 1 and took < 60, f"exit {code} after {took:.0f} s"
    assert "(episode 3) did not finish a step within 2 s (--env-timeout)" in out, out
    assert (tmp_path / "run" / "results.json").is_file()
    assert multiprocessing.active_children() == []  # killed once SIGTERM did not end it


class CloseHangsWalkEnv(WalkToEnv):
    """WalkTo whose close() after an episode hangs (a simulator's or renderer's teardown deadlock) until CLOSE_RELEASED
    is set, which in a spawned worker it never is. (AsyncVectorEnv closes an env it only built, in this process.)"""

    ran = False

    def reset(self, *, seed=None, options=None):
        self.ran = True
        return super().reset(seed=seed, options=options)

    def close(self):
        if self.ran:
            CLOSE_RELEASED.wait(3600)


CLOSE_RELEASED = threading.Event()


@pytest.mark.timeout(120)
def test_a_finished_run_whose_env_workers_hang_in_close_ends_complete_within_env_timeout(tmp_path, capsys, caplog):
    """gymnasium's clean close waits for every worker's env.close() without a timeout: every episode was scored, then
    the run hung for ever and a SIGTERM wrote results.json as interrupted."""
    register_env_prefix("closehangs", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: CloseHangsWalkEnv(2.0))
    with running_server(ConstantPolicy()) as server:
        started = time.monotonic()
        code = run_cli(rollout_argv("closehangs/walk", server.port, tmp_path / "run", "--env-timeout", "2"))
        took = time.monotonic() - started
    capsys.readouterr()
    assert code == 0 and took < 30, f"exit {code} after {took:.0f} s"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "complete" and results["overall"]["n_errors"] == 0
    assert "env workers did not end within 2 s of being asked to close (--env-timeout)" in caplog.text
    assert multiprocessing.active_children() == []  # killed, not left hanging


def test_a_spawned_env_worker_logs_at_its_parents_level(caplog):
    """Spawned env workers never configured logging: an env's traceback, logged at DEBUG, was lost under
    --log-level DEBUG with async vectorization (sync showed it)."""
    import functools
    import logging
    import pickle
    import subprocess
    import sys

    from gr00t_eval.rollout.vector_envs import _BuiltInWorker

    caplog.set_level("DEBUG")
    env_fn = functools.partial(logging.getLogger("gr00t_eval.rollout").debug, "built in the worker")
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())()"
    result = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(_BuiltInWorker(env_fn)),
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "DEBUG:gr00t_eval.rollout:built in the worker" in result.stderr.decode()
