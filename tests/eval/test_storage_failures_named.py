"""A full disk or a read-only folder while a run writes its summary files or cleans up after a failed write: one line
naming the file that could not be written and saying truthfully what is kept; results.json and eval_info.json never
disagree (a new one beside an earlier attempt's); a temporary file whose delete fails too (EROFS) never replaces the
error being raised. The full disk is a file size limit (RLIMIT_FSIZE, as in test_disk_full) or a write made to fail
as a full disk fails it; the read-only folder is a write and a delete made to fail with EROFS (no mount needed)."""

import errno
import json
import os
import pathlib
import sys

import pytest

from eval.scale_fixtures import SigintOnCall, SlowPolicy, policy_server
from eval.test_disk_full import ROLLOUT_UNDER_LIMIT, run_limited
from gr00t_eval.cli import main

SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync",
         "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures"]
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rollout(port, out, *extra):
    return main(["--log-level", "WARNING", "rollout", "--env-name", "walkto/slow", "--policy-client-port", str(port),
                 "--output-dir", str(out), "--seed", "3", *SMALL, *extra])


def resume(port, out):
    return main(["--log-level", "WARNING", "rollout", "--resume", str(out), "--policy-client-port", str(port),
                 "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures"])  # the flags the run was started with


def read(path):
    return json.loads(pathlib.Path(path).read_text())


def summary(out):
    """(status, episodes, success %) of results.json and of eval_info.json."""
    results, info = read(out / "results.json"), read(out / "eval_info.json")
    return ((results["status"], results["overall"]["n_episodes"], results["overall"]["pc_success"]),
            (info["status"], info["overall"]["n_episodes"], info["overall"]["pc_success"]))


def fail_writes_of(monkeypatch, prefix, err=errno.ENOSPC):
    """Path.write_text of a file whose name starts with `prefix` fails as a full disk fails it (the file is created,
    then the write raises an OSError naming no file) or as a read-only folder does (EROFS: nothing is created)."""
    write_text = pathlib.Path.write_text

    def failing(self, *args, **kwargs):
        if self.name.startswith(prefix):
            if err == errno.EROFS:
                raise OSError(err, os.strerror(err), str(self))
            write_text(self, "")
            raise OSError(err, os.strerror(err))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", failing)


