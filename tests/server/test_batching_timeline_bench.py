"""benchmarks/batching_timeline.py runs against a real batching server and fills every stage of its timeline
(its instrumentation wraps server internals by name, so a rename must fail here, not print dashes)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "batching_timeline.py"


@pytest.mark.slow
def test_every_stage_of_a_round_is_measured():
    result = subprocess.run([sys.executable, str(SCRIPT), "--clients", "4", "--duration", "2", "--base-ms", "10",
                             "--per-row-ms", "2"], capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    per_round = result.stdout.split("median ms per round:\n")[1].split("per request, ms:")[0]
    stages = dict(re.findall(r"^ +(\S.*?)\s+(-|\d+\.\d+)$", per_round, re.MULTILINE))
    assert len(stages) == 11, result.stdout
    assert "-" not in stages.values(), result.stdout
    values = {name: float(value) for name, value in stages.items()}
    assert values["policy call"] >= 10 + 2 * 4 - 0.5  # the sleep policy's call for a full batch of 4 rows
    assert values["round (replies sent -> next replies sent)"] >= values["policy call"]
    assert values["clients: replies sent -> last request back"] >= values["clients: replies sent -> first request back"]
    assert 0 < values["of which the socket thread receives and parses"] < values["round (replies sent -> next replies sent)"]
    per_request = re.findall(r"^  (delivery: .*|client: .*?)\s+p10\s+[\d.]+\s+p50\s+[\d.]+\s+p90\s+[\d.]+$", result.stdout, re.MULTILINE)
    assert len(per_request) == 2, result.stdout
    assert re.search(r"4 client processes, sleep 10\+2/row: [\d.]+ req/s = [\d.]+% of ideal; \d+ of \d+ rounds full", result.stdout)


@pytest.mark.slow
def test_client_threads_as_throughput_runs_them_get_every_server_stage():
    """--clients-as threads: throughput.py's default clients (PolicyClient threads of one process), whose turnaround
    under one interpreter lock was the part of a K=16 round the process clients did not show."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--clients", "4", "--duration", "2", "--base-ms", "10",
                             "--per-row-ms", "2", "--clients-as", "threads"], capture_output=True, text=True,
                            timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"4 client threads, sleep 10\+2/row: [\d.]+ req/s = [\d.]+% of ideal; \d+ of \d+ rounds full",
                     result.stdout), result.stdout
    per_round = result.stdout.split("median ms per round:\n")[1].split("per request, ms:")[0]
    stages = dict(re.findall(r"^ +(\S.*?)\s+(-|\d+\.\d+)$", per_round, re.MULTILINE))
    assert len(stages) == 11 and "-" not in stages.values(), result.stdout
    assert float(stages["policy call"]) >= 10 + 2 * 4 - 0.5
    # no client stamps are taken from threads: those two lines say so rather than make numbers up
    assert len(re.findall(r"^  (?:delivery: .*|client: .*?)\s+-$", result.stdout, re.MULTILINE)) == 2, result.stdout


def test_warm_up_rounds_are_left_out_of_the_rounds_counted():
    """Each client's untimed first call, sent before the start barrier as it finished spawning, was counted in
    "N of M rounds full": every lone round of a run was one of them."""
    clients = 3
    result = subprocess.run([sys.executable, str(SCRIPT), "--clients", str(clients), "--duration", "1", "--base-ms", "5",
                             "--per-row-ms", "0"], capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    counted = re.search(r"(\d+) of (\d+) rounds full \(left out: (\d+) warm-up rounds before the start, (\d+) after the "
                        r"first client stopped\)", result.stdout)
    assert counted, result.stdout
    full, timed, warm_up, _draining = map(int, counted.groups())
    assert 1 <= warm_up <= clients, result.stdout  # the warm-up calls made at least one round, at most one each
    assert 0 < full <= timed, result.stdout


def test_a_sleep_policy_that_costs_nothing_has_no_ideal_and_the_run_finishes():
    """--base-ms 0 --per-row-ms 0 ran the whole timeline, then died dividing by the ideal's zero call time."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--clients", "2", "--duration", "0.5", "--base-ms", "0",
                             "--per-row-ms", "0"], capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"2 client processes, sleep 0\+0/row: [\d.]+ req/s = - of ideal;", result.stdout), result.stdout


def test_a_negative_sleep_policy_cost_is_a_usage_error():
    result = subprocess.run([sys.executable, str(SCRIPT), "--per-row-ms", "-1"], capture_output=True, text=True,
                            timeout=60, cwd=SCRIPT.parent)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "argument --per-row-ms: must be a finite number >= 0, got -1" in result.stderr
