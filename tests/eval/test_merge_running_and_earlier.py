"""`gr00t-eval merge` never presents a shard still running as final, never replaces an earlier merge of another
evaluation without --overwrite, and a merge of a merge says nothing stale. Real shards on a loopback PolicyServer, real
claim files held by a live process, the real CLI."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from eval.deep_paths import folder_near_path_max
from eval.scale_fixtures import ConstantPolicy, policy_server, two_shards
from gr00t_eval import cli

SHARD_FLAGS = ["--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
               "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A folder holding both shards of a 4-episode run (seed 0). Read-only: copy it to change it."""
    return two_shards(tmp_path_factory.mktemp("merge_running") / "shards")


def held_by(run_file, pid):
    """Give the shard run file `run_file` the claim of process `pid` on this host, as a --resume of it leaves it."""
    saved = json.loads(run_file.read_text())
    saved["claim"] = {"pid": pid, "hostname": __import__("socket").gethostname(), "started": "now",
                      "started_unix": __import__("time").time(), "finished": False}
    run_file.write_text(json.dumps(saved))


def test_a_merge_of_a_shard_still_running_is_refused_naming_the_shard(shards, tmp_path, capsys, live_process):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)  # shard 1/2 is being resumed
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "merged.json"), "--allow-errors"]) == 2
    err = capsys.readouterr().err
    assert f"shard 1/2 in {split} is still running" in err and f"pid {live_process.pid}" in err
    assert not (tmp_path / "merged.json").exists()


def test_allow_missing_leaves_a_running_shard_out_and_the_merge_incomplete(shards, tmp_path, capsys, live_process):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "merged.json"), "--allow-missing"]) == 1
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["status"] == "incomplete" and merged["missing_episodes"] == ["walkto/fast#2", "walkto/fast#3"]
    assert merged["merged_files"] == [str(split / "results_shard0of2.json")]
    assert f"shard 1/2 in {split} is still running" in capsys.readouterr().out


class MergeCopyingPolicy(ConstantPolicy):
    """ConstantPolicy that, on its first action, puts a merge of the shard's earlier results into the shard's folder:
    a merge that checked the shard's claim just before the shard took it, and wrote its file while the shard ran."""

    def __init__(self, merge, into):
        super().__init__()
        self.merge, self.into = merge, into

    def _get_action(self, observation, options=None):
        if not self.into.exists():
            shutil.copy(self.merge, self.into)
        return super()._get_action(observation, options)


def test_a_shard_that_writes_its_results_removes_a_merge_of_its_file_written_while_it_ran(shards, tmp_path):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    side = tmp_path / "side" / "merged.json"
    side.parent.mkdir()
    assert cli.main(["merge", str(split), "--output", str(side)]) == 0  # records split/results_shard*.json
    with policy_server(MergeCopyingPolicy(side, split / "merged.json")) as server:
        assert cli.main(["rollout", *SHARD_FLAGS, "--seed", "0", "--policy-client-port", str(server.port),
                         "--shard", "1/2", "--output-dir", str(split), "--overwrite"]) == 0
    assert not (split / "merged.json").exists()


@pytest.fixture(scope="module")
def other_evaluation(tmp_path_factory):
    """Both shards of the same 4-episode run with seed 100: another evaluation than `shards`."""
    out = tmp_path_factory.mktemp("merge_other") / "shards"
    with policy_server() as server:
        for index in (0, 1):
            assert cli.main(["rollout", *SHARD_FLAGS, "--seed", "100", "--policy-client-port", str(server.port),
                             "--shard", f"{index}/2", "--output-dir", str(out)]) == 0
    return out


def test_a_merge_of_another_evaluation_does_not_replace_an_earlier_merge_without_overwrite(
        shards, other_evaluation, tmp_path, capsys):
    report = tmp_path / "report" / "eval.json"
    assert cli.main(["merge", str(shards), "--output", str(report)]) == 0
    before = report.read_bytes(), (report.parent / "eval_info.json").read_bytes()
    assert cli.main(["merge", str(other_evaluation), "--output", str(report)]) == 2
    err = capsys.readouterr().err
    assert f"--output {report} holds the merge of another evaluation" in err
    assert "seed 100" in err and "--overwrite" in err
    assert (report.read_bytes(), (report.parent / "eval_info.json").read_bytes()) == before
    assert cli.main(["merge", str(other_evaluation), "--output", str(report), "--overwrite"]) == 0
    assert json.loads(report.read_text())["plan"]["seed"] == 100


