"""Whether the run of a gr00t-eval older than claims (no process to check) still runs is judged by its episode log
changing while watched, not only by its time against this host's clock: a log dated ahead of this clock (written on a
host or file server whose clock ran ahead) was refused as "changed 0 s ago" for as long as the clocks differed, with no
word of the clock; and a log still written by a host whose clock runs behind looked long finished. Real CLI, files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time

from eval.scale_fixtures import policy_server
from gr00t_eval.cli import main

AHEAD_S = 7200.0


def legacy_run(out, port):
    """A walkto run of 3 episodes, killed after 2, as a gr00t-eval older than claims left it."""
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "5000", "--n-episodes", "3", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--vectorization", "sync", "--no-video", "--policy-client-port", str(port)]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    for key in ("claim", "policy", "default_video_dir"):  # what an older gr00t-eval's run file did not hold
        run.pop(key, None)
    (out / "run.json").write_text(json.dumps(run))
    lines = (out / "episodes.jsonl").read_text().splitlines()
    (out / "episodes.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (out / "results.json").unlink()
    return out / "episodes.jsonl"


def resume(out, port):
    return main(["rollout", "--resume", str(out), "--policy-client-port", str(port), "--env-import",
                 "eval.scale_fixtures"])


def test_a_log_dated_ahead_of_this_hosts_clock_is_refused_naming_the_clocks_and_the_way_past(tmp_path, capsys):
    out = tmp_path / "run"
    with policy_server() as server:
        log = legacy_run(out, server.port)
        ahead = time.time() + AHEAD_S
        os.utime(log, (ahead, ahead))
        capsys.readouterr()
        assert resume(out, server.port) == 2
        err = capsys.readouterr().err
        assert re.search(r"its episodes\.jsonl is dated 7(19\d|200) s ahead of this host's clock", err), err
        assert "did not change in the 2 s it was watched" in err, err
        way_past = re.search(r"touch -d '(\d+) seconds ago' (\S+?);", err)
        assert way_past is not None and way_past.group(2) == str(log), err
        ago = time.time() - float(way_past.group(1))  # the way past, as the refusal gives it
        os.utime(log, (ago, ago))
        assert resume(out, server.port) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "complete"


@contextlib.contextmanager
def still_writing(log, dated_at):
    """The older run still writes: an episode appended to `log` every 0.2 s, each dated `dated_at` by its writer's
    clock (the log is dated so from the start)."""
    first = log.read_text().splitlines()[0]
    os.utime(log, (dated_at, dated_at))
    stop = threading.Event()

    def write_episodes():
        while not stop.wait(0.2):
            with log.open("a") as handle:
                handle.write(first + "\n")
            os.utime(log, (dated_at, dated_at))

    writer = threading.Thread(target=write_episodes)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def test_a_log_written_while_watched_is_refused_though_its_time_reads_long_ago(tmp_path, capsys):
    out = tmp_path / "run"
    with policy_server() as server:
        log = legacy_run(out, server.port)
        with still_writing(log, time.time() - 3600):  # its writer's clock runs an hour behind this host's
            capsys.readouterr()
            assert resume(out, server.port) == 2
    err = capsys.readouterr().err
    assert "episodes.jsonl changed while it was watched" in err and "it is still running" in err, err
    assert not (out / "results.json").exists()


def test_a_log_written_while_watched_is_refused_though_it_is_dated_before_the_runs_earlier_results(tmp_path, capsys):
    out = tmp_path / "run"
    with policy_server() as server:
        log = legacy_run(out, server.port)
        results = out / "results.json"  # its earlier, interrupted attempt's, written before the clock stepped back
        results.write_text(json.dumps({"kind": "rollout", "status": "interrupted", "per_episode": []}))
        with still_writing(log, time.time() - 3600):  # the host's clock then went back an hour: each append dates
            capsys.readouterr()  # before the results
            assert resume(out, server.port) == 2
    err = capsys.readouterr().err
    assert "episodes.jsonl changed while it was watched" in err and "it is still running" in err, err
    assert json.loads(results.read_text())["status"] == "interrupted"
