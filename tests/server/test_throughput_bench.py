"""benchmarks/throughput.py with its clients as sockets of one process (raw-sockets) serves every request and
batches them (the mode separates the server's cost from K client processes competing for a small machine's cores)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


@pytest.mark.slow
def test_raw_socket_clients_are_all_served_and_batched():
    result = subprocess.run([sys.executable, str(SCRIPT), "--policy", "sleep", "--clients-as", "raw-sockets", "--clients",
                             "4", "--duration", "1", "--base-ms", "10", "--per-row-ms", "1"],
                            capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^sleep 10\+1/row\s+4\s+(off|on)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+(\d+)\s+(\d+)$",
                      result.stdout, re.MULTILINE)
    assert [row[0] for row in rows] == ["off", "on"], result.stdout
    by_mode = {mode: (float(rps), float(batch), int(n), int(errors)) for mode, rps, batch, n, errors in rows}
    assert all(errors == 0 and n > 0 for _rps, _batch, n, errors in by_mode.values()), result.stdout
    assert by_mode["off"][1] == 1.0 and by_mode["on"][1] > 2.0, result.stdout  # 4 sockets' requests were gathered
    assert by_mode["on"][0] > 1.5 * by_mode["off"][0], result.stdout