def test_the_same_merge_run_again_replaces_its_earlier_output(shards, tmp_path):
    report = tmp_path / "eval.json"
    assert cli.main(["merge", str(shards), "--output", str(report)]) == 0
    assert cli.main(["merge", str(shards / "results_shard1of2.json"), str(shards / "results_shard0of2.json"),
                     "--output", str(report)]) == 0
    assert json.loads(report.read_text())["plan"]["seed"] == 0


def test_a_merge_of_a_partial_merge_and_its_missing_shard_is_complete_with_no_stop_reason(shards, tmp_path):
    partial, full = tmp_path / "m" / "partial.json", tmp_path / "m2" / "full.json"
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output", str(partial)]) == 1
    assert cli.main(["merge", str(partial), str(shards / "results_shard1of2.json"), "--output", str(full)]) == 0
    merged = json.loads(full.read_text())
    assert merged["status"] == "complete" and merged["stop_reason"] is None
    assert json.loads((full.parent / "eval_info.json").read_text()).get("stop_reason") is None


def test_an_incomplete_merge_merged_again_is_told_to_be_merged_with_its_missing_shards(shards, tmp_path, capsys):
    partial = tmp_path / "m" / "partial.json"
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output", str(partial)]) == 1
    capsys.readouterr()
    assert cli.main(["merge", str(partial), "--allow-missing", "--output", str(tmp_path / "m3" / "again.json")]) == 1
    out = capsys.readouterr().out
    assert f"{partial} is an incomplete merge" in out and "merge it again with the missing shards" in out
    assert "rollout --resume" not in out


def test_a_running_shard_given_through_a_link_is_refused_as_where_its_file_lives(shards, tmp_path, capsys,
                                                                                 live_process):
    """A folder of links to each node's shard files: the claim was looked for beside the link, so the running shard's
    earlier results were merged as final and the merge said complete."""
    split, collected = tmp_path / "split", tmp_path / "collected"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)
    collected.mkdir()
    for name in ("results_shard0of2.json", "results_shard1of2.json"):
        (collected / name).symlink_to(split / name)
    assert cli.main(["merge", str(collected), "--output", str(tmp_path / "m" / "merged.json")]) == 2
    assert f"shard 1/2 in {split} is still running" in capsys.readouterr().err
    assert not (tmp_path / "m" / "merged.json").exists()


def test_a_running_shard_is_known_by_its_results_content_not_its_file_name(shards, tmp_path, capsys, live_process):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)
    (split / "results_shard1of2.json").rename(split / "results_node_b.json")
    assert cli.main(["merge", str(split / "results_shard0of2.json"), str(split / "results_node_b.json"),
                     "--output", str(tmp_path / "m" / "merged.json")]) == 2
    assert f"shard 1/2 in {split} is still running" in capsys.readouterr().err


def test_a_results_file_named_like_a_shard_out_of_range_merges_by_its_content(shards, tmp_path):
    """A hand-renamed copy numbered from 1 (results_shard2of2.json holding shard 1/2) failed the merge with a --shard
    error that named no file."""
    collected = tmp_path / "collected"
    collected.mkdir()
    shutil.copy(shards / "results_shard0of2.json", collected / "results_shard0of2.json")
    shutil.copy(shards / "results_shard1of2.json", collected / "results_shard2of2.json")
    assert cli.main(["merge", str(collected / "results_shard0of2.json"), str(collected / "results_shard2of2.json"),
                     "--output", str(tmp_path / "m" / "merged.json")]) == 0
    assert json.loads((tmp_path / "m" / "merged.json").read_text())["status"] == "complete"


