"""`rollout --overwrite` deletes only what the run it replaces wrote: a shard's own files, never another shard's, another
run's, or those of a run still running. Real shards on a loopback PolicyServer, the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval import cli
from serving import running_server


class HeldPolicy(ConstantPolicy):
    """ConstantPolicy whose first get_action waits until the test releases it (a run that is still running)."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        self.entered.set()
        self.release.wait(10)
        return super()._get_action(observation, options)


@pytest.fixture(scope="module")
def server():
    with running_server(ConstantPolicy()) as running:
        yield running


def rollout(port, out, *extra):
    return cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
                     "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video",
                     "--policy-client-port", str(port), "--output-dir", str(out), *extra])


def files(directory):
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


SHARD_0 = ("run_shard0of2.json", "episodes_shard0of2.jsonl", "results_shard0of2.json")


def test_a_shard_overwrite_replaces_only_its_own_files_and_the_merge_still_has_every_episode(server, tmp_path):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    assert rollout(server.port, out, "--shard", "1/2") == 0
    shard_0 = {name: data for name, data in files(out).items() if name in SHARD_0}
    assert rollout(server.port, out, "--shard", "1/2", "--overwrite") == 0
    assert {name: data for name, data in files(out).items() if name in SHARD_0} == shard_0
    assert cli.main(["merge", str(out), "--output", str(tmp_path / "merged.json")]) == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["overall"]["n_episodes"] == 4 and merged["status"] == "complete"


def test_a_shard_overwrite_deletes_the_videos_its_episode_log_lists_and_no_other_shards(server, tmp_path):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    assert rollout(server.port, out, "--shard", "1/2") == 0
    videos = out / "videos"
    videos.mkdir()
    for index in (0, 1):  # point each logged episode at a video file, as a rendering env's episodes are
        log = out / f"episodes_shard{index}of2.jsonl"
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        for entry in entries:
            entry["video_path"] = str(videos / f"episode_{entry['episode_index']:04d}_success.mp4")
            (videos / f"episode_{entry['episode_index']:04d}_success.mp4").write_bytes(b"mp4")
        log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    (videos / "notes.txt").write_text("mine")
    assert rollout(server.port, out, "--shard", "1/2", "--overwrite") == 0
    assert sorted(p.name for p in videos.iterdir()) == ["episode_0000_success.mp4", "episode_0001_success.mp4", "notes.txt"]


def test_overwriting_a_shard_that_is_still_running_is_refused_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "shards"
    policy = HeldPolicy()
    with running_server(policy) as held:
        codes = []
        live = threading.Thread(target=lambda: codes.append(rollout(held.port, out, "--shard", "1/2")))
        live.start()
        try:
            assert policy.entered.wait(10), "the live shard never asked the policy"
            before = files(out)
            capsys.readouterr()
            assert rollout(held.port, out, "--shard", "1/2", "--overwrite") == 2
            err = capsys.readouterr().err
            assert "the run that claimed it is still running" in err and "run_shard1of2.json" in err
            assert files(out) == before
        finally:
            policy.release.set()
            live.join(30)
    assert codes == [0]
    assert json.loads((out / "results_shard1of2.json").read_text())["overall"]["n_episodes"] == 2


def test_resuming_a_shard_that_is_still_running_is_refused(tmp_path, capsys):
    out = tmp_path / "shards"
    policy = HeldPolicy()
    with running_server(policy) as held:
        live = threading.Thread(target=rollout, args=(held.port, out, "--shard", "1/2"))
        live.start()
        try:
            assert policy.entered.wait(10), "the live shard never asked the policy"
            capsys.readouterr()
            code = cli.main(["rollout", "--resume", str(out), "--shard", "1/2", "--policy-client-port", str(held.port)])
            assert code == 2
            assert f"--resume {out} is in use: the run that claimed it is still running" in capsys.readouterr().err
        finally:
            policy.release.set()
            live.join(30)


def test_a_shard_whose_run_ended_without_finishing_may_be_overwritten(server, tmp_path):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "1/2") == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    run_file = out / "run_shard1of2.json"
    saved = json.loads(run_file.read_text())
    saved["claim"].update(pid=int(gone.stdout), finished=False)  # as a run killed with -9 leaves it
    run_file.write_text(json.dumps(saved))
    assert rollout(server.port, out, "--shard", "1/2", "--overwrite") == 0


