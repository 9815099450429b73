"""`gr00t-eval merge` is as honest as a single run: shards of different control loops are refused, and errored or
missing episodes show on the console, in the exit status and in the merged status. Real shards on a loopback
PolicyServer, the real CLI."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval import cli
from serving import running_server


class RefusingResetPolicy(ConstantPolicy):
    """ConstantPolicy whose reset refuses episode 1 (as a replay server of a stale dataset copy would)."""

    def reset(self, options=None):
        episodes = (options or {}).get("episode_index")
        if 1 in (episodes if isinstance(episodes, list) else [episodes]):
            raise IndexError("episode_index 1 out of range")
        return {}


class BrokenPolicy(ConstantPolicy):
    """Every call fails, as a broken checkpoint or a camera the policy lacks makes it."""

    def _get_action(self, observation, options=None):
        raise RuntimeError("broken checkpoint")


@pytest.fixture(scope="module")
def server():
    with running_server(ConstantPolicy()) as running:
        yield running


@pytest.fixture(scope="module")
def refusing_server():
    with running_server(RefusingResetPolicy()) as running:
        yield running


def shard(port, out, index, *extra):
    return cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
                     "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video",
                     "--policy-client-port", str(port), "--shard", f"{index}/2", "--output-dir", str(out), *extra])


def merge(out, *extra):
    return cli.main(["merge", str(out), "--output", str(out / "merged.json"), *extra])


def test_shards_run_with_different_client_chunking_are_refused_naming_the_setting(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0
    assert shard(server.port, out, 1, "--client-chunking", "sync") == 0
    capsys.readouterr()
    assert merge(out) == 2
    err = capsys.readouterr().err
    assert "setting client_chunking 'sync' ('off' in the first)" in err
    assert not (out / "merged.json").exists()
    settings = json.loads((out / "results_shard0of2.json").read_text())["plan"]["settings"]
    assert (settings["client_chunking"], settings["chunk_merge"], settings["rtc_frozen_steps"]) == ("off", "newest", None)


def test_an_errored_episode_in_a_merged_shard_is_reported_and_fails_the_merge(refusing_server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(refusing_server.port, out, 0) == 1  # episodes 0 and 1: episode 1's reset is refused
    assert shard(refusing_server.port, out, 1) == 0  # episodes 2 and 3 (one policy: shards of two do not merge)
    capsys.readouterr()
    assert merge(out) == 1
    console = capsys.readouterr().out
    assert "episode 1 of walkto/fast errored: " in console
    assert "INCOMPLETE: 1 of 4 episodes errored; the metrics above are over the 3 that finished" in console
    assert "exit status 1 because episodes errored (pass --allow-errors" in console
    merged = json.loads((out / "merged.json").read_text())
    assert merged["overall"]["n_errors"] == 1 and merged["status"] == "complete"  # all ran, as a single run reports
    assert merge(out, "--allow-errors") == 0


def test_allow_errors_does_not_pass_a_run_or_merge_in_which_every_episode_errored(tmp_path, capsys):
    """--allow-errors tolerates an errored episode; a run that scored none exited 0 with it (success rate n/a), where
    open-loop already exits 1 when nothing was scored."""
    out = tmp_path / "shards"
    with running_server(BrokenPolicy()) as broken:
        assert shard(broken.port, out, 0, "--allow-errors") == 1
        assert shard(broken.port, out, 1, "--allow-errors") == 1
    console = capsys.readouterr().out
    assert "exit status 1 because every episode errored: nothing was scored (--allow-errors tolerates" in console
    assert json.loads((out / "results_shard0of2.json").read_text())["status"] == "complete"  # all ran, all errored
    assert merge(out, "--allow-errors") == 1
    assert "exit status 1 because every episode errored: nothing was scored" in capsys.readouterr().out


def test_a_merge_with_missing_episodes_is_incomplete_in_its_files_console_and_exit_status(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0
    capsys.readouterr()
    assert merge(out, "--allow-missing") == 1
    console = capsys.readouterr().out
    assert "INCOMPLETE: 2 episodes are in no results file (merged with --allow-missing); 2 episodes did not run: " \
           "walkto/fast#2, walkto/fast#3" in console
    merged = json.loads((out / "merged.json").read_text())
    assert merged["status"] == "incomplete" and merged["n_not_run"] == 2
    assert merged["missing_episodes"] == ["walkto/fast#2", "walkto/fast#3"]
    assert json.loads((out / "eval_info.json").read_text())["status"] == "incomplete"


def test_a_merge_of_every_shard_without_errors_is_complete_and_exits_0(server, tmp_path):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    assert merge(out) == 0
    merged = json.loads((out / "merged.json").read_text())
    assert merged["status"] == "complete" and merged["n_not_run"] == 0 and merged["overall"]["n_episodes"] == 4


# --- shards written before a setting existed ----------------------------------------------------------------


def forget_chunking_settings(results_file):
    """Make a results file look written before client_chunking, chunk_merge and rtc_frozen_steps were recorded."""
    data = json.loads(results_file.read_text())
    for name in ("client_chunking", "chunk_merge", "rtc_frozen_steps"):
        del data["plan"]["settings"][name]
    results_file.write_text(json.dumps(data))


def test_a_shard_written_before_the_chunking_settings_merges_with_one_that_records_their_defaults(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    forget_chunking_settings(out / "results_shard0of2.json")
    assert merge(out) == 0, capsys.readouterr().err
    merged = json.loads((out / "merged.json").read_text())
    assert merged["status"] == "complete" and merged["overall"]["n_episodes"] == 4
    settings = merged["plan"]["settings"]
    assert (settings["client_chunking"], settings["chunk_merge"], settings["rtc_frozen_steps"]) == ("off", "newest", None)


def test_a_shard_written_before_the_chunking_settings_is_refused_beside_a_non_default_one(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0
    assert shard(server.port, out, 1, "--client-chunking", "sync") == 0
    forget_chunking_settings(out / "results_shard0of2.json")
    capsys.readouterr()
    assert merge(out) == 2
    assert "setting client_chunking 'sync' ('off' in the first)" in capsys.readouterr().err


def write_as_before_the_plan_recorded_chunking(results_file, config=True):
    """Make a results file look written by a gr00t-eval of 2026-11-21 to 12-01, which had --client-chunking,
    --chunk-merge and --rtc-frozen-steps and wrote them in `config` but not in `plan.settings` (nor n_envs); with
    `config` False, one without a config either (nothing records what it ran with)."""
    data = json.loads(results_file.read_text())
    for name in ("client_chunking", "chunk_merge", "rtc_frozen_steps", "n_envs"):
        data["plan"]["settings"].pop(name, None)
    if not config:
        data["config"] = None
    results_file.write_text(json.dumps(data))


def test_an_older_shard_is_held_to_the_client_chunking_its_config_records_when_its_plan_does_not(server, tmp_path,
                                                                                                  capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0, "--client-chunking", "sync") == 0
    assert shard(server.port, out, 1) == 0
    write_as_before_the_plan_recorded_chunking(out / "results_shard0of2.json")
    capsys.readouterr()
    assert merge(out) == 2
    assert "setting client_chunking 'off' ('sync' in the first)" in capsys.readouterr().err
    assert not (out / "merged.json").exists()


def test_an_older_shard_merges_with_a_shard_of_the_client_chunking_its_config_records(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0, "--client-chunking", "sync") == 0
    assert shard(server.port, out, 1, "--client-chunking", "sync") == 0
    write_as_before_the_plan_recorded_chunking(out / "results_shard0of2.json")
    assert merge(out) == 0, capsys.readouterr().err
    merged = json.loads((out / "merged.json").read_text())
    assert merged["status"] == "complete" and merged["overall"]["n_episodes"] == 4
    settings = merged["plan"]["settings"]
    assert (settings["client_chunking"], settings["n_envs"]) == ("sync", 1) == (merged["config"]["client_chunking"],
                                                                                merged["config"]["n_envs"])


def test_a_shard_recording_its_settings_nowhere_is_refused_as_not_recorded_beside_one_that_records_them(
        server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    write_as_before_the_plan_recorded_chunking(out / "results_shard0of2.json", config=False)
    capsys.readouterr()
    assert merge(out) == 2
    assert ("setting chunk_merge 'newest' (not recorded (written by an older gr00t-eval) in the first"
            in capsys.readouterr().err)


def test_auto_n_envs_shards_of_two_machines_record_the_envs_they_ran_with_so_sync_chunking_merge_refuses_them(
        server, tmp_path, monkeypatch, capsys):
    """Each shard recorded n_envs 0, not the 4 and 1 envs it ran with, and merge pooled them without a word."""
    out = tmp_path / "shards"
    for index, cores in ((0, 8), (1, 2)):  # floor(cores * 0.7) capped by the 4 episodes per task: 4 and 1 envs
        monkeypatch.setattr("gr00t_eval.suites.usable_cpu_count", lambda cores=cores: cores)
        assert shard(server.port, out, index, "--n-envs", "0", "--client-chunking", "sync") == 0
    plans = [json.loads((out / f"results_shard{i}of2.json").read_text())["plan"] for i in (0, 1)]
    assert [plan["settings"]["n_envs"] for plan in plans] == [4, 1]
    capsys.readouterr()
    assert merge(out) == 2
    assert "setting n_envs 1 (4 in the first; with client_chunking 'sync'" in capsys.readouterr().err
    assert not (out / "merged.json").exists()


def test_a_resumed_auto_n_envs_shard_keeps_the_number_of_envs_its_run_file_recorded(server, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    monkeypatch.setattr("gr00t_eval.suites.usable_cpu_count", lambda: 8)
    assert shard(server.port, out, 0, "--n-envs", "0", "--client-chunking", "sync") == 0
    assert json.loads((out / "run_shard0of2.json").read_text())["config"]["n_envs"] == 4
    monkeypatch.setattr("gr00t_eval.suites.usable_cpu_count", lambda: 2)  # resumed on a smaller machine
    assert cli.main(["rollout", "--resume", str(out), "--shard", "0/2", "--policy-client-port", str(server.port)]) == 0
    assert json.loads((out / "results_shard0of2.json").read_text())["plan"]["settings"]["n_envs"] == 4


def record_auto_n_envs(results_file):
    """Make a sync-chunking results file look written by a gr00t-eval that recorded --n-envs 0 as 0."""
    data = json.loads(results_file.read_text())
    data["plan"]["settings"]["n_envs"] = 0
    results_file.write_text(json.dumps(data))


def test_shards_of_an_earlier_version_that_recorded_auto_n_envs_merge_with_a_warning_that_says_why(
        server, tmp_path, caplog):
    out = tmp_path / "shards"
    for index in (0, 1):
        assert shard(server.port, out, index, "--client-chunking", "sync") == 0
        record_auto_n_envs(out / f"results_shard{index}of2.json")
    assert merge(out) == 0
    assert "record n_envs 0 (--n-envs auto, by an earlier gr00t-eval), not the number of envs each ran with" in caplog.text


def test_a_shard_of_an_earlier_version_that_recorded_auto_n_envs_is_refused_beside_one_that_records_its_envs(
        server, tmp_path, capsys):
    out = tmp_path / "shards"
    for index in (0, 1):
        assert shard(server.port, out, index, "--client-chunking", "sync") == 0
    record_auto_n_envs(out / "results_shard0of2.json")
    capsys.readouterr()
    assert merge(out) == 2
    assert ("setting n_envs 1 (0 in the first; with client_chunking 'sync' the number of envs changes what an episode "
            "does; 0 is --n-envs auto recorded by an earlier gr00t-eval") in capsys.readouterr().err


def test_the_missing_episodes_of_a_merge_are_shown_ten_at_most():
    from gr00t_eval.shard import format_missing

    missing = [f"t#{i}" for i in range(13)]
    assert format_missing(missing) == ", ".join(missing[:10]) + " and 3 more"
    assert format_missing(missing[:2]) == "t#0, t#1" and format_missing([]) == ""


ADAPTER = ["--env-adapter", "walkto=eval.scale_fixtures:make_walkto_env"]


def test_shards_run_with_different_env_registrations_are_refused_naming_both(server, tmp_path, capsys):
    """One env name may be two envs (a built-in one, and a user's --env-adapter for its prefix): merge pooled them."""
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0
    assert shard(server.port, out, 1, *ADAPTER) == 0
    assert json.loads((out / "results_shard1of2.json").read_text())["plan"]["registrations"] == {
        "env_import": [], "env_prefix": [], "env_adapter": [["walkto", "eval.scale_fixtures:make_walkto_env"]]}
    capsys.readouterr()
    assert merge(out) == 2
    err = capsys.readouterr().err
    assert ("env registrations --env-adapter walkto=eval.scale_fixtures:make_walkto_env (none in the first: the same "
            "env names may be other envs)") in err
    assert not (out / "merged.json").exists()


def test_a_shard_written_before_env_registrations_were_recorded_merges_with_one_that_records_none(server, tmp_path):
    out = tmp_path / "shards"
    assert shard(server.port, out, 0) == 0 and shard(server.port, out, 1) == 0
    path = out / "results_shard0of2.json"
    results = json.loads(path.read_text())
    assert results["plan"].pop("registrations") == {"env_import": [], "env_prefix": [], "env_adapter": []}
    path.write_text(json.dumps(results))
    assert merge(out) == 0
    assert json.loads((out / "merged.json").read_text())["status"] == "complete"


def test_shards_run_with_the_same_env_registrations_in_another_order_merge(server, tmp_path):
    """Their flags were compared as text: one env registration given in another order refused the merge."""
    out = tmp_path / "shards"
    first, second = ["--env-prefix", "alpha=new_embodiment"], ["--env-prefix", "walkto=NEW_EMBODIMENT"]
    assert shard(server.port, out, 0, *first, *second, *ADAPTER) == 0
    assert shard(server.port, out, 1, *ADAPTER, *second, *first, "--env-prefix", "walkto=new_embodiment") == 0
    assert merge(out) == 0
    assert json.loads((out / "merged.json").read_text())["status"] == "complete"


def test_a_shard_written_before_env_registrations_were_recorded_is_said_to_record_none_not_to_have_run_none(
        server, tmp_path, capsys):
    """It was said to have run with "none": it may have run with the other shard's flags, which nothing recorded."""
    out = tmp_path / "shards"
    assert shard(server.port, out, 0, *ADAPTER) == 0 and shard(server.port, out, 1, *ADAPTER) == 0
    path = out / "results_shard0of2.json"
    results = json.loads(path.read_text())
    del results["plan"]["registrations"]  # as a gr00t-eval before they were recorded wrote it
    path.write_text(json.dumps(results))
    capsys.readouterr()
    assert merge(out) == 2
    err = capsys.readouterr().err
    assert ("env registrations --env-adapter walkto=eval.scale_fixtures:make_walkto_env (not recorded (written by an "
            "older gr00t-eval) in the first: the same env names may be other envs); rerun the first with this "
            "gr00t-eval and the --env-import/--env-prefix/--env-adapter flags it was run with") in err
    assert "none in the first" not in err


def test_a_shard_whose_task_failed_is_named_with_its_resume_command_and_the_count_said_once(server, tmp_path, capsys):
    """It said "1 of 2 tasks failed (walkto/nope); 2 episodes did not run; 2 episodes did not run", naming no shard."""
    out = tmp_path / "shards"
    assert cli.main(["rollout", "--env-name", "walkto/fast,walkto/nope", "--n-episodes", "2", "--n-envs", "1",
                     "--vectorization", "sync", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0",
                     "--no-video", "--policy-client-port", str(server.port), "--shard", "0/1",
                     "--output-dir", str(out)]) == 1
    capsys.readouterr()
    assert merge(out) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("INCOMPLETE"))
    assert line.startswith("INCOMPLETE: 1 of 2 tasks failed (walkto/nope); 2 episodes did not run; ")
    assert (f"{out / 'results_shard0of1.json'} is an incomplete run: continue it with gr00t-eval rollout --resume {out} "
            "--shard 0/1") in line
    assert line.count("2 episodes did not run") == 1, line
    assert json.loads((out / "merged.json").read_text())["status"] == "incomplete"