def test_a_shard_held_on_another_host_is_refused_naming_its_claim_file_and_how_to_end_it(shards, tmp_path, capsys):
    """A --resume killed on another node (preempted) left an unfinished claim: the refusal named neither the claim
    file nor a way to merge the shard once it has ended."""
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    run_file = split / "run_shard1of2.json"
    saved = json.loads(run_file.read_text())
    saved["claim"] = {"pid": 4242, "hostname": "node7-no-such-host", "boot_id": "another-machine",
                      "started": "2026-12-06T07:00:00Z", "started_unix": 1796540400.0, "finished": False}
    run_file.write_text(json.dumps(saved))
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "m" / "merged.json")]) == 2
    err = capsys.readouterr().err
    assert f"shard 1/2 in {split} may still be running (on another host" in err, err
    resume = f"gr00t-eval rollout --resume {split} --shard 1/2"
    assert f"if it has ended, resume it on node7-no-such-host ({resume}" in err, err
    # the run file is the shard's run (its --resume reads it): freed, never deleted
    assert f'set "finished": true in the "claim" record of {run_file}' in err and f"delete {run_file}" not in err, err


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="pid namespaces are read from /proc (Linux)")
def test_a_shard_held_in_another_pid_namespace_of_this_host_is_refused_naming_its_claim_file(shards, tmp_path, capsys):
    """A shard running in another container on this host (the same host name, a pid of its own namespace): its pid
    was looked up here, found gone, and its unfinished results merged as final."""
    import socket

    split = tmp_path / "split"
    shutil.copytree(shards, split)
    run_file = split / "run_shard1of2.json"
    saved = json.loads(run_file.read_text())
    saved["claim"] = {"pid": 4242000, "hostname": socket.gethostname(), "pid_namespace": "pid:[4026599999]",
                      "started": "2026-12-06T07:00:00Z", "started_unix": 1796540400.0, "finished": False}
    run_file.write_text(json.dumps(saved))
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "m" / "merged.json")]) == 2
    err = capsys.readouterr().err
    assert f"shard 1/2 in {split} may still be running (in another container" in err, err
    assert "resume it in its container on this host" in err, err
    assert f'set "finished": true in the "claim" record of {run_file}' in err and f"delete {run_file}" not in err, err
    assert os.readlink("/proc/self/ns/pid") in err, err


def test_a_partial_merge_merged_with_its_missing_shard_passes_on_its_own_shards_resume_commands(tmp_path, capsys):
    """Shard 0/2's task failed; its partial merge, merged with shard 1/2, was told to be merged again with the missing
    shards (none is missing: that was the merge just run), and the resume of shard 0/2 was not said."""
    shards = tmp_path / "shards"
    with policy_server() as server:
        for index in (0, 1):  # 3 tasks x 2 episodes: walkto/nope cannot build, in both shards
            cli.main(["rollout", *SHARD_FLAGS, "--env-name", "walkto/fast,walkto/nope,walkto/slow", "--n-episodes", "2",
                      "--seed", "0", "--policy-client-port", str(server.port), "--shard", f"{index}/2",
                      "--output-dir", str(shards)])
    partial = tmp_path / "p" / "partial.json"
    assert cli.main(["merge", str(shards / "results_shard0of2.json"), "--allow-missing", "--output", str(partial)]) == 1
    capsys.readouterr()
    assert cli.main(["merge", str(partial), str(shards / "results_shard1of2.json"),
                     "--output", str(tmp_path / "full" / "merged.json")]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("INCOMPLETE"))
    assert (f"{partial} is an incomplete merge: continue its shard {shards / 'results_shard0of2.json'} with "
            f"gr00t-eval rollout --resume {shards} --shard 0/2") in line, line
    assert "merge it again with the missing shards" not in line, line
    # gathered as links (a folder of links to each node's files): the resume names the shards' own folder, where
    # their run files are, not the links' (whose resume failed: no run_shard0of2.json there)
    collected = tmp_path / "collected"
    collected.mkdir()
    for name in ("results_shard0of2.json", "results_shard1of2.json"):
        (collected / name).symlink_to(shards / name)
    assert cli.main(["merge", str(collected), "--output", str(tmp_path / "direct" / "merged.json")]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("INCOMPLETE"))
    assert f"gr00t-eval rollout --resume {shards} --shard 0/2" in line, line
    assert f"--resume {collected}" not in line, line
    partial = tmp_path / "p2" / "partial.json"
    assert cli.main(["merge", str(collected / "results_shard0of2.json"), "--allow-missing", "--output",
                     str(partial)]) == 1
    capsys.readouterr()
    assert cli.main(["merge", str(partial), str(collected / "results_shard1of2.json"),
                     "--output", str(tmp_path / "full2" / "merged.json")]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("INCOMPLETE"))
    assert f"gr00t-eval rollout --resume {shards} --shard 0/2" in line and f"--resume {collected}" not in line, line


