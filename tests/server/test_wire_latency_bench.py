"""benchmarks/wire_latency.py runs every path against servers in their own processes and prints a ratio to the
raw floor for each of ours (the benchmark issue 15's wire target is judged by)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "wire_latency.py"
PATHS = ["ours (auto=multipart)", "ours (multipart, inline off)", 'ours (wire="reference")', "reference-style client (no CURVE)",
         "codec only, no server (multipart)", "raw ZeroMQ REQ/REP floor"]


@pytest.mark.slow
def test_every_path_is_timed_with_curve_off_and_on_and_compared_to_the_floor():
    result = subprocess.run([sys.executable, str(SCRIPT), "--iterations", "20", "--warmup", "3", "--rounds", "2"],
                            capture_output=True, text=True, timeout=600, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    for case in ("LIBERO-like", "large"):
        for path in PATHS:
            row = next((line for line in result.stdout.splitlines() if line.startswith(case) and path in line), None)
            assert row is not None, f"no {path!r} row for {case}:\n{result.stdout}"
            cells = row.split(path)[1].split()
            plaintext_only = path.startswith("reference-style") or "inline off" in path  # timed without CURVE
            expected_dashes = 3 if plaintext_only else 0
            assert cells.count("-") == expected_dashes and len(cells) == 6, row
            assert all(float(cell) > 0 for cell in cells if cell != "-"), row
        ratios = re.findall(rf"^  {re.escape(case)}.*?\s(\d+\.\d+)x$", result.stdout, re.MULTILINE)
        assert len(ratios) == len(PATHS) - 1, result.stdout  # every path but the floor itself


def test_a_reply_is_checked_against_the_null_policys_action_for_every_kind_of_path():
    """No path's reply was checked: a server answering another action was timed as if it served the null policy."""
    import importlib.util

    import numpy as np
    import zmq

    spec = importlib.util.spec_from_file_location("wire_latency_bench", SCRIPT)
    wire_latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wire_latency)
    null = wire_latency.NullPolicy()._action
    wrong = {**null, "arm": null["arm"] + 1.0}
    reply_bytes = b"the null reply"
    assert wire_latency.is_null_reply((null, {}), reply_bytes)
    assert wire_latency.is_null_reply({"ok": True, "result": [null, {}]}, reply_bytes)
    assert wire_latency.is_null_reply(zmq.Frame(reply_bytes), reply_bytes)
    assert not wire_latency.is_null_reply((wrong, {}), reply_bytes)
    assert not wire_latency.is_null_reply({"ok": True, "result": [{"arm": np.zeros((1, 16, 7), np.float32)}, {}]}, reply_bytes)
    assert not wire_latency.is_null_reply(zmq.Frame(b"another reply"), reply_bytes)
