"""The settings and policy a rollout takes, checked alike by run_rollout, run_suite and RolloutRunner before any episode:
a count that is no whole number, or out of range, or a policy argument that is no policy, is refused naming it."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval.rollout import RolloutConfig, RolloutRunner, run_rollout
from gr00t_eval.shard import run_suite

ENV = "walkto/fast"


def config(**overrides):
    values = dict(env_name=ENV, n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                  vectorization="sync")
    values.update(overrides)
    return RolloutConfig(**values)


def run_suite_of(policy, settings):
    return run_suite(policy, ENV, settings)


def run_rollout_of(policy, settings):
    return run_rollout(policy, settings, progress=False)


def run_runner_of(policy, settings):
    return RolloutRunner(policy, settings, progress=False).run()


@pytest.mark.parametrize("n_episodes", [0, -3])
def test_run_suite_refuses_fewer_than_one_episode_instead_of_reporting_a_run_of_nothing(n_episodes):
    with pytest.raises(ValueError, match=f"^n_episodes must be >= 1, got {n_episodes}$"):
        run_suite_of(ConstantPolicy(), config(n_episodes=n_episodes))


def test_run_suite_refuses_a_negative_n_envs_and_takes_0_as_auto():
    with pytest.raises(ValueError, match=r"^n_envs must be >= 0 \(0 = auto\), got -1$"):
        run_suite_of(ConstantPolicy(), config(n_envs=-1))
    assert run_suite_of(ConstantPolicy(), config(n_envs=0))["overall"]["n_episodes"] == 2


@pytest.mark.parametrize("field, value", [
    ("n_action_steps", 8.0),  # every episode errored on "slice indices must be integers"
    ("n_episodes", 2.0), ("n_episodes", "2"), ("n_envs", 1.0), ("max_episode_steps", 10.5), ("seed", 0.5),
    ("first_episode", True), ("steps_per_frame", 1.0), ("video_fps", 20.0), ("max_episodes_rendered", 1.0),
])
@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_a_count_that_is_no_whole_number_is_refused_naming_the_field(run, field, value):
    settings = config(**{field: value})
    with pytest.raises(ValueError, match=f"^{field} must be a whole number >= [01], got {type(value).__name__} "):
        run(ConstantPolicy(), settings)


def test_rtc_frozen_steps_must_be_a_whole_number_too():
    with pytest.raises(ValueError, match="^rtc_frozen_steps must be a whole number >= 1, got float 2.0$"):
        run_rollout_of(ConstantPolicy(), config(client_chunking="async", rtc_frozen_steps=2.0))


@pytest.mark.parametrize("env_kwargs, where", [({"noise": float("nan")}, "env_kwargs.noise"),
                                               ({"bounds": [0.0, np.float32("-inf")]}, "env_kwargs.bounds[1]"),
                                               ({"camera": {"fov": float("inf")}}, "env_kwargs.camera.fov"),
                                               ({"init_qpos": np.array([0.1, np.nan])}, "env_kwargs.init_qpos[1]"),
                                               ({"scale": np.array(np.inf)}, "env_kwargs.scale")])
@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_an_env_kwarg_holding_a_non_finite_number_is_refused_naming_it(run, env_kwargs, where):
    """results.json saved NaN as null, and a resumed run rebuilt the env with None."""
    with pytest.raises(ValueError, match=f"^{where.replace('[', '.').replace(']', '.')} is not a finite number .*"
                                         "a JSON number must be finite"):
        run(ConstantPolicy(), config(env_kwargs=env_kwargs))


@pytest.mark.parametrize("value", ["false", 0, None])
@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_terminate_on_success_that_is_no_bool_is_refused_as_job_files_refuse_it(run, value):
    """"false" (text read from YAML or an env var) is true to Python: it ran with success ending episodes and
    results.json recorded 'false'."""
    with pytest.raises(ValueError, match=f"^terminate_on_success must be a bool \\(True or False\\), got "
                                         f"{type(value).__name__} {value!r}$"):
        run(ConstantPolicy(), config(terminate_on_success=value))


@pytest.mark.parametrize("episodes, shown", [([1.5, 1], "float 1.5"), ([True], "bool True"), ([0, "1"], "str '1'")])
def test_run_rollout_refuses_episode_indices_that_are_no_whole_numbers_naming_the_entry(episodes, shown):
    """1.5 ran as episode 1 (two indices asked, one outcome) and True as episode 1."""
    position = next(i for i, e in enumerate(episodes) if type(e) is not int)
    with pytest.raises(ValueError, match=rf"^episodes\[{position}\] must be a whole number >= 0, got {shown}$"):
        run_rollout(ConstantPolicy(), config(), progress=False, episodes=episodes)


def test_run_rollout_takes_numpy_int_episode_indices():
    result = run_rollout(ConstantPolicy(), config(), progress=False, episodes=[np.int64(1)])
    assert [o.episode_index for o in result.outcomes] == [1] and type(result.outcomes[0].episode_index) is int


def test_numpy_int_counts_are_taken_as_plain_ints():
    settings = config(n_episodes=np.int64(2), n_envs=np.int32(1), n_action_steps=np.int64(2), seed=np.uint8(3))
    assert json.loads(json.dumps(dataclasses.asdict(settings)))["seed"] == 3  # results.json can save them
    result = run_rollout_of(ConstantPolicy(), settings)
    assert [o.seed for o in result.outcomes] == [3, 4]


@pytest.mark.parametrize("policy, shown", [("127.0.0.1:5555", "str"), (None, "NoneType")])
@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_a_policy_argument_that_is_no_policy_is_refused_naming_the_argument(run, policy, shown):
    with pytest.raises(TypeError, match=rf"^policy must be a BasePolicy \(e\.g\. a PolicyClient\), got {shown}"):
        run(policy, config())


@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_an_env_timeout_set_with_sync_vectorization_is_refused_as_it_cannot_apply(run):
    """Sync envs run in this process, where a hung step cannot be stopped: env_timeout_s=3 was silently waited past."""
    with pytest.raises(ValueError, match=r"^env_timeout_s 3 cannot apply with vectorization 'sync': its envs run in "
                                         r"this process, where a hung reset or step cannot be stopped"):
        run(ConstantPolicy(), config(n_envs=2, env_timeout_s=3.0))


@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_an_env_timeout_set_with_one_env_under_auto_vectorization_is_refused_as_it_cannot_apply(run):
    """Auto runs a single env in this process, as sync does: env_timeout_s=5 passed and was silently waited past."""
    with pytest.raises(ValueError, match=r"^env_timeout_s 5 cannot apply with n_envs 1 under vectorization 'auto': its "
                                         r"single env runs in this process"):
        run(ConstantPolicy(), config(vectorization="auto", n_envs=1, env_timeout_s=5.0))


def test_one_env_under_auto_vectorization_takes_no_env_timeout_or_the_default_one():
    assert run_rollout_of(ConstantPolicy(), config(vectorization="auto", env_timeout_s=None)).n_errors == 0
    assert run_rollout_of(ConstantPolicy(), config(vectorization="auto")).n_errors == 0


@pytest.mark.parametrize("vectorization", ["auto", "sync"])
def test_a_python_api_run_with_its_env_in_this_process_records_no_env_timeout(tmp_path, vectorization):
    """run_suite with RolloutConfig(n_envs=1) recorded env_timeout_s 600 (the default, not kept: its env runs in this
    process), where the CLI's results record None."""
    from gr00t_client import PolicyClient
    from gr00t_eval import write_results

    from eval.scale_fixtures import policy_server

    with policy_server() as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        results = run_suite(client, ENV, config(n_episodes=1, vectorization=vectorization))
    assert results["status"] == "complete" and results["config"]["env_timeout_s"] is None
    written = json.loads(write_results(tmp_path / "results.json", results).read_text())
    assert written["config"]["env_timeout_s"] is None and written["config"]["vectorization"] == vectorization


