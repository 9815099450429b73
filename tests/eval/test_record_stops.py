"""`gr00t-eval record` stopped under way: a second Ctrl-C while it cleans up, an env that fails mid-recording; the
line it prints says which episode stopped it and what the output folder holds."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from gr00t_eval.cli import main  # noqa: E402
from gr00t_eval.dataset import LeRobotDataset  # noqa: E402

pytest.importorskip("metaworld")
pytestmark = pytest.mark.sim

RECORD = ["record", "--env-name", "metaworld/reach-v3", "--max-episode-steps", "10", "--image-size", "32"]


@pytest.fixture
def metaworld_env():
    from gr00t_eval.rollout.adapters import metaworld

    return metaworld.MetaWorldEnv


def _fail_reset_at(monkeypatch, env_class, failing_seed, error):
    """env.reset raising `error` for the episode of seed `failing_seed`."""
    reset = env_class.reset

    def reset_failing_at_seed(self, *, seed=None, options=None):
        if seed == failing_seed:
            raise error
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(env_class, "reset", reset_failing_at_seed)


def test_a_second_ctrl_c_while_the_renderer_closes_still_says_what_the_folder_holds(tmp_path, monkeypatch, capsys,
                                                                                   metaworld_env):
    """The Ctrl-C raised in env.close() replaced the first one and its summary: the CLI said 'INTERRUPTED before
    recording began: <out> was left as it was' while meta/ listed the finished episode, and the renderer stayed open."""
    root = tmp_path / "reach"
    _fail_reset_at(monkeypatch, metaworld_env, 1, KeyboardInterrupt())  # the first Ctrl-C, during episode 1
    close = metaworld_env.close
    closed = []

    def close_with_a_second_ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)
        close(self)
        closed.append(self)

    monkeypatch.setattr(metaworld_env, "close", close_with_a_second_ctrl_c)
    assert main([*RECORD, "--episodes", "3", "--output", str(root)]) == 130
    said = capsys.readouterr().out
    assert f"INTERRUPTED: {root} holds the 1 episodes finished before the interrupt" in said, said
    assert "before recording began" not in said and closed
    assert LeRobotDataset(root).num_episodes == 1


def test_a_stop_that_lost_its_summary_is_told_from_meta(tmp_path, monkeypatch, capsys, metaworld_env):
    """With no summary on the KeyboardInterrupt, the CLI said the recording had not begun, though meta/ listed two."""
    import gr00t_eval.record as record

    root = tmp_path / "reach"
    _fail_reset_at(monkeypatch, metaworld_env, 2, KeyboardInterrupt())
    record_metaworld = record.record_metaworld

    def record_losing_the_summary(*args, **kwargs):
        try:
            return record_metaworld(*args, **kwargs)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # one without record_summary

    monkeypatch.setattr(record, "record_metaworld", record_losing_the_summary)
    assert main([*RECORD, "--episodes", "3", "--output", str(root)]) == 130
    said = capsys.readouterr().out
    assert f"INTERRUPTED: {root} holds the 2 episodes finished before the interrupt" in said, said


def test_a_nan_state_mid_recording_names_the_episode_its_seed_and_the_episodes_kept_exit_1(tmp_path, monkeypatch,
                                                                                          capsys, metaworld_env):
    """The writer's ValueError went through the flag-check handler: no episode, seed or word of the folder; exit 2."""
    root = tmp_path / "reach"
    reset, step = metaworld_env.reset, metaworld_env.step

    def reset_noting_the_seed(self, *, seed=None, options=None):
        self.seed_under_test = seed
        return reset(self, seed=seed, options=options)

    def step_blowing_up_at_seed_3(self, action):
        obs, reward, terminated, truncated, info = step(self, action)
        if self.seed_under_test == 3:  # a simulation that blew up
            obs["state.objects"] = np.full_like(obs["state.objects"], np.nan)
        return obs, reward, terminated, truncated, info

    monkeypatch.setattr(metaworld_env, "reset", reset_noting_the_seed)
    monkeypatch.setattr(metaworld_env, "step", step_blowing_up_at_seed_3)
    assert main([*RECORD, "--episodes", "4", "--seed", "1", "--output", str(root)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("gr00t-eval record: error: recording stopped at episode 2 (seed 3): states['objects']"), line
    assert line.endswith(f"{root} holds the 2 episodes finished before it (a loadable dataset)"), line
    assert LeRobotDataset(root).num_episodes == 2


def test_a_reset_that_raises_mid_recording_names_the_episode_and_the_error_exit_1(tmp_path, monkeypatch, capsys,
                                                                                   metaworld_env):
    root = tmp_path / "reach"
    _fail_reset_at(monkeypatch, metaworld_env, 1, RuntimeError("mujoco: simulation unstable"))
    assert main([*RECORD, "--episodes", "3", "--output", str(root)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"gr00t-eval record: error: recording stopped at episode 1 (seed 1): RuntimeError: mujoco: "
                    f"simulation unstable; {root} holds the 1 episodes finished before it (a loadable dataset)"), line
