"""Edge values the CLI audit fed gr00t-eval: batch fields of the wrong type (a string "false" ran as true), settings
only async client chunking uses, a trillion episodes, env registrations and tags mistyped, keys from environment
variables, and empty names. Each is one line with exit status 2, naming the flag or field, before any folder is
made or server asked."""

from __future__ import annotations

import json

import pytest

from gr00t_eval.batch import JobError, load_jobs
from gr00t_eval.cli import main


def job_errors(tmp_path, jobs, defaults=None):
    path = tmp_path / "jobs.json"
    base = {"n_episodes": 1, "policy_server": {"port": 5555}}
    path.write_text(json.dumps({"defaults": {**base, **(defaults or {})}, "jobs": jobs}))
    return load_jobs(path)


@pytest.mark.parametrize("job, expected", [
    ({"overrides": {"terminate_on_success": "false"}}, "override terminate_on_success must be true or false, got 'false'"),
    ({"overrides": {"chunk_merge": "average"}}, "override chunk_merge 'average' needs client_chunking 'async'"),
    ({"overrides": {"first_episode": 1}}, "override 'first_episode' is not a rollout setting"),
    ({"overrides": {"client_chunking": "asynch"}}, "override client_chunking must be one of 'off', 'sync', 'async', got 'asynch'"),
    ({"overrides": {"env_kwargs": ["a"]}}, "override env_kwargs must be an object of keyword arguments"),
    ({"overrides": {"rtc_frozen_steps": 2}}, "override rtc_frozen_steps needs client_chunking 'async'"),
    # json reads NaN and Infinity as numbers; results.json saved null, and a resumed job passed the env None
    ({"overrides": {"env_kwargs": {"noise": float("nan")}}},
     "override env_kwargs.noise is not a finite number (got nan); a JSON number must be finite"),
    ({"arena_env_args": {"bounds": [0, float("-inf")]}}, "arena_env_args.bounds[1] is not a finite number"),
    ({"overrides": {"client_chunking": "async", "n_action_steps": 1}},
     "override client_chunking 'async' needs n_action_steps >= 2"),
    ({"overrides": "fast"}, "'overrides' must be an object of rollout settings, got 'fast'"),
    ({"env_name": ["walkto/fast"]}, "'env_name' must be a string (env names or suites, comma-separated)"),
    ({"policy_server": {"host": None, "port": 5555}}, "policy_server 'host' must be a host name or IP address, got None"),
    ({"n_episodes": 10**12}, "n_episodes must be at most 1,000,000"),
    # a task's video folder failed with 'embedded null byte' when its turn came, after the job's other tasks ran
    ({"env_name": "walkto/fast,walkto/a\u0000b"}, "'env_name' is 'walkto/fast,walkto/a\\x00b', which holds a NUL character"),
    # the envs ran in this process, where the limit cannot apply: a hung step was waited for, without a word
    ({"overrides": {"vectorization": "sync", "env_timeout_s": 3}},
     "override env_timeout_s 3 cannot apply with vectorization 'sync': its envs run in this process"),
    # the default's value, given, was taken as the default and not kept either
    ({"overrides": {"vectorization": "sync", "env_timeout_s": 600}},
     "override env_timeout_s 600 cannot apply with vectorization 'sync': its envs run in this process"),
])
def test_a_job_field_of_the_wrong_type_or_size_is_invalid_naming_it(tmp_path, job, expected):
    [parsed] = job_errors(tmp_path, [{"name": "j", "env_name": "walkto/fast", **job}])
    assert isinstance(parsed, JobError) and expected in str(parsed), parsed


def test_an_empty_job_name_is_refused_rather_than_renamed(tmp_path):
    [parsed] = job_errors(tmp_path, [{"name": "", "env_name": "walkto/fast"}])
    assert isinstance(parsed, JobError) and "'name' must be a non-empty string (or left out), got ''" in str(parsed)


ROLLOUT = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--policy-client-port", "9",
           "--timeout-ms", "500"]


