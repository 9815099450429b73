"""A resume without the --env-import/--env-prefix/--env-adapter flags its run was started with ran anyway: every
task failed with "unknown prefix", exit 1, and an interrupted run's results.json and eval_info.json were rewritten
as "incomplete" with a failed task. The run file now records the flags, and such a resume is refused before
anything runs, naming the flags to add; with them it completes. Real CLI processes against a loopback server."""

from __future__ import annotations

import json
import signal

import pytest

from eval.scale_fixtures import policy_server
from test_run_outputs import SMALL, SlowPolicy, _eval_process, _wait_for_episodes

# walkto's adapter under a prefix registered only by these flags (eval.scale_fixtures registers "walkto" itself)
FLAGS = ["--env-prefix", "fleeting=new_embodiment", "--env-adapter", "fleeting=eval.scale_fixtures:make_walkto_env"]


def finished(process, timeout=120):
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.mark.slow
def test_a_resume_without_the_runs_env_registrations_is_refused_naming_them_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    with policy_server(SlowPolicy()) as server:
        server_flags = ["--policy-client-port", str(server.port), "--timeout-ms", "5000"]
        first = _eval_process(["rollout", "--env-name", "fleeting/slow", "--n-episodes", "6", "--seed", "3", *SMALL,
                               *server_flags, "--output-dir", str(out), *FLAGS])
        _wait_for_episodes(out / "episodes.jsonl", 2, first)
        first.send_signal(signal.SIGINT)
        assert finished(first)[0] == 130
        saved = {name: (out / name).read_bytes() for name in ("results.json", "eval_info.json", "episodes.jsonl")}
        assert json.loads(saved["results.json"])["status"] == "interrupted"
        assert json.loads((out / "run.json").read_text())["registrations"] == {
            "env_import": [], "env_prefix": [["fleeting", "new_embodiment"]],
            "env_adapter": [["fleeting", "eval.scale_fixtures:make_walkto_env"]]}

        code, output = finished(_eval_process(["rollout", "--resume", str(out), *server_flags]))
        assert code == 2, output
        assert f"--resume {out}: env name 'fleeting/slow': unknown prefix 'fleeting'" in output
        assert (f"this run was started with {' '.join(FLAGS)}: resume it with those flags too") in output
        assert {name: (out / name).read_bytes() for name in saved} == saved

        code, output = finished(_eval_process(["rollout", "--resume", str(out), *server_flags, *FLAGS]))
    assert code == 0, output
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["overall"]["n_episodes"] == 6
    assert not results["failed_tasks"]


def test_a_run_file_from_before_registrations_were_recorded_gets_the_generic_advice(tmp_path, capsys):
    from gr00t_eval import cli

    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"env_name": "fleeting2/slow", "config": {"env_name": "fleeting2/slow", "n_episodes": 2, "seed": 1}}))
    assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", "9"]) == 2
    err = capsys.readouterr().err
    assert "unknown prefix 'fleeting2'" in err
    assert "resume it with the --env-import/--env-prefix/--env-adapter flags the run was started with" in err


ADAPTER = ["--env-adapter", "walkto=eval.scale_fixtures:make_walkto_env"]  # another adapter for a registered prefix
RUN = ["--env-name", "walkto/fast", "--n-episodes", "2", "--seed", "0", *SMALL]


@pytest.mark.parametrize("shard", [[], ["--shard", "1/2"]], ids=["run", "shard"])
def test_a_resume_given_other_env_registrations_than_its_run_is_refused_naming_the_runs(tmp_path, capsys, shard):
    """It ran: one env name built another env, and the run pooled both envs' episodes into one result."""
    from gr00t_eval import cli

    out = tmp_path / "run"
    with policy_server() as server:
        port = ["--policy-client-port", str(server.port)]
        assert cli.main(["rollout", *RUN, *port, "--output-dir", str(out), *shard]) == 0
        # the results and episode log (the run file's claim is the resume's to take)
        saved = {path.name: path.read_bytes() for path in out.iterdir() if path.name.startswith(("results", "episodes"))}
        capsys.readouterr()
        assert cli.main(["rollout", "--resume", str(out), *port, *shard, *ADAPTER]) == 2
    err = capsys.readouterr().err
    assert (f"--resume {out}: this run was started with no --env-import/--env-prefix/--env-adapter flags, but this "
            f"command line gives {' '.join(ADAPTER)}") in err
    assert len(err.strip().splitlines()) == 1, err
    assert {name: (out / name).read_bytes() for name in saved} == saved and len(saved) >= 2