def test_a_started_shard_without_results_behind_links_is_resumed_in_its_own_folder(shards, tmp_path, capsys):
    """A folder of links to a node's shard files, shard 0/2 killed before its results: the advice resumed the links'
    folder, which copied the run file there and left the node's folder unfinished."""
    split, collected = tmp_path / "split", tmp_path / "collected"
    shutil.copytree(shards, split)
    (split / "results_shard0of2.json").unlink()  # started (its run file is there), killed before its results
    collected.mkdir()
    for name in ("run_shard0of2.json", "run_shard1of2.json", "results_shard1of2.json"):
        (collected / name).symlink_to(split / name)
    assert cli.main(["merge", str(collected), "--output", str(tmp_path / "m" / "merged.json")]) == 2
    err = capsys.readouterr().err
    assert f"continue it with gr00t-eval rollout --resume {split} --shard 0/2" in err, err
    assert f"--resume {collected}" not in err, err


def _blocked_on_a_lock_or_ended(proc):
    """Wait until `proc` waits for an flock (a '->' line of /proc/locks names it) or has ended; which one."""
    import time

    while proc.poll() is None:
        with open("/proc/locks") as locks:
            if any("->" in line and f" {proc.pid} " in line for line in locks):
                return "blocked"
        time.sleep(0.05)
    return "ended"


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="tells a process waiting for an flock by /proc/locks")
def test_two_merges_of_different_evaluations_into_one_output_at_once_refuse_the_second(
        shards, other_evaluation, tmp_path):
    """The merge holds its folder's lock from its checks through its writes: one that starts while another writes
    checks what that one wrote, as when run one after the other."""
    import fcntl
    import subprocess
    import sys

    winner = tmp_path / "winner"
    assert cli.main(["merge", str(other_evaluation), "--output", str(winner / "merged.json")]) == 0
    out = tmp_path / "race"
    out.mkdir()
    descriptor = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # the first merge, between its checks and its writes
        second = subprocess.Popen([sys.executable, "-c", "import sys; from gr00t_eval import cli; "
                                   "sys.exit(cli.main(sys.argv[1:]))", "merge", str(shards), "--output",
                                   str(out / "merged.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        state = _blocked_on_a_lock_or_ended(second)
        for name in ("merged.json", "eval_info.json"):  # the first merge's writes land
            shutil.copyfile(winner / name, out / name)
    finally:
        os.close(descriptor)
    _out, err = second.communicate()
    assert state == "blocked" and second.returncode == 2, err
    assert f"--output {out / 'merged.json'} holds the merge of another evaluation" in err
    assert json.loads((out / "merged.json").read_text())["plan"]["seed"] == 100


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="tells a process waiting for an flock by /proc/locks")
def test_a_merge_into_a_new_folder_does_not_wait_on_the_lock_of_the_folder_above(shards, tmp_path):
    """It locked the nearest folder that existed (/tmp, a home folder): a merge stuck into another new folder there made
    this one wait, silently, for as long (R51)."""
    import fcntl
    import subprocess
    import sys

    parent = tmp_path / "parent"
    parent.mkdir()
    descriptor = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # another merge into another new folder under it
        merge = subprocess.Popen([sys.executable, "-c", "import sys; from gr00t_eval import cli; "
                                  "sys.exit(cli.main(sys.argv[1:]))", "merge", str(shards), "--output",
                                  str(parent / "new" / "merged.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        state = _blocked_on_a_lock_or_ended(merge)
    finally:
        os.close(descriptor)
    _out, err = merge.communicate()
    assert state == "ended" and merge.returncode == 0, err
    assert json.loads((parent / "new" / "merged.json").read_text())["merged_from"]


def _merge_process(results, output):
    """`gr00t-eval merge results --output output` started in a process of its own (stdout and stderr piped)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import sys; from gr00t_eval import cli; "
                             "sys.exit(cli.main(sys.argv[1:]))", "merge", str(results), "--output", str(output)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="tells a process waiting for an flock by /proc/locks")
def test_two_merges_of_different_evaluations_into_one_new_folder_refuse_the_second(
        shards, other_evaluation, tmp_path, monkeypatch):
    """The folder a merge makes is locked as one that was there: a second merge started while the first is between its
    checks and its writes waits, then checks what the first wrote. Unlocked, both exited 0 and one result was lost
    (R52)."""
    from gr00t_eval import results as results_module

    output = tmp_path / "new" / "merged.json"
    write = results_module.write_results_together
    second = {}

    def second_merge_then_write(files):  # the first merge, its checks done: the second starts before it writes
        second["process"] = _merge_process(other_evaluation, output)
        second["state"] = _blocked_on_a_lock_or_ended(second["process"])
        return write(files)

    monkeypatch.setattr(results_module, "write_results_together", second_merge_then_write)
    assert cli.main(["merge", str(shards), "--output", str(output)]) == 0
    _out, err = second["process"].communicate()
    assert second["state"] == "blocked" and second["process"].returncode == 2, err
    assert f"--output {output} holds the merge of another evaluation" in err
    assert json.loads(output.read_text())["plan"]["seed"] == 0


def test_a_refused_merge_removes_the_new_folder_it_made_and_keeps_one_that_was_there(shards, tmp_path, live_process):
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)  # refused: shard 1/2 is still running
    existing = tmp_path / "existing"
    existing.mkdir()
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "new" / "merged.json")]) == 2
    assert cli.main(["merge", str(split), "--output", str(existing / "merged.json")]) == 2
    assert not (tmp_path / "new").exists() and existing.is_dir()


def test_a_merge_output_too_long_for_the_files_written_aside_is_refused_before_merging(shards, tmp_path, capsys):
    """In a 4072-byte folder the merge failed with 'File name too long' naming merged.json, which fits: the file that
    failed was the one written aside first (R56)."""
    deep = str(folder_near_path_max(tmp_path, room=30)[0])
    assert cli.main(["merge", str(shards), "--output", os.path.join(deep, "merged.json")]) == 2
    assert f"--output's folder {deep} is too long a path" in capsys.readouterr().err
    assert not os.path.exists(deep)


def test_a_merge_into_a_deep_folder_with_room_for_its_own_files_is_not_refused(shards, tmp_path):
    """The reserve was a rollout's (an episode video in a task's folder of 255 characters): a merge, which writes only
    its results and eval_info.json, was refused in a folder 3900 bytes deep where it writes fine (R57)."""
    deep = str(folder_near_path_max(tmp_path, room=150)[0])
    shallow = cli.main(["merge", str(shards), "--output", str(tmp_path / "shallow" / "merged.json")])
    assert cli.main(["merge", str(shards), "--output", os.path.join(deep, "merged.json")]) == shallow
    assert os.path.isfile(os.path.join(deep, "merged.json"))


def test_a_refused_merge_leaves_the_folders_above_its_output_that_it_made(shards, tmp_path, live_process, capsys):
    """A refused merge removed every empty folder it had made, those above its output too: one of them could be
    another merge's output, locked, which then wrote into a folder made anew and a third merge's result replaced its
    own (R54). Only the output folder, which it held locked, is removed; a folder that cannot be made is named."""
    split = tmp_path / "split"
    shutil.copytree(shards, split)
    held_by(split / "run_shard1of2.json", live_process.pid)
    assert cli.main(["merge", str(split), "--output", str(tmp_path / "new" / "out" / "merged.json")]) == 2
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "out").exists()
    capsys.readouterr()
    too_long = tmp_path / "made" / ("x" * 300)
    assert cli.main(["merge", str(split), "--output", str(too_long / "merged.json")]) == 2
    assert f"--output's folder {too_long} cannot be made: File name too long" in capsys.readouterr().err
