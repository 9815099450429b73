"""A run's claim of its output directory does not depend on the wall clock: a live run whose machine's clock was
stepped forward (NTP on a robot that booted with an old clock) is never taken for a dead one, so neither
--overwrite nor --resume takes its directory; and a run that lost its claim never marks another run's finished."""

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gr00t_eval.run_claim import (
    CLAIM_KEY, ClaimHolder, claim_output_dir, finish_claim, holder_alive, read_holder, refuse_live_claim,
)
from gr00t_eval.run_dir import OutputDirError

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or not Path("/proc/sys/kernel/random/boot_id").exists(),
                                reason="process start ticks and the boot id come from /proc (Linux)")

_CLAIMANT = """
import sys, time
from gr00t_eval.run_claim import claim_output_dir
claim_output_dir(sys.argv[1], "claim.json", {"settings": 1})
print("claimed", flush=True)
time.sleep(120)
"""


@pytest.fixture
def live_claimant(tmp_path):
    """A process that claimed tmp_path/out and still runs."""
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-c", _CLAIMANT, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "claimed"
        yield process, out
    finally:
        process.kill()
        process.wait(30)


def _step_clock_forward(claim: Path, seconds: float) -> None:
    """What a forward step of the wall clock after the claim looks like to a later reader: the holder's start time
    (from /proc, following the current clock) is `seconds` past the wall-clock time the claim recorded."""
    data = json.loads(claim.read_text())
    data[CLAIM_KEY]["started_unix"] -= seconds
    claim.write_text(json.dumps(data))


def test_a_live_run_is_still_live_after_the_wall_clock_steps_forward(live_claimant):
    process, out = live_claimant
    claim = out / "claim.json"
    record = json.loads(claim.read_text())[CLAIM_KEY]
    assert isinstance(record["start_ticks"], int) and record["boot_id"]
    _step_clock_forward(claim, 86400)
    with pytest.raises(OutputDirError, match=rf"is in use: the run that claimed it is still running \(pid {process.pid}"):
        refuse_live_claim(out, "claim.json")


def test_a_reused_pid_is_still_told_from_the_claimant_by_its_start(live_claimant):
    process, out = live_claimant
    holder = read_holder(out / "claim.json")
    assert holder_alive(holder)
    reused = ClaimHolder(holder.pid, holder.hostname, holder.started, holder.started_unix, False,
                         start_ticks=holder.start_ticks - 1, boot_id=holder.boot_id)
    assert not holder_alive(reused)  # the same pid, another process: the claimant is gone
    other_boot = ClaimHolder(holder.pid, holder.hostname, holder.started, holder.started_unix, False,
                             start_ticks=holder.start_ticks, boot_id="another-boot")
    assert not holder_alive(other_boot)


def test_a_claim_of_an_older_version_without_ticks_falls_back_to_the_wall_clock(live_claimant):
    process, out = live_claimant
    holder = read_holder(out / "claim.json")
    old = ClaimHolder(holder.pid, socket.gethostname(), holder.started, time.time(), False)
    assert holder_alive(old)
    assert not holder_alive(ClaimHolder(holder.pid, socket.gethostname(), holder.started, time.time() - 3600, False))


def test_a_run_whose_claim_was_taken_over_does_not_mark_the_new_claim_finished(tmp_path, caplog):
    """An open-loop judged gone had its folder taken by another run; its own finish then wrote 'finished' and its
    end time into the new run's claim, which a third run could then take over while the second still ran."""
    out = tmp_path / "out"
    out.mkdir()
    claim = claim_output_dir(out, "claim.json", {"mine": True})
    data = json.loads(claim.read_text())
    data[CLAIM_KEY]["pid"] += 100000  # another run holds the claim now
    claim.write_text(json.dumps(data))
    before = claim.read_text()
    with caplog.at_level(logging.WARNING, logger="gr00t_eval.run_claim"):
        finish_claim(claim, "complete")
    assert claim.read_text() == before
    assert "did not mark" in caplog.text and "it is now claimed by another run" in caplog.text
    data[CLAIM_KEY]["pid"] -= 100000  # ours again: marked
    claim.write_text(json.dumps(data))
    finish_claim(claim, "complete")
    assert json.loads(claim.read_text())[CLAIM_KEY]["finished"] is True


def test_a_host_renamed_mid_run_keeps_its_claim(tmp_path, monkeypatch):
    """The run's own finish compared host names: after a rename it took its claim for another run's and left it
    unfinished, and a later --resume on that machine was refused as 'another host'."""
    from gr00t_eval import run_claim

    out = tmp_path / "out"
    out.mkdir()
    claim = claim_output_dir(out, "claim.json", {"mine": True})
    monkeypatch.setattr(run_claim.socket, "gethostname", lambda: "renamed-host")
    assert read_holder(claim).hostname != "renamed-host"
    with pytest.raises(OutputDirError, match="is in use: the run that claimed it is still running"):
        refuse_live_claim(out, "claim.json")  # this machine (same boot): checked here, not "another host"
    finish_claim(claim, "complete")
    assert json.loads(claim.read_text())[CLAIM_KEY]["finished"] is True
    assert refuse_live_claim(out, "claim.json").finished
