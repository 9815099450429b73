"""Settings gr00t-eval cannot run with are refused before anything is made: one line naming the flag, the value and
what it must be, exit 2, no output directory, no connection. Before, `--max-episode-steps 0` ran a rollout whose
episodes ended before their first step (a success rate of 0 measured on nothing), a bad port or timeout was found
only after the output directory was made, and `record` failed mid-way on an odd image size, an unknown camera or
a negative seed, leaving a dataset directory behind."""

import importlib.util
import json
import re

import numpy as np
import pytest

from gr00t_client import PolicyClient
from gr00t_eval import cli
from gr00t_eval.batch import JobError, load_jobs
from gr00t_eval.ray_runner import parse_servers
from gr00t_eval.rollout.runner import RolloutConfig, RolloutRunner

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None


def refused(capsys, argv):
    """Run gr00t-eval in this process; (exit code, its stderr)."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-episode-steps", "0"], "--max-episode-steps must be >= 1, got 0"),
        (["--timeout-ms", "0"], "--timeout-ms must be a whole number of milliseconds from 1 to 2147483647, got 0"),
        (["--policy-client-port", "70000"], "--policy-client-port must be a port number from 1 to 65535, got 70000"),
        (["--policy-client-host", "127.0.0.1,other:99999"], "--policy-client-host entry 'other:99999': port 99999 is not from 1 to 65535"),
        # it ran against 35801, --policy-client-port silently ignored
        (["--policy-client-host", "127.0.0.1:35801", "--policy-client-port", "35802"],
         "--policy-client-host entry '127.0.0.1:35801' names port 35801 and --policy-client-port is 35802; give the port "
         "once, in the entry or with --policy-client-port"),
        (["--ray-cpus-per-shard", "nan", "--ray-address", "auto"], "--ray-cpus-per-shard must be a finite number > 0, got nan"),
        (["--ray-shards", "-1", "--ray-address", "auto"], "--ray-shards must be >= 0 (0: one per cluster CPU), got -1"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
    ],
)
def test_rollout_refuses_a_bad_setting_before_making_its_output_directory(tmp_path, capsys, flags, message):
    output = tmp_path / "run"
    code, err = refused(capsys, ["rollout", "--env-name", "metaworld/reach-v3", "--output-dir", str(output), *flags])
    assert code == 2
    assert err.strip() == f"gr00t-eval rollout: error: {message}"
    assert not output.exists()


def test_a_bad_seed_in_the_environment_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GR00T_EVAL_SEED", "twelve")
    code, err = refused(capsys, ["rollout", "--env-name", "metaworld/reach-v3", "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "$GR00T_EVAL_SEED must be a whole number >= 0, got 'twelve'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "0"], "--port must be a port number from 1 to 65535, got 0"),
        (["--timeout-ms", "-5"], "--timeout-ms must be a whole number of milliseconds from 1 to 2147483647, got -5"),
    ],
)
def test_open_loop_refuses_a_bad_connection_setting_first(tmp_path, capsys, flags, message):
    (tmp_path / "meta").mkdir()
    output = tmp_path / "out"
    code, err = refused(capsys, ["open-loop", "--dataset-path", str(tmp_path), "--output-dir", str(output), *flags])
    assert code == 2 and err.strip() == f"gr00t-eval open-loop: error: {message}"
    assert not output.exists()


def test_the_runner_refuses_settings_that_would_score_episodes_never_run():
    for field, value, message in [("max_episode_steps", 0, "max_episode_steps must be >= 1, got 0"),
                                  ("n_action_steps", 0, "n_action_steps must be >= 1, got 0"),
                                  ("video_fps", 0, "video_fps must be >= 1, got 0"),
                                  ("seed", -4, "seed must be >= 0 (env seeds are non-negative), got -4")]:
        config = RolloutConfig(env_name="walkto/fast", n_envs=1, **{field: value})
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            RolloutRunner(None, config)


def test_host_lists_name_the_entry_with_a_bad_port():
    assert [str(s) for s in parse_servers("a, b:6000", 5555)] == ["a:5555", "b:6000"]
    with pytest.raises(ValueError, match="entry 'b': port 0 is not from 1 to 65535"):
        parse_servers("a:6000,b", 0)


def test_host_port_entries_agree_with_an_explicit_port_or_stand_alone_without_one():
    assert [str(s) for s in parse_servers("a:6000, b:7000", 5555)] == ["a:6000", "b:7000"]  # several servers for Ray
    assert [str(s) for s in parse_servers("a:6000, b", 6000, port_given=True)] == ["a:6000", "b:6000"]
    with pytest.raises(ValueError, match="entry 'b:7000' names port 7000 and --policy-client-port is 6000"):
        parse_servers("a, b:7000", 6000, port_given=True)


def test_a_host_entry_in_the_servers_tcp_address_form_is_taken_as_host_and_port():
    """The address the server prints ('listening on tcp://HOST:PORT') went through as a host name."""
    assert [str(s) for s in parse_servers("tcp://127.0.0.1:6000, tcp://b", 5555)] == ["127.0.0.1:6000", "b:5555"]
    assert [str(s) for s in parse_servers("tcp://[::1]:6000", 5555)] == ["[::1]:6000"]


@pytest.mark.parametrize("entry, missing", [(":5555", "host"), ("localhost:", "port"), ("tcp://", "host"),
                                            ("tcp://:5555", "host")])
def test_a_host_entry_with_an_empty_host_or_port_is_refused_naming_the_flag(entry, missing):
    with pytest.raises(ValueError, match=f"^--host entry {re.escape(repr(entry))}: the {missing} is empty; expected "
                                         "HOST or HOST:PORT"):
        parse_servers(entry, 5555, host_flag="--host", port_flag="--port")


@pytest.mark.parametrize("entry", ["127.0.0.1:5\u00b2", "127.0.0.1:\u0665\u0665\u0665\u0666", "[::1]:\uff15\uff15\uff15\uff15"])
def test_a_host_entry_whose_port_is_in_other_than_ascii_digits_is_refused_naming_the_flag(entry):
    """int() took '\u0665\u0665\u0665\u0666' for 5556 without a word, and refused '5\u00b2' (which isdigit) with its bare message."""
    with pytest.raises(ValueError, match=f"^--host entry {re.escape(repr(entry))}: port .* is not written in the "
                                         "digits 0-9; expected HOST or HOST:PORT"):
        parse_servers(entry, 5555, host_flag="--host", port_flag="--port")


def test_batch_jobs_refuse_a_port_or_timeout_in_other_than_ascii_digits_naming_the_field(tmp_path):
    servers = [{"port": "5\u00b2"}, {"port": "\u0665\u0665\u0665\u0666"}, {"port": 5555, "timeout_ms": "\u0662000"}]
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"name": f"j{i}", "env_name": "walkto/fast", "policy_server": s} for i, s in enumerate(servers)]))
    superscript, arabic, timeout = load_jobs(path)
    assert isinstance(superscript, JobError) and "'port' must be an int from 1 to 65535, got '5\u00b2'" in str(superscript)
    assert isinstance(arabic, JobError) and "'port' must be an int from 1 to 65535" in str(arabic)
    assert isinstance(timeout, JobError) and "'timeout_ms' must be an int from 1 to" in str(timeout)


def test_batch_jobs_check_the_server_port_and_timeout(tmp_path):
    servers = [{"port": 70000}, {"port": True}, {"port": 5555, "timeout_ms": 0}, {"port": "5555", "timeout_ms": "2000"}]
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"name": f"j{i}", "env_name": "walkto/fast", "policy_server": s} for i, s in enumerate(servers)]))
    big_port, bool_port, no_timeout, strings = load_jobs(path)
    assert isinstance(big_port, JobError) and "'port' must be an int from 1 to 65535, got 70000" in str(big_port)
    assert isinstance(bool_port, JobError) and "got True" in str(bool_port)
    assert isinstance(no_timeout, JobError) and "'timeout_ms' must be an int from 1 to 2147483647, got 0" in str(no_timeout)
    assert (strings.server.port, strings.server.timeout_ms) == (5555, 2000)  # numbers written as strings still work


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timeout_ms": float("inf")}, "timeout_ms must be a whole number of milliseconds from 1 to 2147483647, got inf"),
        ({"timeout_ms": float("nan")}, "timeout_ms must be a whole number of milliseconds from 1 to 2147483647, got nan"),
        ({"timeout_ms": True}, "timeout_ms must be a whole number of milliseconds from 1 to 2147483647, got True"),
        ({"timeout_ms": 0}, "timeout_ms must be a whole number of milliseconds from 1 to 2147483647, got 0"),
        ({"port": 70000}, "port must be an int from 1 to 65535, got 70000"),
        ({"port": 0}, "port must be an int from 1 to 65535, got 0"),
        ({"port": "5555"}, "port must be an int from 1 to 65535, got '5555'"),
        ({"host": ""}, "host must be a non-empty str (a name or an IP address), got ''"),
        ({"host": "[]"}, "host must be a non-empty str (a name or an IP address), got '[]'"),
    ],
)
def test_the_client_refuses_a_timeout_port_or_host_it_cannot_use(kwargs, message):
    with pytest.raises(ValueError) as error:
        PolicyClient(**kwargs)
    assert str(error.value) == message


def test_the_client_takes_numpy_numbers():
    with PolicyClient(port=np.int64(5600), timeout_ms=np.float64(250.0)) as client:
        assert (client.port, client.timeout_ms) == (5600, 250)
        assert type(client.port) is int and client.address == "tcp://localhost:5600"


@pytest.mark.skipif(not HAS_METAWORLD, reason="needs gr00t-eval[sim] (metaworld)")
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "0"], "--image-size must be an int from 1 to 1024 pixels, got 0"),
        (["--image-size", "2048"], "--image-size must be an int from 1 to 1024 pixels, got 2048"),
        (["--image-size", "65"], "--image-size must be even (the dataset's mp4 videos are yuv420p), got 65"),
        (["--max-episode-steps", "0"], "--max-episode-steps must be >= 1, got 0"),
        (["--seed", "-3"], "--seed must be >= 0, got -3"),
        (["--camera", "nocam"], "Meta-World has no camera 'nocam'; its cameras: topview, corner,"),
    ],
)
def test_record_refuses_a_bad_setting_before_the_dataset_directory_exists(tmp_path, capsys, flags, message):
    output = tmp_path / "ds"
    code, err = refused(capsys, ["record", "--env-name", "metaworld/reach-v3", "--episodes", "1", "--output", str(output), *flags])
    assert code == 2 and f"gr00t-eval record: error: {message}" in err
    assert not output.exists()


@pytest.mark.skipif(not HAS_METAWORLD, reason="needs gr00t-eval[sim] (metaworld)")
def test_metaworld_renders_images_larger_than_its_default_framebuffer():
    from gr00t_eval.rollout.adapters.metaworld import MetaWorldEnv

    env = MetaWorldEnv("reach-v3", image_size=512)  # Meta-World's offscreen framebuffer is 640x480
    try:
        obs, _ = env.reset(seed=0)
        image = obs["video.corner2"]
        assert image.shape == (512, 512, 3) and image.dtype == np.uint8
        assert image.std() > 5  # a rendered scene, not a blank buffer
    finally:
        env.close()


@pytest.mark.skipif(importlib.util.find_spec("gym_pusht") is None, reason="needs gr00t-eval[pusht] (gym-pusht)")
@pytest.mark.parametrize("size", [0, -5, 5000, 2.0, True])
def test_pusht_refuses_an_image_size_it_cannot_render(size):
    from gr00t_eval.rollout.adapters.pusht import PushTEnv

    with pytest.raises(ValueError) as error:
        PushTEnv(image_size=size)
    assert str(error.value) == f"image_size must be an int from 1 to 1024 pixels, got {size!r}"


def test_a_ray_flag_mistake_is_named_before_a_stale_ray_address_is_checked(tmp_path, capsys, monkeypatch):
    """With the address file of a Ray head that is gone (left in Ray's temp folder), `--ray-address auto
    --ray-shards -1` was told about the stale address, not the flag mistake."""
    stale = tmp_path / "raytmp" / "ray"
    stale.mkdir(parents=True)
    (stale / "ray_current_cluster").write_text("127.0.0.1:1\n")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, err = refused(capsys, ["rollout", "--env-name", "metaworld/reach-v3", "--output-dir", str(tmp_path / "run"),
                                 "--ray-shards", "-1", "--ray-address", "auto"])
    assert code == 2 and err.strip() == "gr00t-eval rollout: error: --ray-shards must be >= 0 (0: one per cluster CPU), got -1"
