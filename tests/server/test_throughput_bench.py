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


def _throughput_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("throughput_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_point_whose_policy_fails_every_call_ends_and_counts_the_failures():
    """With --requests, failed calls were not counted, so a policy failing after its warm-up call looped for ever
    (44,776 failed calls in 20 s); a client whose warm-up call failed left the driver waiting on a barrier."""
    import numpy as np
    from reference_peer import EchoPolicy
    from serving import running_server

    throughput = _throughput_module()

    class FailsAfterFirst(EchoPolicy):
        def _get_action(self, observation, options=None):
            if self.calls >= 1:
                self.calls += 1
                raise ValueError("broken")
            return super()._get_action(observation, options)

    observation = {"state": {"x": np.zeros((1, 1, 4), np.float32)}}
    with running_server(FailsAfterFirst()) as server:
        completed, _seconds, _latencies, errors, _warm = throughput.drive(
            server.port, 1, [observation], 1.0, 5, on_warm=lambda: None)
        assert (completed, errors) == (0, 5)
        with pytest.raises(RuntimeError, match=r"a client's warm-up get_action failed \(K=2\)"):
            throughput.drive(server.port, 2, [observation], 1.0, 5, on_warm=lambda: None)
