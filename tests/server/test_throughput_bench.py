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


def test_requests_runs_exactly_that_many_requests_per_client_over_the_slices():
    """--requests 3 over the default 2 slices ran 2 per client (max(1, 3 // 2) per slice), and --requests 1 ran 2:
    the table's n and req/s were for another count than asked."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--policy", "sleep", "--requests", "3", "--clients", "1,2",
                             "--base-ms", "1", "--per-row-ms", "0"],
                            capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    rows = re.findall(r"^sleep 1\+0/row\s+(\d+)\s+(off|on)\s+.*\s(\d+)\s+(\d+)$", result.stdout, re.MULTILINE)
    assert [(int(k), mode) for k, mode, _n, _errors in rows] == [(1, "off"), (1, "on"), (2, "off"), (2, "on")], result.stdout + result.stderr
    assert [int(n) for k, _mode, n, _errors in rows] == [3 * int(k) for k, _mode, _n, _errors in rows], result.stdout


def test_requests_are_shared_out_over_the_slices_exactly():
    throughput = _throughput_module()
    assert throughput.requests_per_slice(5, 2) == [3, 2]
    assert throughput.requests_per_slice(1, 2) == [1]  # the slice that would get none is left out
    assert throughput.requests_per_slice(7, 3) == [3, 2, 2]
    assert throughput.requests_per_slice(None, 2) == [None, None]


def test_a_sleep_policy_that_costs_nothing_has_no_ideal_and_the_run_finishes():
    """--base-ms 0 --per-row-ms 0 (the server's own overhead alone) measured every point, then died dividing by
    the ideal's zero call time."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--policy", "sleep", "--requests", "3", "--clients", "1",
                             "--base-ms", "0", "--per-row-ms", "0"],
                            capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    ideal_rows = re.findall(r"^  K=1\s+batching (?:on |off)\s+[\d.]+ /\s+- req/s =\s+- of ideal", result.stdout, re.MULTILINE)
    assert len(ideal_rows) == 2, result.stdout
    assert _throughput_module().ideal_requests_per_s(16, 0.0, 0.0) is None


@pytest.mark.parametrize("option, value", [("--base-ms", "-1"), ("--per-row-ms", "-0.5"), ("--base-ms", "nan")])
def test_a_sleep_policy_cost_below_zero_or_not_finite_is_a_usage_error(option, value, capsys):
    with pytest.raises(SystemExit) as exited:
        _throughput_module().parse_args([option, value])
    assert exited.value.code == 2
    assert f"argument {option}: must be a finite number >= 0, got {value}" in capsys.readouterr().err


def test_replies_with_another_action_than_the_policy_owes_are_counted_as_errors():
    """Every reply was counted as served once it was ok: a batching path answering rows reversed + 1000 still
    printed PASS with 0 errors. Now the sleep policy's replies are checked against each client's own state."""
    throughput = _throughput_module()
    from serving import running_server

    class MisBatching(throughput.SleepPolicy):
        def _get_action(self, observation, options=None):
            action, info = super()._get_action(observation, options)
            return {"joints": action["joints"][::-1] + 1000.0}, info

    observation = throughput.sleep_observation(0)
    owed = [throughput.sleep_action(observation)]
    with running_server(throughput.SleepPolicy(0.0, 0.0)) as server:
        completed, _seconds, _latencies, errors, _warm = throughput.drive(
            server.port, 2, [observation], 1.0, 3, on_warm=lambda: None, expected=owed)
        assert (completed, errors) == (6, 0)
    with running_server(MisBatching(0.0, 0.0)) as server:
        completed, _seconds, _latencies, errors, _warm = throughput.drive(
            server.port, 2, [observation], 1.0, 3, on_warm=lambda: None, expected=owed)
        assert (completed, errors) == (0, 6)
        raw = throughput.RawGetAction(server.port, observation, expected=owed[0])
        try:
            with pytest.raises(RuntimeError, match="another action than the policy owes this request"):
                raw()
        finally:
            raw.close()
