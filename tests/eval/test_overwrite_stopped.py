"""`--overwrite` stopped part-way (Ctrl-C, SIGTERM) leaves the earlier run in its output directory whole or entirely
gone, never half deleted: entries were deleted one at a time, and a stop left run.json and a results.json saying
"complete" beside some of its videos, which a later --resume took for the finished run. Real folders; the stop is a
KeyboardInterrupt from the Nth file-system call of the overwrite (a rename, unlink or rmdir), for every N."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
from pathlib import Path

import pytest

from gr00t_eval.run_dir import ROLLOUT_LOCK_FILENAME, check_output_dir, prepare_output_dir
from gr00t_eval.dataset.overwrite import OVERWRITE_TRASH

FILE_CALLS = ("rename", "unlink", "rmdir")
SHARD_0 = ["run_shard0of2.json", "episodes_shard0of2.jsonl", "results_shard0of2.json"]
SHARD_1 = ["run_shard1of2.json", "episodes_shard1of2.jsonl", "results_shard1of2.json"]


@contextlib.contextmanager
def stopped_at_call(number: int, when: str, names=FILE_CALLS):
    """A KeyboardInterrupt (a Ctrl-C landing there) just before, or just after, the `number`-th call of the block to
    one of the os functions `names` (os.rename, os.unlink, os.rmdir)."""
    calls = itertools.count(1)
    originals = {name: getattr(os, name) for name in names}

    def stopping(name):
        def call(*args, **kwargs):
            stop = next(calls) == number
            if stop and when == "before":
                raise KeyboardInterrupt
            done = originals[name](*args, **kwargs)
            if stop:
                raise KeyboardInterrupt
            return done
        return call

    with pytest.MonkeyPatch.context() as patch:
        for name in names:
            patch.setattr(os, name, stopping(name))
        yield


def write_episodes(out: Path, log_name: str, results_name: str, run_name: str, indices) -> None:
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in indices:
        video = videos / f"episode_{index:04d}_success.mp4"
        video.write_bytes(b"video %d" % index)
        entries.append({"task": "reach", "episode_index": index, "success": True, "video_path": str(video)})
    (out / run_name).write_text(json.dumps({"config": {"n_episodes": len(entries)}}))
    (out / log_name).write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    (out / results_name).write_text(json.dumps({"status": "complete", "per_episode": entries}))


def earlier_run(out: Path) -> dict:
    """A finished whole run (run.json, episodes.jsonl, results.json, eval_info.json, videos/) and the folder's lock."""
    write_episodes(out, "episodes.jsonl", "results.json", "run.json", range(6))
    (out / "eval_info.json").write_text("{}")
    (out / ROLLOUT_LOCK_FILENAME).touch()
    return files(out)


def files(out: Path) -> dict:
    """Every file under `out` but the lock and what an overwrite moved aside: {relative path: content}."""
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*"))
            if path.is_file() and path.name != ROLLOUT_LOCK_FILENAME and OVERWRITE_TRASH not in path.parts}


def overwrite_stopped_at_every_call(tmp_path: Path, when: str, make_run, overwrite):
    """Run `overwrite` on a fresh copy of `make_run`'s run, stopped at its 1st, 2nd, ... file-system call until one
    finishes; yield (what the folder held before, after, the log) for each stopped one."""
    for number in itertools.count(1):
        out = tmp_path / f"{when}{number}"
        out.mkdir()
        before = make_run(out)
        try:
            with stopped_at_call(number, when):
                overwrite(out)
        except KeyboardInterrupt:
            yield number, out, before
            continue
        assert number > 6, "the overwrite made too few file-system calls for this test to stop it part-way"
        return


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_overwrite_stopped_at_any_point_leaves_the_earlier_run_whole_or_gone_and_says_which(tmp_path, caplog, when):
    def overwrite(out):
        prepare_output_dir(out, overwrite=True, keep=(ROLLOUT_LOCK_FILENAME,))

    for number, out, before in overwrite_stopped_at_every_call(tmp_path, when, earlier_run, overwrite):
        left = files(out)
        assert left in (before, {}), f"stopped at call {number} ({when}): the earlier run is half deleted: {sorted(left)}"
        assert (out / ROLLOUT_LOCK_FILENAME).exists()
        said = "is kept as it was" if left else "it is removed"
        assert said in caplog.text, f"stopped at call {number} ({when}): the log does not say the run {said}"
        caplog.clear()


def shard_run(out: Path) -> dict:
    """Shard 0 and shard 1 of a 2-way split, sharing `out` and its videos/ folder."""
    write_episodes(out, SHARD_1[1], SHARD_1[2], SHARD_1[0], range(3, 6))
    write_episodes(out, SHARD_0[1], SHARD_0[2], SHARD_0[0], range(3))
    (out / ROLLOUT_LOCK_FILENAME).touch()
    return files(out)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_shard_overwrite_stopped_at_any_point_leaves_that_shard_whole_or_gone_and_the_other_as_it_was(tmp_path, when):
    def overwrite(out):
        prepare_output_dir(out, overwrite=True, own_files=SHARD_0, keep=(ROLLOUT_LOCK_FILENAME,))

    for number, out, before in overwrite_stopped_at_every_call(tmp_path, when, shard_run, overwrite):
        left = files(out)
        shard_0 = SHARD_0 + [f"videos/episode_{index:04d}_success.mp4" for index in range(3)]
        gone = {name: data for name, data in before.items() if name not in shard_0}
        assert left in (before, gone), f"stopped at call {number} ({when}): shard 0 is half deleted: {sorted(left)}"


def test_what_a_stopped_overwrite_left_aside_is_no_content_and_the_next_run_deletes_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    earlier_run(out)
    with pytest.raises(KeyboardInterrupt), stopped_at_call(1, "before", names=("unlink",)):  # once moved aside
        prepare_output_dir(out, overwrite=True, keep=(ROLLOUT_LOCK_FILENAME,))
    assert files(out) == {} and (out / OVERWRITE_TRASH).is_dir()

    check_output_dir(out, keep=(ROLLOUT_LOCK_FILENAME,))  # not "not empty"
    prepare_output_dir(out, keep=(ROLLOUT_LOCK_FILENAME,))
    assert sorted(path.name for path in out.iterdir()) == [ROLLOUT_LOCK_FILENAME]


def test_an_overwrite_that_cannot_move_an_entry_aside_deletes_nothing_and_names_it(tmp_path):
    from gr00t_eval.output_files import OutputDirError

    out = tmp_path / "out"
    out.mkdir()
    before = earlier_run(out)
    rename, calls = os.rename, itertools.count(1)

    def rename_refused_third(source, target, *args, **kwargs):  # a move the file system refuses part-way
        if next(calls) == 3:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(source))
        return rename(source, target, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OutputDirError) as refused:
        patch.setattr(os, "rename", rename_refused_third)
        prepare_output_dir(out, overwrite=True, keep=(ROLLOUT_LOCK_FILENAME,))
    assert "could not move" in str(refused.value)
    assert f"nothing was deleted: the earlier run in {out} is as it was" in str(refused.value)
    assert files(out) == before