def fail_deletes_under(monkeypatch, folder):
    """Path.unlink under `folder` fails as in a read-only folder: EROFS, even for a file that is not there."""
    unlink = pathlib.Path.unlink

    def failing(self, *args, **kwargs):
        if str(self).startswith(str(folder)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", failing)


# --- a full disk while the summary files are written -----------------------------------------------------------------

# test_disk_full's rollout (40 episodes) made a run of 4
_ROLLOUT_UNDER_LIMIT = ROLLOUT_UNDER_LIMIT.replace('"--n-episodes",\n               "40"', '"--n-episodes",\n               "4"')
assert _ROLLOUT_UNDER_LIMIT != ROLLOUT_UNDER_LIMIT, "test_disk_full's rollout no longer reads --n-episodes 40"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
def test_a_disk_full_at_results_json_names_it_and_says_every_episode_is_kept(tmp_path):
    # 3000 bytes: episodes.jsonl (~800) and run.json (~1100) fit, results.json (~4000) does not. The line named no file
    # and said "the run stopped there" of a run whose every episode had run.
    out = tmp_path / "run"
    with policy_server() as server:
        result = run_limited(3000, _ROLLOUT_UNDER_LIMIT, TESTS_DIR, str(server.port), str(out))
        assert result.returncode == 2, result.stdout + result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert f"File too large writing {out / 'results.json'}:" in line, line
        assert "stopped there" not in line
        assert "results.json and eval_info.json were not written" in line, line
        assert f"the 4 episodes scored are kept in {out / 'episodes.jsonl'}" in line, line
        assert f"continue with: gr00t-eval rollout --resume {out}" in line, line
        assert not (out / "results.json").exists() and not (out / "eval_info.json").exists()
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no leftover temporaries
        assert resume(server.port, out) == 0  # with room: both files written, no episode run again
    assert summary(out)[0] == summary(out)[1] == ("complete", 4, 50.0)


def test_a_resume_whose_eval_info_json_cannot_be_written_leaves_no_pair_that_disagrees(tmp_path, monkeypatch, capsys):
    # results.json was replaced (complete, 8 episodes) while eval_info.json kept the interrupted attempt's numbers
    out = tmp_path / "run"
    with policy_server(SigintOnCall(call=10)) as server:  # one policy: the resume is held to it
        assert rollout(server.port, out, "--n-episodes", "8") == 130
        interrupted = summary(out)
        assert interrupted[0] == interrupted[1] and interrupted[0][0] == "interrupted" and interrupted[0][1] < 8
        with monkeypatch.context() as patch:
            fail_writes_of(patch, ".eval_info.json.")
            assert resume(server.port, out) == 2
        results, info = summary(out)
        assert results == info == interrupted[0]  # never one attempt's results.json beside another's eval_info.json
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"No space left on device writing {out / 'eval_info.json'}:" in line, line
        assert "results.json and eval_info.json were not written (any from an earlier attempt are left as they were)" in line
        assert f"the 8 episodes scored are kept in {out / 'episodes.jsonl'}" in line, line
        assert f"continue with: gr00t-eval rollout --resume {out}" in line, line
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        assert resume(server.port, out) == 0
    results, info = summary(out)
    assert results == info and results[:2] == ("complete", 8)


def test_a_merge_whose_eval_info_json_cannot_be_written_names_it_and_writes_neither_file(tmp_path, monkeypatch, capsys):
    shards = tmp_path / "shards"
    with policy_server() as server:
        for shard in ("0/2", "1/2"):
            assert rollout(server.port, shards, "--n-episodes", "4", "--shard", shard) == 0
    merged = tmp_path / "merged" / "merged.json"
    capsys.readouterr()
    with monkeypatch.context() as patch:
        fail_writes_of(patch, ".eval_info.json.")
        assert main(["merge", str(shards), "--output", str(merged)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"No space left on device writing {merged.parent / 'eval_info.json'}:" in line, line
    assert "merged.json and eval_info.json were not written" in line and "run the merge again" in line, line
    assert not merged.parent.exists()  # no merged.json without its eval_info.json; the folder it made is removed
    assert main(["merge", str(shards), "--output", str(merged)]) == 0
    assert read(merged)["overall"]["n_episodes"] == read(merged.parent / "eval_info.json")["overall"]["n_episodes"] == 4


# --- a cleanup delete that fails too (read-only folder) ---------------------------------------------------------------


def test_write_results_raises_the_write_error_naming_the_file_when_its_cleanup_fails_too(tmp_path, monkeypatch):
    from gr00t_eval.results import write_results

    fail_writes_of(monkeypatch, ".results.json.")
    fail_deletes_under(monkeypatch, tmp_path)
    with pytest.raises(OSError) as raised:
        write_results(tmp_path / "results.json", {"a": 1})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "results.json")


def test_a_claim_whose_cleanup_fails_too_raises_the_write_error(tmp_path, monkeypatch):
    from gr00t_eval.run_claim import claim_output_dir

    fail_writes_of(monkeypatch, ".claim.json.")
    fail_deletes_under(monkeypatch, tmp_path)
    with pytest.raises(OSError) as raised:
        claim_output_dir(tmp_path, "claim.json", {"x": 1})
    assert raised.value.errno == errno.ENOSPC  # not the EROFS of deleting the temporary


def test_finishing_a_claim_whose_write_and_cleanup_fail_raises_nothing(tmp_path, monkeypatch):
    # finish_claim runs in a `finally`: the delete's EROFS replaced the run's own error
    from gr00t_eval.run_claim import claim_output_dir, finish_claim

    claim = claim_output_dir(tmp_path, "claim.json", {"x": 1})
    with monkeypatch.context() as patch:
        fail_writes_of(patch, ".claim.json.")
        fail_deletes_under(patch, tmp_path)
        finish_claim(claim, "error")
    assert read(claim)["claim"]["finished"] is False  # left unfinished, as on a full disk (its process will be gone)


def test_a_rollout_whose_folder_turns_read_only_ends_with_the_storage_line_naming_the_file(tmp_path, monkeypatch, capsys):
    # the claim's finish failed to write, and its cleanup's EROFS replaced the line with a bare OSError about a .tmp
    from gr00t_eval.run_dir import EpisodeLog

    out = tmp_path / "run"
    append, appended = EpisodeLog.append, []

    def append_until_read_only(self, entry):
        if len(appended) == 2:  # the folder turns read-only: every later write and delete in it fails
            fail_writes_of(monkeypatch, "", err=errno.EROFS)
            fail_deletes_under(monkeypatch, out)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path))
        appended.append(entry)
        return append(self, entry)

    monkeypatch.setattr(EpisodeLog, "append", append_until_read_only)
    with policy_server() as server:
        assert rollout(server.port, out, "--n-episodes", "6") == 2
    monkeypatch.undo()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"Read-only file system writing {out / 'episodes.jsonl'}: the run stopped there" in line, line
    assert f"the 2 episodes scored before it are kept in {out / 'episodes.jsonl'}" in line, line
    assert f"continue with: gr00t-eval rollout --resume {out}" in line, line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
def test_a_disk_full_from_the_start_names_the_run_file_and_advises_the_same_command(tmp_path):
    out = tmp_path / "run"
    with policy_server() as server:
        result = run_limited(0, ROLLOUT_UNDER_LIMIT, TESTS_DIR, str(server.port), str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert f"File too large writing {out / 'run.json'}: the run did not start" in line, line
    assert "run the same command again" in line and "Raise the file size limit" in line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")
def test_a_resume_after_results_json_could_not_be_written_keeps_the_first_attempts_eval_s(tmp_path):
    # The first attempt ran every episode (0.05 s a policy call) but wrote no results.json; its resume found no time to
    # add and reported eval_s 0.0 for episodes that took about a second.
    out = tmp_path / "run"
    with policy_server(SlowPolicy(0.05)) as server:
        result = run_limited(3000, _ROLLOUT_UNDER_LIMIT, TESTS_DIR, str(server.port), str(out))
        assert result.returncode == 2 and not (out / "results.json").exists(), result.stdout + result.stderr
        assert resume(server.port, out) == 0
    results = read(out / "results.json")
    assert results["overall"]["n_episodes"] == 4
    assert results["overall"]["eval_s"] >= 0.4, results["overall"]  # at least 8 policy calls of 0.05 s
    assert results["per_task"]["walkto/slow"]["eval_s"] == results["overall"]["eval_s"]
    assert results["overall"]["eval_ep_s"] == pytest.approx(results["overall"]["eval_s"] / 4)
