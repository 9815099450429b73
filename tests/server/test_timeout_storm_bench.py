"""benchmarks/timeout_storm.py against the sleep policy: clients whose timeout is shorter than the queue get fewer
actions than they ask for, and the server's counts add up (its requests expired without a call, not run late)."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "timeout_storm.py"


def test_a_storm_is_counted_calls_received_and_expired():
    result = subprocess.run([sys.executable, str(SCRIPT), "--policy", "sleep", "--call-ms", "30", "--clients", "4",
                             "--timeout-ms", "60", "--duration", "2"],
                            capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {key: int(value) for key, value in re.findall(r"(\w+) (\d+)", result.stdout.split("\n", 1)[1])}
    assert counts["timed_out"] > 0 and counts["expired"] > 0, result.stdout  # 4 x 30 ms queued behind a 60 ms timeout
    assert 0 < counts["received"] <= counts["policy_calls"], result.stdout
    fraction = re.search(r"calls that reached a waiting client: (\d+) / (\d+)", result.stdout)
    assert fraction and (int(fraction[1]), int(fraction[2])) == (counts["received"], counts["policy_calls"])