def test_a_resume_without_the_adapter_its_run_gave_a_registered_prefix_is_refused_naming_it(tmp_path, capsys):
    """The prefix is known without the flag, so no "unknown prefix" stopped it: the built-in env would have run."""
    from gr00t_eval import cli

    out = tmp_path / "run"
    with policy_server() as server:
        port = ["--policy-client-port", str(server.port)]
        assert cli.main(["rollout", *RUN, *port, "--output-dir", str(out), *ADAPTER]) == 0
        capsys.readouterr()
        assert cli.main(["rollout", "--resume", str(out), *port]) == 2
        assert f"this run was started with {' '.join(ADAPTER)}, but this command line gives none" in capsys.readouterr().err
        assert cli.main(["rollout", "--resume", str(out), *port, *ADAPTER]) == 0


PREFIXES = ["--env-prefix", "alpha=new_embodiment", "--env-prefix", "walkto=new_embodiment"]
FLEETING = ["--env-adapter", "fleeting=eval.scale_fixtures:make_walkto_env"]


@pytest.mark.parametrize("started, resumed, env_name", [
    (PREFIXES, PREFIXES[2:] + PREFIXES[:2], "walkto/fast"),
    (["--env-import", "eval.scale_fixtures"], ["--env-import", "eval.scale_fixtures"] * 2, "walkto/fast"),
    (["--env-prefix", "walkto=new_embodiment"], ["--env-prefix", "walkto=NEW_EMBODIMENT"], "walkto/fast"),
    (FLEETING, [*FLEETING, "--env-prefix", "fleeting=new_embodiment"], "fleeting/fast"),
], ids=["other-order", "repeated-import", "tag-in-another-case", "flag-that-changes-nothing"])
def test_a_resume_given_flags_that_register_the_same_envs_as_its_run_resumes(tmp_path, capsys, started, resumed,
                                                                             env_name):
    """Its flags were compared as text: the same two --env-prefix flags in another order were refused, named twice."""
    from gr00t_eval import cli

    out = tmp_path / "run"
    with policy_server() as server:
        port = ["--policy-client-port", str(server.port)]
        run = ["--env-name", env_name, "--n-episodes", "2", "--seed", "0", *SMALL]
        assert cli.main(["rollout", *run, *port, "--output-dir", str(out), "--shard", "0/2", *started]) == 0
        capsys.readouterr()
        code = cli.main(["rollout", "--resume", str(out), *port, "--shard", "0/2", *resumed])
    assert code == 0, capsys.readouterr().err


