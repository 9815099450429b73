"""Env registry (prefix -> embodiment, adapters), the built-in adapters, rollout/record CLI flags, no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gr00t_client import EmbodimentTag
from gr00t_eval.cli import build_parser
from gr00t_eval.rollout import embodiment_for_env, make_env, register_env_prefix

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering


def test_reference_prefixes_map_to_their_embodiments():
    assert embodiment_for_env("libero_sim/KITCHEN_SCENE3_turn_on_the_stove") is EmbodimentTag.LIBERO_PANDA
    assert embodiment_for_env("gr1_unified/PnPCup") is EmbodimentTag.ROBOCASA_GR1_TABLETOP
    assert embodiment_for_env("simpler_env_widowx/put_spoon") is EmbodimentTag.SIMPLER_ENV_WIDOWX
    assert embodiment_for_env("metaworld/reach-v3") is EmbodimentTag.NEW_EMBODIMENT


def test_an_embodiment_tag_value_works_as_a_prefix():
    assert embodiment_for_env("unitree_g1_sonic/walk") is EmbodimentTag.UNITREE_G1_SONIC


def test_an_unknown_prefix_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown prefix 'nosuchsim'.*libero_sim.*metaworld"):
        embodiment_for_env("nosuchsim/task")


def _fake_adapter(task, **kwargs):
    return ("built", task, kwargs)


def test_a_registered_prefix_builds_envs_with_its_adapter():
    register_env_prefix("mylab", "NEW_EMBODIMENT", adapter=_fake_adapter)
    assert embodiment_for_env("mylab/stack") is EmbodimentTag.NEW_EMBODIMENT
    assert make_env("mylab/stack", size=3) == ("built", "stack", {"size": 3})
    with pytest.raises(ValueError, match="before the first '/'"):
        register_env_prefix("a/b", "new_embodiment")


def test_gr00t_eval_imports_neither_torch_nor_simulators():
    code = (
        "import sys, gr00t_eval, gr00t_eval.cli, gr00t_eval.open_loop, gr00t_eval.rollout, gr00t_eval.record, "
        "gr00t_eval.plots, gr00t_eval.video, gr00t_eval.results, gr00t_eval.metrics\n"
        "bad = [m for m in ('torch', 'metaworld', 'mujoco', 'gym_pusht') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("style", ["kebab", "snake"])
def test_rollout_flags_in_kebab_and_snake_spelling(style):
    def flag(name):
        return "--" + (name if style == "kebab" else name.replace("-", "_"))

    args = build_parser().parse_args([
        "rollout", flag("env-name"), "metaworld/reach-v3", flag("n-episodes"), "50", flag("n-envs"), "2",
        flag("n-action-steps"), "4", flag("max-episode-steps"), "100", flag("policy-client-host"), "10.0.0.1",
        flag("policy-client-port"), "6000", flag("video-dir"), "/v", flag("seed"), "3", flag("api-token"), "t",
        flag("output-dir"), "/o", flag("env-kwarg"), "image_size=32",
    ])
    assert (args.env_name, args.n_episodes, args.n_envs, args.n_action_steps, args.max_episode_steps) == ("metaworld/reach-v3", 50, 2, 4, 100)
    assert (args.host, args.port, args.video_dir, args.seed, args.api_token, args.output_dir) == ("10.0.0.1", 6000, "/v", 3, "t", "/o")
    assert args.env_kwargs == [("image_size", 32)]


def test_cli_flags_register_env_prefixes_and_adapters():
    from gr00t_eval.cli import apply_env_registrations

    args = build_parser().parse_args([
        "rollout", "--env-name", "clilab/stack", "--env-import", "json", "--env-prefix", "cliprefix=LIBERO_PANDA",
        "--env_adapter", "clilab=test_rollout_envs:_fake_adapter",
    ])
    apply_env_registrations(args)
    assert embodiment_for_env("cliprefix/x") is EmbodimentTag.LIBERO_PANDA
    assert embodiment_for_env("clilab/stack") is EmbodimentTag.NEW_EMBODIMENT
    assert make_env("clilab/stack")[:2] == ("built", "stack")


def test_record_flags():
    args = build_parser().parse_args(["record", "--env_name", "metaworld/reach-v3", "--episodes", "3", "--output", "/d"])
    assert (args.env_name, args.episodes, args.output, args.seed) == ("metaworld/reach-v3", 3, "/d", 0)


@pytest.mark.sim
def test_metaworld_adapter_speaks_the_flat_gr00t_format():
    pytest.importorskip("metaworld")
    env = make_env("metaworld/reach-v3", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["video.corner2"].shape == (32, 32, 3) and obs["video.corner2"].dtype == np.uint8
        assert {k: v.shape for k, v in obs.items() if k.startswith("state.")} == {
            "state.eef_pos": (3,), "state.gripper": (1,), "state.objects": (14,), "state.goal": (3,)}
        assert obs["annotation.human.action.task_description"] == "reach the red goal position"
        obs, reward, terminated, truncated, info = env.step({"action.eef_delta": np.zeros(3, np.float32), "action.gripper": np.zeros(1, np.float32)})
        assert set(info) == {"success"} and isinstance(reward, float)
        assert env.observation_space.contains(obs)
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        make_env("metaworld/fly-to-the-moon-v3")


@pytest.mark.sim
def test_metaworld_is_deterministic_under_a_seed_whatever_ran_before():
    pytest.importorskip("metaworld")
    fresh, used = make_env("metaworld/push-v3", image_size=32), make_env("metaworld/push-v3", image_size=32, seed=9)
    try:
        used.reset(seed=1)
        used.step({"action.eef_delta": np.ones(3, np.float32), "action.gripper": np.ones(1, np.float32)})
        a, _ = fresh.reset(seed=4)
        b, _ = used.reset(seed=4)
        for key in a:
            assert np.array_equal(a[key], b[key]) if key != "annotation.human.action.task_description" else a[key] == b[key]
        c, _ = fresh.reset(seed=5)
        assert not np.array_equal(a["state.objects"], c["state.objects"])
    finally:
        fresh.close()
        used.close()


@pytest.mark.sim
def test_metaworld_envs_reset_without_a_seed_get_scenes_of_their_own():
    """Every env was made with seed 0: N envs of a vector env reset without seeds evaluated one placement N times, in
    lock-step, in every process (gymnasium's envs and Meta-World's own draw fresh ones)."""
    pytest.importorskip("metaworld")
    envs = [make_env("metaworld/reach-v3", image_size=32) for _ in range(3)]
    try:
        goals = [tuple(env.reset()[0]["state.goal"].tolist()) for env in envs]
        assert len(set(goals)) == 3, goals
        seeded = make_env("metaworld/reach-v3", image_size=32, seed=7)
        try:  # an explicit seed still fixes the placements
            assert np.array_equal(seeded.reset()[0]["state.goal"], make_env("metaworld/reach-v3", image_size=32,
                                                                             seed=7).reset()[0]["state.goal"])
        finally:
            seeded.close()
    finally:
        for env in envs:
            env.close()


@pytest.mark.sim
def test_a_non_finite_metaworld_action_is_refused_and_an_unstable_step_is_no_success(tmp_path, monkeypatch):
    """np.clip passed NaN to MuJoCo, which reset the whole scene: the step returned normally, and in drawer-close the
    default pose is the goal, so one NaN from a broken policy scored success=True with reward 10."""
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warning to MUJOCO_LOG.TXT in the working folder
    env = make_env("metaworld/drawer-close-v3", image_size=32)
    try:
        env.reset(seed=0)
        for bad in (np.nan, np.inf):
            with pytest.raises(ValueError, match=r"action\.eef_delta holds non-finite values.*expected finite"):
                env.step({"action.eef_delta": np.array([bad, 0, 0], np.float32), "action.gripper": np.zeros(1, np.float32)})
        inner = env.unwrapped._env
        inner.data.qacc_warmstart[:] = np.nan  # what a diverging simulation leaves: MuJoCo resets the scene at its step
        inner.data.qpos[0] = np.nan
        with pytest.raises(RuntimeError, match="simulation became unstable at this step .* cannot be scored"):
            env.step({"action.eef_delta": np.zeros(3, np.float32), "action.gripper": np.zeros(1, np.float32)})
    finally:
        env.close()


@pytest.mark.sim
@pytest.mark.parametrize("task", ["drawer-open-v3", "reach-v3"])
def test_metaworld_reset_shows_the_reset_scene_in_its_state_and_image(task):
    """Meta-World's reset moves bodies without recomputing positions: the reset observation of drawer-open held the
    drawer ~10 cm from where it was (6 tasks), and the first frame of 29 tasks showed the scene before the reset (the
    goal marker of reach-v3 elsewhere) until the first step; a recording kept both as step 0, unnoticed by a replay."""
    pytest.importorskip("metaworld")
    env = make_env(f"metaworld/{task}", image_size=64)
    try:
        obs, _ = env.reset(seed=3)
        inner = env.unwrapped._env
        import mujoco

        mujoco.mj_forward(inner.model, inner.data)  # positions of the scene as it is
        now = inner._get_curr_obs_combined_no_goal()
        np.testing.assert_allclose(obs["state.objects"], now[4:18], atol=1e-6)
        np.testing.assert_allclose(obs["state.eef_pos"], now[0:3], atol=1e-6)
        image = env.unwrapped._observation(inner._get_obs())["video.corner2"]  # rendered from the recomputed scene
        assert np.array_equal(obs["video.corner2"], image)
    finally:
        env.close()


@pytest.mark.sim
def test_pusht_adapter_speaks_the_flat_gr00t_format():
    pytest.importorskip("gym_pusht")
    env = make_env("pusht/PushT-v0", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["video.image"].shape == (32, 32, 3) and obs["state.agent_pos"].shape == (2,)
        _, _, _, _, info = env.step({"action.agent_pos": np.array([256, 256], np.float32)})
        assert set(info) == {"success"}
        with pytest.raises(ValueError, match=r"action\.agent_pos holds non-finite values \[nan, 256\.0\]"):
            env.step({"action.agent_pos": np.array([np.nan, 256], np.float32)})
    finally:
        env.close()


@pytest.mark.sim
def test_a_pusht_rollout_runs_through_the_adapter_and_is_cut_at_max_episode_steps():
    pytest.importorskip("gym_pusht")
    from gr00t_client import BasePolicy, ModalityConfig
    from gr00t_eval.rollout import RolloutConfig, run_rollout

    class CentrePolicy(BasePolicy):
        def get_modality_config(self):
            return {"video": ModalityConfig([0], ["image"]), "state": ModalityConfig([0], ["agent_pos"]),
                    "action": ModalityConfig([0, 1, 2, 3], ["agent_pos"]),
                    "language": ModalityConfig([0], ["annotation.human.action.task_description"])}

        def reset(self, options=None):
            return {}

        def _get_action(self, observation, options=None):
            batch = observation["state.agent_pos"].shape[0]
            return {"action.agent_pos": np.full((batch, 4, 2), 256.0, np.float32)}, {}

    # Past gym-pusht's own TimeLimit of 300, which cut every episode there as a failure whatever the budget said
    for budget in (8, 320):
        config = RolloutConfig("pusht/PushT-v0", n_episodes=1, n_envs=1, n_action_steps=4, max_episode_steps=budget,
                               seed=0, env_kwargs={"image_size": 32})
        result = run_rollout(CentrePolicy(strict=False), config, progress=False)
        outcome = result.outcomes[0]
        assert (outcome.length, outcome.success, outcome.failure_reason) == (budget, False, None)
