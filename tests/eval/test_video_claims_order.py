"""Which run claimed a --video-dir last is told by a counter kept in the folder, not by the claims' wall-clock start: a
run on a host whose clock is behind (or after this host's clock was stepped back) took the folder after an interrupted
run, and that run's --resume was let through and wrote over its videos. Claims of older versions (no number) are
still ordered by their start times. Real claim files in a real folder."""

from __future__ import annotations

import json
import time

from gr00t_eval.run_claim import finish_claim
from gr00t_eval.video_claims import claim_video_dir, video_dir_taken_over

SKEW_S = 600.0


def claimed_and_ended(videos, writer, monkeypatch=None, behind_s=0.0):
    """The finished claim `writer` made on `videos`, this host's clock read `behind_s` s behind while it claimed."""
    if behind_s:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - behind_s)
    claim = claim_video_dir(videos, writer)
    if behind_s:
        monkeypatch.undo()
    finish_claim(claim, "interrupted")
    return claim


def as_older_version(claim):
    """`claim` as a gr00t-eval that kept no claim counter wrote it."""
    data = json.loads(claim.read_text())
    data.pop("claim_number", None)
    claim.write_text(json.dumps(data))
    return claim


def test_a_run_that_claimed_the_folder_later_with_a_clock_behind_has_taken_it_over(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    claimed_and_ended(videos, str(tmp_path / "a"))
    later = claimed_and_ended(videos, str(tmp_path / "b"), monkeypatch, behind_s=SKEW_S)
    assert video_dir_taken_over(videos, str(tmp_path / "a")) == later


def test_a_run_that_claimed_the_folder_earlier_with_a_clock_ahead_has_not_taken_it_over(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    claimed_and_ended(videos, str(tmp_path / "b"), monkeypatch, behind_s=-SKEW_S)
    claimed_and_ended(videos, str(tmp_path / "a"))
    assert video_dir_taken_over(videos, str(tmp_path / "a")) is None


def test_claims_keep_their_order_when_the_folders_counter_is_deleted(tmp_path):
    videos = tmp_path / "videos"
    claimed_and_ended(videos, str(tmp_path / "a"))
    for counter in videos.glob(".gr00t_videos.claims*"):
        counter.unlink()
    later = claimed_and_ended(videos, str(tmp_path / "b"))
    assert video_dir_taken_over(videos, str(tmp_path / "a")) == later
    assert video_dir_taken_over(videos, str(tmp_path / "b")) is None


def test_claims_of_an_older_version_are_ordered_by_their_start_times(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    older = as_older_version(claimed_and_ended(videos, str(tmp_path / "a")))
    later = as_older_version(claimed_and_ended(videos, str(tmp_path / "b"), monkeypatch, behind_s=-SKEW_S))
    assert video_dir_taken_over(videos, str(tmp_path / "a")) == later
    assert video_dir_taken_over(videos, str(tmp_path / "b")) is None
    assert older.is_file()


def test_an_older_versions_claim_beside_a_numbered_one_is_ordered_by_start_time(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    as_older_version(claimed_and_ended(videos, str(tmp_path / "a"), monkeypatch, behind_s=-SKEW_S))
    claimed_and_ended(videos, str(tmp_path / "b"))  # numbered, but its start reads earlier than a's
    assert video_dir_taken_over(videos, str(tmp_path / "b")) is not None
    assert video_dir_taken_over(videos, str(tmp_path / "a")) is None