@pytest.mark.parametrize("extra, expected", [
    (["--rtc-frozen-steps", "2"], "--rtc-frozen-steps needs --client-chunking async (got --client-chunking off)"),
    (["--client-chunking", "sync", "--chunk-merge", "average"], "--chunk-merge average needs --client-chunking async"),
    # every prefetch of a one-step chunk came after its step: twice the requests of sync, accepted without a word
    (["--client-chunking", "async", "--n-action-steps", "1"], "--client-chunking async needs --n-action-steps >= 2"),
    (["--n-episodes", "1000000000000"], "--n-episodes must be at most 1,000,000 per task"),
    (["--n-envs", "-1"], "--n-envs must be >= 0 (0 = auto), got -1"),
    (["--ray-cpus-per-shard", "inf", "--ray-address", "auto"], "--ray-cpus-per-shard must be a finite number > 0, got inf"),
    (["--env-timeout", "-1"], "--env-timeout must be seconds > 0, or 0 for no limit; got -1"),
    (["--vectorization", "sync", "--n-envs", "2", "--env-timeout", "3"],
     "--env-timeout 3 cannot apply with vectorization 'sync': its envs run in this process"),
    (["--vectorization", "sync", "--env-timeout", "600"],
     "--env-timeout 600 cannot apply with vectorization 'sync': its envs run in this process"),
    # without --ray-address they were ignored: a single-process run the user took for one spread over Ray
    (["--ray-shards", "4"], "--ray-shards applies only to a run on Ray: add --ray-address"),
    (["--ray-shards", "4", "--ray-cpus-per-shard", "2"], "--ray-shards and --ray-cpus-per-shard apply only to a run on Ray"),
    # shards drawing their own seeds would each run other scenes than the plan's episodes
    (["--shard", "0/2"], "--shard needs --seed (or $GR00T_EVAL_SEED)"),
    (["--env-adapter", "walk2=no_such_module_x:make"], "--env-adapter walk2=no_such_module_x:make: env adapter "
                                                       "'no_such_module_x:make': cannot import module 'no_such_module_x'"),
    (["--env-adapter", "walk2=json:no_such_function"], "module 'json' has no function 'no_such_function'"),
    (["--env-import", "no_such_module_y"], "--env-import no_such_module_y: cannot import it"),
    # its task failed with 'File name too long' for its video folder only after the other task had run
    (["--env-name", "walkto/slow,walkto/" + "\u00e9" * 130], "is too long for the name of its video folder (268 bytes"),
    (["--env-prefix", "walkto=new_embodimnt"], "--env-prefix walkto=new_embodimnt: Unknown embodiment tag"),
])
def test_rollout_flag_mistakes_are_one_line_before_anything_is_made(tmp_path, capsys, extra, expected):
    out = tmp_path / "out"
    assert main([*ROLLOUT, "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "DEBUG shows the traceback" not in err and "pip install" not in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("kwarg, expected", [
    ("noise=NaN", "noise=NaN: noise is not a finite number; a JSON number must be finite"),
    ("noise=-Infinity", "to pass the text, quote it: noise='\"-Infinity\"'"),
    ("bounds=[0, Infinity]", "bounds=[0, Infinity]: bounds[1] is not a finite number"),
    ('camera={"fov": NaN}', "camera.fov is not a finite number"),
])
def test_an_env_kwarg_that_is_no_finite_json_number_is_refused_naming_it(tmp_path, capsys, kwarg, expected):
    """json read NaN as a number: run.json and results.json saved null, and a --resume rebuilt the env with None."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main([*ROLLOUT, "--output-dir", str(out), "--env-kwarg", kwarg])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --env-kwarg" in err and expected in err, err
    assert not out.exists()


def test_rollout_help_says_n_episodes_is_per_task(capsys):
    """It said "episodes to run, exactly", while each task of a list or suite runs that many."""
    with pytest.raises(SystemExit):
        main(["rollout", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("episodes per task (each task of a comma-separated --env-name or a suite runs this many; default 50; at "
            "most 1,000,000 per task)") in help_text
    assert "episodes to run, exactly" not in help_text


def test_an_env_kwarg_quoted_as_json_text_is_taken(tmp_path):
    from gr00t_eval.cli import _parse_kwarg

    assert _parse_kwarg('noise="NaN"') == ("noise", "NaN")


def test_resume_of_a_missing_folder_is_one_plain_line(tmp_path, capsys):
    assert main(["rollout", "--resume", str(tmp_path / "nowhere"), "--policy-client-port", "9"]) == 2
    err = capsys.readouterr().err
    assert "no run.json there" in err and "OutputDirError" not in err and "DEBUG" not in err


def test_a_malformed_seed_variable_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GR00T_EVAL_SEED", "1_0")
    assert main([*ROLLOUT, "--output-dir", str(tmp_path / "out")]) == 2
    assert "$GR00T_EVAL_SEED must be a whole number >= 0, got '1_0'" in capsys.readouterr().err


def test_open_loop_names_a_key_variable_and_claims_nothing(tmp_path, capsys, monkeypatch):
    from eval.dataset_factory import make_dataset

    dataset = make_dataset(tmp_path / "dataset")
    out = tmp_path / "out"
    args = ["open-loop", "--dataset-path", str(dataset), "--output-dir", str(out), "--port", "9", "--timeout-ms", "300"]
    monkeypatch.setenv("GR00T_CLIENT_KEY", str(tmp_path / "client.key_secret"))
    assert main(args) == 2
    assert "--client-key (from $GR00T_CLIENT_KEY) needs --server-public-key" in capsys.readouterr().err
    monkeypatch.delenv("GR00T_CLIENT_KEY")
    assert main(args) == 2  # no server: refused for that, and the folder is left free for the run that follows
    assert "no policy server answered" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("argv, expected", [
    (["record", "--env-name", "metaworld/reach-v3", "--output", "x", "--camera", ""], "--camera must not be empty"),
    (["record", "--env-name", "metaworld/reach-v3", "--output", "x", "--episodes", "0"], "--episodes must be >= 1, got 0"),
])
def test_empty_names_and_record_counts_are_refused_by_their_flags(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_batch_job_names_why_its_server_did_not_answer():
    import socket

    from gr00t_eval.batch import PolicyServerAddress, connect

    name = "no-such-policy-host.invalid"
    try:
        socket.getaddrinfo(name, 5555)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            pytest.skip("this machine's resolver cannot answer at all (temporary failure)")
    with pytest.raises(ConnectionError, match=f"cannot connect to the policy server at .*: host '{name}' does not resolve"):
        connect(PolicyServerAddress(name, 5555, None, 15000, None, None))


@pytest.mark.parametrize("flags, expected", [
    (["--server-public-key", ""], "--server-public-key (or $GR00T_SERVER_PUBLIC_KEY) is empty: an unset variable?"),
    (["--server-public-key", "server.key", "--client-key", " "], "--client-key (or $GR00T_CLIENT_KEY) is empty"),
    (["--api-token", ""], "--api-token (or $GR00T_API_TOKEN) is empty: an unset variable?"),
])
def test_an_empty_curve_key_or_token_flag_is_one_line_with_exit_2_and_claims_nothing(tmp_path, capsys, flags, expected):
    from eval.dataset_factory import make_dataset

    out = tmp_path / "out"
    assert main(["open-loop", "--dataset-path", str(make_dataset(tmp_path / "dataset")), "--output-dir", str(out),
                 "--port", "9", "--timeout-ms", "300", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not out.exists() or list(out.iterdir()) == []


def test_a_blank_api_token_is_refused_before_connecting_not_sent_over_the_variables(tmp_path, capsys, monkeypatch):
    """`rollout --api-token "$TOKEN"` with TOKEN unset sent no token although $GR00T_API_TOKEN held the right one."""
    monkeypatch.setenv("GR00T_API_TOKEN", "right")
    assert main(["rollout", "--env-name", "metaworld/reach-v3", "--policy-client-port", "9", "--timeout-ms", "300",
                 "--n-episodes", "1", "--no-video", "--output-dir", str(tmp_path / "run"), "--api-token", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert "--api-token (or $GR00T_API_TOKEN) is empty: an unset variable?" in err and len(err.splitlines()) == 1


def _open_loop(tmp_path, *flags):
    from eval.dataset_factory import make_dataset

    dataset = tmp_path / "dataset"
    if not dataset.exists():
        make_dataset(dataset)
    return main(["open-loop", "--dataset-path", str(dataset), "--output-dir", str(tmp_path / "out"), "--port", "9",
                 "--timeout-ms", "300", *flags])


def test_a_z85_client_key_typed_as_the_flag_is_warned_about_once_and_the_variable_is_not(tmp_path, caplog, monkeypatch):
    """Every user of the machine reads a command line in ps for as long as the run lasts."""
    import zmq

    server_public, _ = zmq.curve_keypair()
    _, client_secret = zmq.curve_keypair()
    with caplog.at_level("WARNING"):
        # the `=` form: a z85 key may start with '-', which argparse would read as a flag
        assert _open_loop(tmp_path, f"--server-public-key={server_public.decode()}",
                          f"--client-key={client_secret.decode()}") == 2
    assert caplog.text.count("--client-key holds a z85 secret key, which other users of this machine can read in ps "
                             "while this runs; pass a .key_secret file instead, or the key in $GR00T_CLIENT_KEY") == 1
    caplog.clear()
    monkeypatch.setenv("GR00T_CLIENT_KEY", client_secret.decode())
    with caplog.at_level("WARNING"):
        assert _open_loop(tmp_path, f"--server-public-key={server_public.decode()}") == 2
    assert "ps while this runs" not in caplog.text


def test_the_servers_own_key_pair_as_the_client_key_is_refused_naming_both_flags(tmp_path, capsys):
    import zmq.auth

    public, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    assert _open_loop(tmp_path, "--server-public-key", public, "--client-key", secret) == 2
    err = capsys.readouterr().err.strip()
    assert ("--server-public-key and --client-key are one key pair (SHA256:" in err
            and "either --server-public-key is this client's own public key (pass the server's .key file, e.g. "
                "server.key, instead), or --client-key is the server's own key pair (the server's secret key must stay "
                "on the server; make this client its own pair with `gr00t-server keygen --name ROBOT`") in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