def test_a_whole_run_overwrite_into_a_directory_of_shards_is_refused_naming_them(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    before = files(out)
    capsys.readouterr()
    assert rollout(server.port, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "holds the files of sharded runs (episodes_shard0of2.jsonl, results_shard0of2.json, run_shard0of2.json)" in err
    assert "--overwrite never deletes another run's results" in err
    assert files(out) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_shard_into_a_directory_holding_a_whole_run_is_refused(server, tmp_path, capsys, overwrite):
    out = tmp_path / "run"
    assert rollout(server.port, out) == 0
    before = files(out)
    capsys.readouterr()
    assert rollout(server.port, out, "--shard", "1/2", *overwrite) == 2
    assert "holds a whole (unsharded) run (run.json, episodes.jsonl)" in capsys.readouterr().err
    assert files(out) == before


def test_a_shard_of_another_split_into_a_shared_directory_is_refused(server, tmp_path, capsys):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    before = files(out)
    capsys.readouterr()
    assert rollout(server.port, out, "--shard", "0/4", "--overwrite") == 2
    assert "holds shards of another split (episodes_shard0of2.jsonl" in capsys.readouterr().err
    assert files(out) == before


def _notes(folder):
    (folder / "notes.txt").write_text("not a run\n")


def _dataset_copy(folder):
    (folder / "meta").mkdir()
    (folder / "meta" / "info.json").write_text("{}")
    (folder / "videos" / "chunk-000").mkdir(parents=True)


def _batch_folder(folder):
    (folder / "batch_results.json").write_text(json.dumps({"kind": "batch", "jobs": [], "status": "complete"}))
    (folder / "jobs" / "walk").mkdir(parents=True)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("fill, held", [(_notes, "notes.txt"), (_dataset_copy, "meta"), (_batch_folder, "batch_results.json")],
                         ids=["notes", "dataset", "batch"])
def test_a_shard_into_a_folder_holding_other_things_is_refused_as_not_empty(server, tmp_path, capsys, overwrite, fill,
                                                                            held):
    out = tmp_path / "folder"
    out.mkdir()
    fill(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert rollout(server.port, out, "--shard", "0/2", *overwrite) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} is not empty (it holds " in err and held in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_a_shard_joins_its_splits_files_videos_and_their_earlier_merge(server, tmp_path):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    (out / "videos").mkdir()
    assert cli.main(["merge", str(out), "--output", str(out), "--allow-missing"]) == 1  # shard 1 not run yet
    assert {"results.json", "eval_info.json"} <= set(files(out))
    assert rollout(server.port, out, "--shard", "1/2") == 0
    assert cli.main(["merge", str(out), "--output", str(out)]) == 0


def test_shards_share_a_video_dir_inside_their_directory(server, tmp_path):
    out = tmp_path / "shards"
    for index in (0, 1):
        assert cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization",
                         "sync", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--policy-client-port",
                         str(server.port), "--output-dir", str(out), "--video-dir", str(out / "clips"), "--shard",
                         f"{index}/2"]) == 0
    assert (out / "clips").is_dir()


@pytest.mark.parametrize("again", [["--overwrite"], ["--resume"]])
def test_a_shard_run_again_removes_the_merge_in_its_folder_that_holds_its_earlier_results(server, tmp_path, caplog,
                                                                                        again):
    """`merge DIR --output DIR` went on saying "complete" with the replaced shard's episodes, and nothing said so."""
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    assert rollout(server.port, out, "--shard", "1/2") == 0
    assert cli.main(["merge", str(out), "--output", str(out)]) == 0
    if again == ["--resume"]:
        assert cli.main(["rollout", "--resume", str(out), "--shard", "0/2", "--policy-client-port",
                         str(server.port)]) == 0
    else:
        assert rollout(server.port, out, "--shard", "0/2", "--overwrite") == 0
    assert not (out / "results.json").exists() and not (out / "eval_info.json").exists()
    assert (f"removed results.json and eval_info.json, the merge of this split's shards in {out}: it holds the earlier "
            f"results of results_shard0of2.json, which this run replaces; merge again once the shards are done: "
            f"gr00t-eval merge {out} --output {out / 'results.json'}" in caplog.text)
    assert {"results_shard0of2.json", "results_shard1of2.json"} <= set(files(out))
    assert cli.main(["merge", str(out), "--output", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["overall"]["n_episodes"] == 4


def test_a_shard_run_again_keeps_a_merge_in_its_folder_that_does_not_hold_it(server, tmp_path):
    out = tmp_path / "shards"
    assert rollout(server.port, out, "--shard", "0/2") == 0
    assert cli.main(["merge", str(out), "--output", str(out), "--allow-missing"]) == 1
    assert rollout(server.port, out, "--shard", "1/2") == 0
    assert rollout(server.port, out, "--shard", "1/2", "--overwrite") == 0
    assert json.loads((out / "results.json").read_text())["merged_files"] == [str(out / "results_shard0of2.json")]


def _split(port, out):
    for index in (0, 1):
        assert rollout(port, out, "--shard", f"{index}/2") == 0
    return out


@pytest.mark.parametrize("recorded", ["merged_paths", "merged_files only"])
def test_a_shard_run_again_keeps_another_splits_merge_kept_in_its_folder(server, tmp_path, recorded):
    """A merge of experiment B's shards kept in experiment A's folder was deleted when A's shard 0 ran again: its
    merged_files name a results_shard0of2.json too, of B's folder."""
    a, b = _split(server.port, tmp_path / "expA"), _split(server.port, tmp_path / "expB")
    assert cli.main(["merge", str(b), "--output", str(a / "merge_of_B.json")]) == 0
    if recorded == "merged_files only":  # a merge of an earlier version
        merge = json.loads((a / "merge_of_B.json").read_text())
        merge.pop("merged_paths", None)
        (a / "merge_of_B.json").write_text(json.dumps(merge))
    before = {name: (a / name).read_bytes() for name in ("merge_of_B.json", "eval_info.json")}
    assert rollout(server.port, a, "--shard", "0/2", "--overwrite") == 0
    assert {name: (a / name).read_bytes() for name in before} == before


def test_the_merge_command_a_shard_run_again_suggests_is_quoted(server, tmp_path, caplog):
    out = _split(server.port, tmp_path / "my shards")
    assert cli.main(["merge", str(out), "--output", str(out)]) == 0
    assert rollout(server.port, out, "--shard", "0/2", "--overwrite") == 0
    assert f"gr00t-eval merge '{out}' --output '{out / 'results.json'}'" in caplog.text


@pytest.mark.parametrize("again", ["--overwrite", "--resume"])
def test_a_shard_run_again_that_reaches_no_server_keeps_the_merge_in_its_folder(server, tmp_path, again):
    """A resume (or re-run) of a shard with the server down deleted the merge before it stopped, its shard results
    unchanged by the resume."""
    out = _split(server.port, tmp_path / "shards")
    assert cli.main(["merge", str(out), "--output", str(out)]) == 0
    merge = {name: (out / name).read_bytes() for name in ("results.json", "eval_info.json")}
    args = (["rollout", "--resume", str(out), "--shard", "0/2", "--policy-client-port", "9", "--timeout-ms", "300"]
            if again == "--resume" else
            ["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization", "sync",
             "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video", "--policy-client-port",
             "9", "--timeout-ms", "300", "--output-dir", str(out), "--shard", "0/2", "--overwrite"])
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    assert code != 0
    assert {name: (out / name).read_bytes() for name in merge} == merge


def test_a_merge_written_through_a_link_in_the_shards_folder_is_kept_and_named_with_its_target(server, tmp_path,
                                                                                               caplog):
    """The link was deleted, its target (the merge, still "complete") kept, and the log said "removed final.json"."""
    out, share = _split(server.port, tmp_path / "shards"), tmp_path / "share"
    share.mkdir()
    assert cli.main(["merge", str(out), "--output", str(share / "final.json")]) == 0
    (out / "final.json").symlink_to(share / "final.json")
    assert cli.main(["merge", str(out), "--output", str(out / "final.json")]) == 0
    assert rollout(server.port, out, "--shard", "0/2", "--overwrite") == 0
    assert (out / "final.json").is_symlink() and (share / "final.json").is_file()
    assert (f"{out / 'final.json'}, a symbolic link to {share / 'final.json'}, is the merge of this split's shards: it "
            "holds the earlier results of results_shard0of2.json, which this run replaces; both are kept: merge again "
            "once the shards are done" in caplog.text)
    assert "removed final.json" not in caplog.text


def test_a_shard_run_again_in_a_copied_split_removes_the_merge_copied_with_it(server, tmp_path):
    # Its merged_paths name the original folder's files (still there): the copy's merge, written beside its shards
    # (merged_into), was kept saying "complete" with the replaced shard's numbers.
    out = _split(server.port, tmp_path / "shards")
    assert cli.main(["merge", str(out), "--output", str(out)]) == 0
    copy = tmp_path / "copied"
    shutil.copytree(out, copy)
    assert rollout(server.port, copy, "--shard", "0/2", "--overwrite") == 0
    assert not (copy / "results.json").exists() and (out / "results.json").is_file()
