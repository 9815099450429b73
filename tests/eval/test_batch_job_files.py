"""`gr00t-eval batch` and the files it reads back: a resume keeps a done record only for the job it describes and
needs no token for it, starts from jobs.json when the first batch_results.json could not be written, and job files,
episode logs and batch records that cannot be read are refused or skipped naming the file. Real PolicyServers on
loopback, real files, the real CLI."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from eval.scale_fixtures import ConstantPolicy, CountingPolicy, free_port, policy_server
from eval.test_disk_full import run_limited
from gr00t_eval import cli

SMALL = {"n_episodes": 3, "n_envs": 1, "seed": 0, "max_episode_steps": 6,
         "overrides": {"n_action_steps": 2, "vectorization": "sync", "video_dir": None}}


@pytest.fixture(scope="module")
def server():
    with policy_server() as running:
        yield running


def write_jobs(path, jobs, defaults=None):
    path.write_text(json.dumps({"defaults": SMALL if defaults is None else defaults, "jobs": jobs}))
    return path


def records(out):
    return json.loads((out / "batch_results.json").read_text())["jobs"]


def test_a_new_unnamed_job_inserted_above_a_done_one_runs_against_its_own_server(server, tmp_path, caplog):
    out = tmp_path / "out"
    old = {"env_name": "walkto/fast", "policy_server": {"port": server.port, "timeout_ms": 5000}}
    assert cli.main(["batch", "--jobs", str(write_jobs(tmp_path / "jobs.json", [old])), "--output-dir", str(out)]) == 0
    counting = CountingPolicy()
    with policy_server(counting) as other:
        new = {"env_name": "walkto/fast", "policy_server": {"port": other.port, "timeout_ms": 5000}}
        write_jobs(out / "jobs.json", [new, old])  # it takes the name job-0 of the done job
        assert cli.main(["batch", "--resume", str(out)]) == 0
    first, second = records(out)
    assert first["name"] == "job-0" and first["status"] == "done"
    assert first["policy_server"] == f"127.0.0.1:{other.port}" and second["policy_server"] == f"127.0.0.1:{server.port}"
    assert first["rerun_reason"] == (f"settings changed since it was done: policy_server '127.0.0.1:{server.port}' -> "
                                     f"'127.0.0.1:{other.port}'")
    assert counting.calls > 0  # run against its own server, not reported with the other job's results
    assert first["resumed_episodes"] == 0 and first["results"]["overall"]["n_episodes"] == 3
    assert any(f"job job-0: policy_server '127.0.0.1:{server.port}' -> '127.0.0.1:{other.port}' changed since it was "
               "done; running it again" in r.getMessage() for r in caplog.records)


def test_a_resume_keeps_a_done_jobs_results_without_its_token_variable(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with policy_server(api_token="s3cret") as secured:
        jobs = write_jobs(tmp_path / "jobs.json", [
            {"name": "secured", "env_name": "walkto/fast",
             "policy_server": {"port": secured.port, "api_token_env": "TEST_BATCH_TOKEN", "timeout_ms": 5000}},
            {"name": "gone", "env_name": "walkto/fast", "policy_server": {"port": free_port(), "timeout_ms": 300}}])
        monkeypatch.setenv("TEST_BATCH_TOKEN", "s3cret")
        assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 1
        before = {r["name"]: r for r in records(out)}
        assert before["secured"]["status"] == "done"
        monkeypatch.delenv("TEST_BATCH_TOKEN")  # a new shell, to rerun the failed job
        assert cli.main(["batch", "--resume", str(out)]) == 1
    after = {r["name"]: r for r in records(out)}
    assert after["secured"] == before["secured"]
    assert after["gone"]["status"] == "failed" and "did not answer 'ping'" in after["gone"]["reason"]


def test_a_job_whose_token_variable_is_unset_fails_as_it_runs_naming_the_variable(server, tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_BATCH_TOKEN", raising=False)
    jobs = write_jobs(tmp_path / "jobs.json", [
        {"name": "secured", "env_name": "walkto/fast",
         "policy_server": {"port": server.port, "api_token_env": "TEST_BATCH_TOKEN"}},
        {"name": "open", "env_name": "walkto/fast", "policy_server": {"port": server.port}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 1
    secured, opened = records(tmp_path / "out")
    assert secured["status"] == "failed" and opened["status"] == "done"
    assert "job 'secured': environment variable 'TEST_BATCH_TOKEN' (api_token_env) is not set" in secured["reason"]


_FIRST_WRITE_UNDER_LIMIT = """
sys.path.insert(0, sys.argv[2])
import eval.scale_fixtures  # registers the walkto envs
from gr00t_eval.cli import main
sys.exit(main(["--log-level", "WARNING", "batch", "--jobs", sys.argv[3], "--output-dir", sys.argv[4]]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
def test_a_batch_whose_first_results_file_cannot_be_written_says_so_and_its_resume_runs_the_jobs(server, tmp_path):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "batch"
    # jobs.json and batch.json fit under the file size limit; batch_results.json (every job's record) does not
    jobs = write_jobs(tmp_path / "jobs.json", [{"name": f"j{i}", "env_name": "walkto/fast"} for i in range(20)],
                      {**SMALL, "policy_server": {"port": server.port}})
    result = run_limited(2000, _FIRST_WRITE_UNDER_LIMIT, tests, str(jobs), str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "File too large" in last and "the batch stopped before any job started" in last, last
    assert "kept in" not in last and f"then continue with: gr00t-eval batch --resume {out}" in last
    assert not (out / "batch_results.json").exists() and (out / "jobs.json").is_file()
    assert cli.main(["batch", "--resume", str(out)]) == 0
    assert [(r["name"], r["status"]) for r in records(out)] == [(f"j{i}", "done") for i in range(20)]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
def test_a_job_file_copy_that_does_not_fit_names_it_leaves_no_part_of_it_and_the_same_command_runs(server, tmp_path):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out, jobs = tmp_path / "batch", tmp_path / "sweep.json"
    # batch.json fits under the file size limit, the job file's copy does not (a full disk while it is copied)
    write_jobs(jobs, [{"name": "j", "env_name": "walkto/fast"}], {**SMALL, "policy_server": {"port": server.port}})
    jobs.write_text(jobs.read_text() + " " * 6000)
    result = run_limited(4000, _FIRST_WRITE_UNDER_LIMIT, tests, str(jobs), str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"File too large writing {out / 'jobs.json'}" in last and "run the same command again" in last, last
    assert [path.name for path in out.iterdir() if "jobs" in path.name] == []  # no copy cut short, no partial
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    assert [(r["name"], r["status"]) for r in records(out)] == [("j", "done")]
    assert (out / "jobs.json").read_bytes() == jobs.read_bytes()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
def test_a_job_file_at_the_top_of_its_output_dir_is_not_written_over(server, tmp_path):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "batch"
    out.mkdir()
    jobs = write_jobs(out / "jobs.json", [{"name": "j", "env_name": "walkto/fast"}],
                      {**SMALL, "policy_server": {"port": server.port}})
    jobs.write_text(jobs.read_text() + " " * 6000)
    before = jobs.read_bytes()
    # a copy onto itself would be cut at the limit: the user's own job file lost
    run_limited(4000, _FIRST_WRITE_UNDER_LIMIT.replace('sys.argv[4]]', 'sys.argv[4], "--overwrite"]'), tests, str(jobs),
                str(out))
    assert jobs.read_bytes() == before


def test_a_resume_of_a_folder_without_batch_files_is_still_refused(tmp_path, capsys):
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": [{"env_name": "walkto/fast", "policy_server": {"port": 1}}]}))
    assert cli.main(["batch", "--resume", str(tmp_path)]) == 2
    assert "no batch_results.json and jobs.json there (is it a batch --output-dir?)" in capsys.readouterr().err
    assert not (tmp_path / "batch_results.json").exists()


@pytest.mark.parametrize("bad_job, field", [
    ({"name": "bad\ud800", "env_name": "walkto/fast"}, "'name' is 'bad\\ud800'"),
    ({"name": "bad", "env_name": "walkto/fast", "overrides": {"video_dir": "videos\udc80"}},
     "'overrides.video_dir' is 'videos\\udc80'"),
    ({"name": "bad", "env_name": "walkto/fast\ud800"}, "'env_name' is 'walkto/fast\\ud800'"),
])
def test_a_lone_surrogate_in_a_job_fails_that_job_naming_the_field(server, tmp_path, capsys, bad_job, field):
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"defaults": {**SMALL, "policy_server": {"port": server.port}},
                                "jobs": [{"name": "good", "env_name": "walkto/fast"}, bad_job]}))  # "\ud800" escaped
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 1
    good, bad = records(tmp_path / "out")
    assert good["status"] == "done" and bad["status"] == "failed"
    assert field in bad["reason"] and "lone surrogate" in bad["reason"], bad["reason"]
    printed = capsys.readouterr().out
    assert "Results:" in printed and "lone surrogate" in printed  # the table


@pytest.mark.parametrize("text, key, where", [
    ('{"jobs": [{"name": "first", "env_name": "walkto/fast"}], "jobs": [{"name": "second", "env_name": "walkto/fast"}]}',
     "jobs", ""),
    ('{"jobs": [{"name": "j", "env_name": "walkto/fast", "n_episodes": 2, "n_episodes": 50}]}', "n_episodes",
     " (at jobs[0])"),
])
def test_a_key_given_twice_in_the_job_file_is_refused_naming_it_and_the_file(tmp_path, capsys, text, key, where):
    jobs = tmp_path / "jobs.json"
    jobs.write_text(text)
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{jobs}: key {key!r} is given twice in one object{where}; give each key once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_a_job_file_that_is_not_utf8_is_refused_naming_it(tmp_path, capsys, encoding):
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"jobs": [{"name": "café", "env_name": "walkto/fast", "policy_server": {"port": 1}}]},
                               ensure_ascii=False), encoding=encoding)
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{jobs}: not UTF-8 (" in err and "a job file must be UTF-8 JSON" in err, err


def test_an_edited_jobs_json_that_is_not_utf8_is_refused_on_resume_naming_it(server, tmp_path, capsys):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", [{"name": "café", "env_name": "walkto/fast",
                                                "policy_server": {"port": server.port}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    (out / "jobs.json").write_text(jobs.read_text().replace("\\u00e9", "\u00e9"), encoding="latin-1")
    capsys.readouterr()
    assert cli.main(["batch", "--resume", str(out)]) == 2
    assert f"{out / 'jobs.json'}: not UTF-8 (" in capsys.readouterr().err


def test_a_job_file_nested_too_deeply_is_refused_naming_it(tmp_path, capsys):
    jobs = tmp_path / "jobs.json"
    jobs.write_text("[" * 100000 + "]" * 100000)
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"{jobs}: nested too deeply to read; a job file must be UTF-8 JSON" in capsys.readouterr().err


def _pending_again(out):
    """The batch in `out` as a kill leaves it while its job 'a' runs: 'a' pending, its results.json not written."""
    batch = json.loads((out / "batch_results.json").read_text())
    batch["jobs"][0]["status"] = "pending"
    (out / "batch_results.json").write_text(json.dumps(batch))
    (out / "jobs" / "a" / "results.json").unlink()


@pytest.mark.parametrize("damage, problem", [
    (lambda entry: json.dumps({k: v for k, v in entry.items() if k != "episode_index"}),
     "expected 'episode_index' a whole number >= 0, got None"),
    (lambda entry: "[1, 2]", "expected an object, got list"),
    (lambda entry: json.dumps({**entry, "episode_index": "zero"}),
     "expected 'episode_index' a whole number >= 0, got 'zero'"),
])
def test_a_resume_skips_an_episode_log_line_that_is_no_episode_entry_and_runs_that_episode_again(
        server, tmp_path, caplog, damage, problem):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", [{"name": "a", "env_name": "walkto/fast",
                                                "policy_server": {"port": server.port}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    _pending_again(out)
    log = out / "jobs" / "a" / "episodes.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([damage(json.loads(lines[0])), *lines[1:]]) + "\n")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["batch", "--resume", str(out)]) == 0
    assert f"{log}:1 is not an episode entry: {problem}; ignoring it" in caplog.text
    [record] = records(out)
    assert record["status"] == "done" and record["resumed_episodes"] == 2
    assert sorted(e["episode_index"] for e in record["results"]["per_episode"]) == [0, 1, 2]


def test_a_rollout_resume_skips_an_episode_log_line_that_is_no_episode_entry(server, tmp_path, caplog):
    out = tmp_path / "run"
    flags = ["--policy-client-port", str(server.port), "--timeout-ms", "5000"]
    assert cli.main(["rollout", *flags, "--env-name", "walkto/fast", "--n-episodes", "3", "--seed", "0", "--n-envs", "1",
                     "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync",
                     "--output-dir", str(out)]) == 0
    log = out / "episodes.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(['{"episode_index": [0]}', *lines[1:]]) + "\n")
    (out / "results.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert cli.main(["rollout", "--resume", str(out), *flags]) == 0
    assert f"{log}:1 is not an episode entry: expected 'episode_index' a whole number >= 0, got [0]" in caplog.text
    results = json.loads((out / "results.json").read_text())
    assert sorted(e["episode_index"] for e in results["per_episode"]) == [0, 1, 2]


def test_a_resume_refuses_a_batch_record_without_a_name_naming_the_file(server, tmp_path, capsys):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.json", [{"name": "a", "env_name": "walkto/fast",
                                                "policy_server": {"port": server.port}}])
    assert cli.main(["batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 0
    batch = json.loads((out / "batch_results.json").read_text())
    del batch["jobs"][0]["name"]
    (out / "batch_results.json").write_text(json.dumps(batch))
    capsys.readouterr()
    assert cli.main(["batch", "--resume", str(out)]) == 2
    assert (f"{out / 'batch_results.json'} job record #0 has no 'name' (got None); expected each record to name its "
            "job") in capsys.readouterr().err


def _reference_server(policy):
    """A reference-style server of `policy` (a REP socket, no get_server_info: which policy it serves is unknown)."""
    from reference_peer import RefModalityConfig, ReferenceServer

    configs = {k: RefModalityConfig(v.to_json_dict()) for k, v in policy.get_modality_config().items()}
    return ReferenceServer({"get_action": policy.get_action, "reset": policy.reset,
                            "get_modality_config": lambda: configs})


def test_a_done_job_whose_server_changed_to_one_of_unknown_policy_runs_every_episode_again(tmp_path, caplog):
    # Re-run because its server changed, it resumed its folder's episodes (all done) when neither server said what it
    # serves, and reported the old server's episodes under the new one without a single call to it.
    out = tmp_path / "out"
    with _reference_server(ConstantPolicy()) as first:
        job = {"env_name": "walkto/fast", "policy_server": {"port": first.port, "timeout_ms": 5000}}
        assert cli.main(["batch", "--jobs", str(write_jobs(tmp_path / "jobs.json", [job])), "--output-dir", str(out)]) == 0
    counting = CountingPolicy()
    with _reference_server(counting) as second:
        write_jobs(out / "jobs.json", [{**job, "policy_server": {"port": second.port, "timeout_ms": 5000}}])
        assert cli.main(["batch", "--resume", str(out)]) == 0
    (record,) = records(out)
    assert counting.calls > 0 and record["resumed_episodes"] == 0 and record["results"]["overall"]["n_episodes"] == 3
    assert any("which policy one of them serves is unknown" in r.getMessage() for r in caplog.records)


def test_a_done_job_whose_server_moved_but_serves_the_same_policy_keeps_its_episodes_and_says_so(server, tmp_path,
                                                                                                   caplog):
    out = tmp_path / "out"
    job = {"env_name": "walkto/fast", "policy_server": {"port": server.port, "timeout_ms": 5000}}
    assert cli.main(["batch", "--jobs", str(write_jobs(tmp_path / "jobs.json", [job])), "--output-dir", str(out)]) == 0
    with policy_server() as moved:  # the same ConstantPolicy on another port: the same fingerprint
        write_jobs(out / "jobs.json", [{**job, "policy_server": {"port": moved.port, "timeout_ms": 5000}}])
        assert cli.main(["batch", "--resume", str(out)]) == 0
    (record,) = records(out)
    assert record["resumed_episodes"] == 3 and record["policy_server"] == f"127.0.0.1:{moved.port}"
    assert any("serves the same policy" in r.getMessage() and "its earlier episodes are kept" in r.getMessage()
               for r in caplog.records)


def test_an_ipv6_jobs_server_is_recorded_bracketed_so_it_reads_back_as_that_address(tmp_path):
    from gr00t_eval.ray_runner import parse_servers
    from serving import running_server

    out = tmp_path / "out"
    with running_server(ConstantPolicy(), host="::1") as v6:
        job = {"env_name": "walkto/fast", "policy_server": {"host": "::1", "port": v6.port, "timeout_ms": 5000}}
        assert cli.main(["batch", "--jobs", str(write_jobs(tmp_path / "jobs.json", [job])), "--output-dir", str(out)]) == 0
    (record,) = records(out)
    assert record["policy_server"] == f"[::1]:{v6.port}"
    (address,) = parse_servers(record["policy_server"], 5555)
    assert str(address) == record["policy_server"] and address.port == v6.port


def test_a_done_ipv6_job_recorded_unbracketed_by_an_older_batch_is_not_taken_for_a_moved_server(tmp_path, caplog):
    from serving import running_server

    out = tmp_path / "out"
    counting = CountingPolicy()
    with running_server(counting, host="::1") as v6:
        job = {"env_name": "walkto/fast", "policy_server": {"host": "::1", "port": v6.port, "timeout_ms": 5000}}
        assert cli.main(["batch", "--jobs", str(write_jobs(tmp_path / "jobs.json", [job])), "--output-dir", str(out)]) == 0
        results = json.loads((out / "batch_results.json").read_text())
        results["jobs"][0]["policy_server"] = f"::1:{v6.port}"  # as an older gr00t-eval wrote it
        (out / "batch_results.json").write_text(json.dumps(results))
        calls = counting.calls
        assert cli.main(["batch", "--resume", str(out)]) == 0
    (record,) = records(out)
    assert record["status"] == "done" and "rerun_reason" not in record
    assert counting.calls == calls  # kept, not run again
    assert not any("changed since it was done" in r.getMessage() for r in caplog.records)
