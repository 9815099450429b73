"""benchmarks/timeout_storm.py against the sleep policy: clients whose timeout is shorter than the queue get fewer
actions than they ask for, and the server's counts add up (its requests expired without a call, not run late)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_a_timeout_below_one_ms_is_a_usage_error():
    """--timeout-ms 0 made every client thread die with ValueError, and the run printed zeros with exit status 0."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--policy", "sleep", "--timeout-ms", "0"],
                            capture_output=True, text=True, timeout=60, cwd=SCRIPT.parent)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "argument --timeout-ms: must be >= 1, got 0" in result.stderr


def test_a_client_error_other_than_a_timeout_fails_the_storm_naming_it():
    """Any error but a timeout ended its client thread silently, and the storm was reported as if it had run."""
    import importlib.util

    import numpy as np
    from reference_peer import EchoPolicy
    from serving import running_server

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("timeout_storm", SCRIPT)
    timeout_storm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timeout_storm)
    from _children import BenchmarkError

    class Broken(EchoPolicy):
        def _get_action(self, observation, options=None):
            raise ValueError("broken policy")

    observation = {"state": {"x": np.zeros((1, 1, 4), np.float32)}}
    with running_server(Broken()) as server:
        with pytest.raises(BenchmarkError, match=r"client threads failed; the first: PolicyServerError: .*broken policy"):
            timeout_storm.storm(server.port, [observation], 2, 5000, 30.0, {})