def test_sync_vectorization_takes_no_env_timeout_or_the_default_one():
    assert run_rollout_of(ConstantPolicy(), config(env_timeout_s=None)).n_errors == 0
    assert run_rollout_of(ConstantPolicy(), config()).n_errors == 0


def test_the_default_env_timeout_is_600_s_and_stays_600_s_when_a_copy_changes_the_vectorization():
    """A default resolved per vectorization at construction stayed that vectorization's under dataclasses.replace: a
    sync config copied to async ran with no limit, and an async one copied to sync was refused."""
    sync = RolloutConfig(env_name=ENV, vectorization="sync")
    assert sync.env_timeout_s == RolloutConfig(env_name=ENV, vectorization="async").env_timeout_s == 600.0
    assert dataclasses.replace(sync, vectorization="async", n_envs=8).env_timeout_s == 600.0
    small = {k: v for k, v in dataclasses.asdict(config()).items() if k != "env_timeout_s"}
    assert run_rollout_of(ConstantPolicy(), dataclasses.replace(RolloutConfig(env_name=ENV), **small)).n_errors == 0


@pytest.mark.parametrize("run", [run_rollout, run_suite_of, RolloutRunner])
def test_an_on_episode_that_is_not_callable_is_refused_before_any_env_starts(run):
    """on_episode=5 started the envs and failed once the first episode was scored, its outcome lost."""
    with pytest.raises(TypeError, match="^on_episode must be a callable taking each EpisodeOutcome, or None, got int 5$"):
        if run is run_suite_of:
            run_suite(ConstantPolicy(), ENV, config(), on_episode=5)
        else:
            run(ConstantPolicy(), config(), progress=False, on_episode=5)


@pytest.mark.parametrize("env_kwargs, shown", [([1], "list [1]"), ("noise=0", "str 'noise=0'"),
                                               ({1: 2}, "a key int 1")])
@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_env_kwargs_that_are_no_map_of_names_are_refused_naming_them(run, env_kwargs, shown):
    """A list failed at env creation as "argument after ** must be a mapping"."""
    with pytest.raises(TypeError, match=rf"^env_kwargs must be a dict of keyword arguments with str keys, got {re.escape(shown)}$"):
        run(ConstantPolicy(), config(env_kwargs=env_kwargs))


@pytest.mark.parametrize("run", [run_rollout_of, run_suite_of, run_runner_of])
def test_a_video_dir_that_is_no_path_is_refused_naming_it(run):
    """video_dir=5 failed in run(), after the policy checks, as "expected str, bytes or os.PathLike object"."""
    with pytest.raises(TypeError, match=r"^video_dir must be a str or os\.PathLike folder \(or None for no videos\), "
                                        r"got int 5$"):
        run(ConstantPolicy(), config(video_dir=5))


def test_a_path_video_dir_is_taken_as_its_str(tmp_path):
    settings = config(video_dir=tmp_path / "videos")
    RolloutRunner(ConstantPolicy(), settings, progress=False)
    assert settings.video_dir == str(tmp_path / "videos")  # results.json saves the config as JSON