@pytest.mark.slow
def test_merge_names_a_killed_shard_with_a_resume_command_that_gives_its_registration_flags_and_runs(tmp_path, capsys):
    """The command lacked the shard's --env-prefix/--env-adapter flags, so running it as printed was refused."""
    import re
    import shlex

    from gr00t_eval import cli

    out = tmp_path / "shards"
    run = ["--env-name", "fleeting/slow", "--n-episodes", "8", "--seed", "3", *SMALL]
    with policy_server(SlowPolicy()) as server:
        server_flags = ["--policy-client-port", str(server.port), "--timeout-ms", "5000"]
        assert cli.main(["rollout", *run, *server_flags, "--output-dir", str(out), "--shard", "0/2", *FLAGS]) == 0
        killed = _eval_process(["rollout", *run, *server_flags, "--output-dir", str(out), "--shard", "1/2", *FLAGS])
        _wait_for_episodes(out / "episodes_shard1of2.jsonl", 1, killed)
        killed.kill()
        killed.communicate()
        capsys.readouterr()
        merge = ["merge", str(out), "--output", str(out / "merged.json"), "--allow-missing"]
        assert cli.main(merge) == 1
        printed = re.search(r"killed: continue it with (gr00t-eval rollout --resume \S+ --shard 1/2[^)]*)\)",
                            capsys.readouterr().out)
        assert printed and printed.group(1).endswith(f"--shard 1/2 {' '.join(FLAGS)}"), printed
        assert cli.main([*shlex.split(printed.group(1))[1:], *server_flags]) == 0
    assert json.loads((out / "results_shard1of2.json").read_text())["overall"]["n_episodes"] == 4


def test_flags_beside_an_imported_module_count_as_given_since_it_may_register_prefixes_itself():
    """An --env-import module may register a prefix itself: flags that set a built-in's own tag and adapter for it
    (or leave an adapter's tag to a default) then change what it registered, and were dropped as changing nothing."""
    from gr00t_eval.rollout_args import registered_envs

    adapter = "gr00t_eval.rollout.adapters.pusht:make_pusht_env"
    alone = {"env_import": ["myenvs"]}
    built_in_again = {"env_import": ["myenvs"], "env_prefix": [["pusht", "new_embodiment"]],
                      "env_adapter": [["pusht", adapter]]}
    assert registered_envs(alone) != registered_envs(built_in_again)
    tag_left = {"env_import": ["myenvs"], "env_adapter": [["foo", "myenvs:make_env"]]}
    tag_given = {**tag_left, "env_prefix": [["foo", "new_embodiment"]]}
    assert registered_envs(tag_left) != registered_envs(tag_given)
    # without an import the built-in tables say what changes: the same flags again change nothing
    assert registered_envs({"env_prefix": [["pusht", "NEW_EMBODIMENT"]], "env_adapter": [["pusht", adapter]]}) == \
        registered_envs({})


def test_what_registration_flags_register_does_not_depend_on_gymnasium_being_installed():
    """Without gymnasium the built-in tables read as empty: a merge pooled shards of other tags there, and refused
    flags that change nothing, where a machine with gymnasium did the opposite."""
    import subprocess
    import sys

    code = ("import sys, json; BLOCK from gr00t_eval.rollout_args import registered_envs; "
            "print(json.dumps([registered_envs({'env_adapter': [['libero_sim', 'mymod:make_env']]}), "
            "registered_envs({'env_prefix': [['libero_sim', 'libero_panda']]})]))")
    seen = [subprocess.run([sys.executable, "-c", code.replace("BLOCK", block)], capture_output=True, text=True, check=True,
                           timeout=120).stdout for block in ("", "sys.modules['gymnasium'] = None;")]
    assert seen[0] == seen[1], seen
    from gr00t_client import EmbodimentTag

    assert json.loads(seen[0])[0]["envs"] == {"libero_sim": [EmbodimentTag.LIBERO_PANDA.value, "mymod:make_env"]}


def test_a_run_file_whose_registrations_cannot_be_read_is_named_not_read_as_no_flags(tmp_path, capsys):
    """A damaged run file's registrations were read as "no flags" (a pair of three) or letter by letter (a str):
    the refusal told the user to resume with flags the run never had."""
    from gr00t_eval import cli

    out = tmp_path / "damaged"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({
        "env_name": "metaworld/reach-v3", "registrations": {"env_import": "abc", "env_prefix": [], "env_adapter": []},
        "config": {"env_name": "metaworld/reach-v3", "n_episodes": 2, "seed": 1}}))
    assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", "9"]) == 2
    error = capsys.readouterr().err
    assert "the run file's 'registrations' cannot be read (env_import is 'abc', expected a list of module names)" \
        in error, error
