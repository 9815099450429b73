"""`gr00t-server serve` as users start it: a real subprocess, a real port, a real dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.dataset_factory import ACTION_DIMS, expected_actions, make_dataset
from gr00t_client import PolicyClient

from serving import READY, free_port as _free_port, wait_ready as _wait_ready


def _message(line: str) -> str:
    """A serve log line without its leading time ('2026-12-02 08:30:00,123 WARNING:...' -> 'WARNING:...')."""
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line)


def _cli(*args: str) -> list:
    return [sys.executable, "-m", "gr00t_server.cli", *args]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cli") / "ds", lengths=(12, 9))


def _start(args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        _cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or os.environ.copy()
    )


def test_serve_whose_stdout_reader_has_gone_still_comes_up_and_serves(dataset):
    """`gr00t-server serve ... | head -1`: the second line of the start-up block raised BrokenPipeError and the
    server never came up (exit 2)."""
    port = _free_port()
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.Popen(_cli("serve", "--dataset-path", str(dataset), "--port", str(port)), stdout=write_end,
                            stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    try:
        with PolicyClient(port=port, timeout_ms=60000) as client:
            assert client.ping()
            client.kill_server()
        assert proc.wait(timeout=20) == 0
        errors = proc.stderr.read()
        assert "Broken pipe" not in errors and "Traceback" not in errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_replay_answers_ping_get_action_and_kill(dataset):
    port = _free_port()
    proc = _start(["serve", "--dataset-path", str(dataset), "--port", str(port), "--execution-horizon", "4"])
    try:
        lines = _wait_ready(proc)
        assert "Starting GR00T inference server..." in lines
        assert any("Embodiment tag: NEW_EMBODIMENT" in line for line in lines)
        assert lines[-1] == f"{READY}127.0.0.1:{port}"
        with PolicyClient(port=port, timeout_ms=5000) as client:
            assert client.ping()
            client.reset({"episode_index": 1})
            action, info = client.get_action({})
            assert info["episode_index"] == 1 and info["current_step"] == 0
            want = expected_actions(1, 9)
            np.testing.assert_array_equal(action["arm"][0, :9], want["arm"])
            assert action["arm"].shape == (1, 16, ACTION_DIMS["arm"])
            client.kill_server()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_snake_case_flags_and_sim_wrapper(dataset):
    port = _free_port()
    proc = _start(["serve", "--dataset_path", str(dataset), "--port", str(port), "--use_sim_policy_wrapper", "--no-strict",
                   "--inline_below_ms", "0.5"])
    try:
        _wait_ready(proc)
        with PolicyClient(port=port, timeout_ms=5000) as client:
            action, _ = client.get_action({"annotation.human.action.task_description": ["go"]})
            assert set(action) == {"action.arm", "action.gripper"}
            assert client.get_server_info()["inline_below_ms"] == 0.5
            client.kill_server()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_stops_the_server_cleanly_and_frees_the_port(dataset):
    port = _free_port()
    proc = _start(["serve", "--dataset-path", str(dataset), "--port", str(port)])
    try:
        _wait_ready(proc)
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "--dataset-path", "/nonexistent/ds"], "is not a directory"),
        (["serve", "--embodiment-tag", "no_such_robot", "--dataset-path", "."], "Unknown embodiment tag: 'no_such_robot'"),
        (["serve"], "either --model-path or --dataset-path"),
        (["serve", "--port", "notaport", "--dataset-path", "."],
         "--port must be a port number written in the digits 0-9 (such as 5555), got 'notaport'"),
        (["serve", "--model-path", "/nonexistent/checkpoint"], "does not exist"),
        (["serve", "--dataset-path", ".", "--inline-below-ms", "-1"], "--inline-below-ms must be a finite number of milliseconds from 0 (off) to 3600000, got -1.0"),
        (["serve", "--dataset-path", ".", "--batch-timeout-ms", "nan"], "--batch-timeout-ms must be a finite number of milliseconds from 0 to 3600000, got nan"),
        # an infinite gather window once killed the socket loop at the first batched request (int(inf))
        (["serve", "--dataset-path", ".", "--batch-timeout-ms", "inf"], "--batch-timeout-ms must be a finite number"),
        (["serve", "--dataset-path", ".", "--inline-below-ms", "inf"], "--inline-below-ms must be a finite number"),
        # 0 made ZeroMQ drop every request unanswered; -1 lifted the cap altogether
        (["serve", "--dataset-path", ".", "--max-message-mb", "0"], "--max-message-mb must be a whole number of MiB from 1 to 8796093022207, got 0"),
        (["serve", "--dataset-path", ".", "--max-message-mb", "-1"], "--max-message-mb must be a whole number of MiB from 1 to 8796093022207, got -1"),
        # 2**43 MiB is 2**63 bytes, one over the server's cap: refused after the model had loaded, in Python's names
        (["serve", "--dataset-path", ".", "--max-message-mb", str(2**43)], "--max-message-mb must be a whole number of MiB from 1 to 8796093022207, got 8796093022208"),
        # finite MiB, but an infinite byte count: an OverflowError traceback
        (["serve", "--dataset-path", ".", "--max-queued-mb", "1e308"], "--max-queued-mb must be a number of MiB > 0 and below 8796093022208 (2**63 bytes), got 1e+308"),
        (["serve", "--dataset-path", ".", "--max-client-queued-mb", "1e308"], "--max-client-queued-mb must be a number of MiB > 0 and below 8796093022208 (2**63 bytes), got 1e+308"),
        (["serve", "--dataset-path", ".", "--port", "70000"], "--port must be a port number from 0 (any free port) to 65535, got 70000"),
        (["serve", "--dataset-path", ".", "--metrics-port", "-2"], "--metrics-port must be a port number"),
        (["serve", "--dataset-path", ".", "--max-batch-size", "0"], "--max-batch-size must be a whole number of rows from 1 (batching off) to 1024, got 0"),
        # "must be a whole number >= 1" of a value that is one: the upper limit (then 2**31 - 1) was never named
        (["serve", "--dataset-path", ".", "--max-batch-size", str(2**31)], "--max-batch-size must be a whole number of rows from 1 (batching off) to 1024, got 2147483648"),
        # the Python name ("action_horizon must be >= 1"), and 100000000 built a delta list for minutes, unrefused
        (["serve", "--dataset-path", ".", "--action-horizon", "0"], "--action-horizon must be a whole number of steps from 1 to 4096, got 0"),
        (["serve", "--dataset-path", ".", "--action-horizon", "100000000"], "--action-horizon must be a whole number"),
    ],
)
def test_bad_flags_exit_nonzero_with_one_line_and_no_traceback(args, message):
    result = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("horizon", ["0", "17", "1000"])
def test_an_execution_horizon_outside_the_action_chunk_is_refused_naming_the_flag_and_its_bounds(dataset, horizon):
    """Past the chunk it was ReplayPolicy's "execution_horizon must be an int in [1, 16]": the Python name, not the flag."""
    result = subprocess.run(
        _cli("serve", "--dataset-path", str(dataset), "--execution-horizon", horizon, "--port", str(_free_port())),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert (f"--execution-horizon must be a whole number of steps from 1 to 16 (each action chunk holds 16 actions), "
            f"got {horizon}") in result.stderr


@pytest.mark.parametrize("blank, others", [
    ("--model-path", ["--dataset-path", "DATASET"]),
    ("--model-path", []),
    ("--dataset-path", []),
    ("--modality-config-path", ["--dataset-path", "DATASET"]),
    ("--onnx-dir", ["--dataset-path", "DATASET"]),
    ("--engine-dir", ["--dataset-path", "DATASET"]),
])
def test_a_blank_path_flag_is_refused_naming_it_not_taken_as_left_out(dataset, blank, others):
    """`--model-path "$CKPT"` with CKPT unset served a replay of --dataset-path, which open-loop then scored as "the
    model" at MSE 0.0; a blank --modality-config-path served the derived config; a blank --model-path alone was told
    "either --model-path or --dataset-path must be provided"."""
    argv = ["serve", blank, "", *[str(dataset) if a == "DATASET" else a for a in others], "--port", str(_free_port())]
    result = subprocess.run(_cli(*argv), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"gr00t-server serve: error: {blank} is empty: an unset variable? Expected " in result.stderr
    assert READY not in result.stdout


def test_a_max_batch_size_over_the_cap_is_refused_before_the_model_loads(tiny_checkpoint):
    """--max-batch-size 100000 (a typo for 10) was accepted up to 2**31 - 1, and the warm-up then ran a batch of that
    many rows: not ready after 60 s, at 15 GiB. 1025, just over the cap, warms up quickly: refused all the same."""
    result = subprocess.run(_cli("serve", "--model-path", str(tiny_checkpoint), "--device", "cpu", "--max-batch-size",
                                 "1025", "--port", str(_free_port())), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--max-batch-size must be a whole number of rows from 1 (batching off) to 1024, got 1025" in result.stderr
    assert "loaded GR00T N1.7 checkpoint" not in result.stderr and READY not in result.stdout


def _start_up_lines(*args, token=None):
    """`gr00t-server serve ARGS` on a free port (with `token`: --api-token TOKEN): its lines up to ready, once it has
    been killed (with the token) and exited 0."""
    port = _free_port()
    proc = _start(["serve", *args, *(["--api-token", token] if token is not None else []), "--port", str(port)])
    try:
        lines = _wait_ready(proc)
        with PolicyClient(port=port, timeout_ms=10000, api_token=token) as client:
            client.kill_server()
        assert proc.wait(timeout=30) == 0
        return lines
    finally:
        if proc.poll() is None:
            proc.kill()


def test_remote_bind_without_token_warns(dataset):
    lines = _start_up_lines("--dataset-path", str(dataset), "--host", "0.0.0.0")
    assert any("without an API token" in line for line in lines)


def test_allow_remote_kill_with_an_api_token_is_named_as_ignored(dataset):
    """With a token every tokenless request is refused, kill too, so the flag did nothing and nothing said so."""
    lines = _start_up_lines("--dataset-path", str(dataset), "--host", "0.0.0.0", "--allow-remote-kill", token="s3cret")
    assert [_message(line) for line in lines if "--allow-remote-kill" in line] == [
        "WARNING:gr00t_server:--allow-remote-kill: ignored; with --api-token any peer holding the token may stop the "
        "server, and no peer without it may"]


def test_allow_remote_kill_on_a_loopback_host_is_named_as_ignored(dataset):
    lines = _start_up_lines("--dataset-path", str(dataset), "--host", "127.0.0.1", "--allow-remote-kill")
    assert [_message(line) for line in lines if "--allow-remote-kill" in line] == [
        "WARNING:gr00t_server:--allow-remote-kill: ignored; --host 127.0.0.1 is a loopback address, so no "
        "non-loopback peer can connect (loopback peers may always stop the server)"]


def test_allow_remote_kill_on_a_remote_host_without_a_token_is_not_named_as_ignored(dataset):
    lines = _start_up_lines("--dataset-path", str(dataset), "--host", "0.0.0.0", "--allow-remote-kill")
    assert not [line for line in lines if "--allow-remote-kill" in line and "ignored" in line]


def test_allow_remote_kill_help_says_it_does_nothing_with_a_token():
    help_text = " ".join(subprocess.run([sys.executable, "-m", "gr00t_server.cli", "serve", "--help"],
                                        capture_output=True, text=True, check=True).stdout.split())
    assert "stop the server (no effect with --api-token, whose holders may always stop it" in help_text


def test_api_token_from_environment_is_required(dataset):
    port = _free_port()
    env = dict(os.environ, GR00T_API_TOKEN="s3cret")
    proc = _start(["serve", "--dataset-path", str(dataset), "--port", str(port)], env=env)
    try:
        _wait_ready(proc)
        with PolicyClient(port=port, timeout_ms=5000) as anonymous:
            with pytest.raises(RuntimeError, match="Unauthorized"):
                anonymous.get_modality_config()
        with PolicyClient(port=port, timeout_ms=5000, api_token="s3cret") as client:
            assert client.ping()
            client.kill_server()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_model_path_answers_the_reference_client(tmp_path):
    """make-test-checkpoint -> serve --model-path (sim wrapper) -> a reference-style REQ client gets actions."""
    from reference_peer import ReferenceClient

    checkpoint = tmp_path / "tiny"
    made = subprocess.run(_cli("make-test-checkpoint", str(checkpoint), "--size", "tiny"), capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "processor_config.json").exists()
    port = _free_port()
    proc = _start(["serve", "--model-path", str(checkpoint), "--embodiment-tag", "libero_sim", "--device", "cpu",
                   "--port", str(port), "--use-sim-policy-wrapper"])
    try:
        _wait_ready(proc, timeout_s=180)
        with ReferenceClient(port=port, timeout_ms=60000) as client:
            configs = client.call_endpoint("get_modality_config", requires_input=False)
            video_keys = configs["video"].as_json["modality_keys"]
            state_keys = configs["state"].as_json["modality_keys"]
            language_key = configs["language"].as_json["modality_keys"][0]
            observation = {f"video.{k}": np.zeros((1, 1, 64, 64, 3), np.uint8) for k in video_keys}
            observation.update({f"state.{k}": np.zeros((1, 1, 2 if k == "gripper" else 1), np.float32) for k in state_keys})
            observation[language_key] = ["pick up the bowl"]
            action, info = client.get_action(observation, {"seed": 3})
            horizon = len(configs["action"].as_json["delta_indices"])
            assert set(action) == {f"action.{k}" for k in configs["action"].as_json["modality_keys"]}
            for value in action.values():
                assert value.dtype == np.float32 and value.shape[:2] == (1, horizon)
                assert np.isfinite(value).all()
            again, _ = client.get_action(observation, {"seed": 3})
            for key in action:
                np.testing.assert_array_equal(action[key], again[key])
            client.call_endpoint("kill", requires_input=False)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_torch_compile_compiles_before_listening_and_matches_eager(tmp_path):
    """--inference-mode torch-compile warms up (compiles) before the ready line; answers equal eager PyTorch's."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "tiny", size="tiny", seed=0)
    port = _free_port()
    proc = _start(["serve", "--model-path", str(checkpoint), "--embodiment-tag", "libero_sim", "--device", "cpu",
                   "--dtype", "fp32", "--port", str(port), "--inference-mode", "torch-compile"])
    try:
        lines = _wait_ready(proc, timeout_s=600)
        warmup = [i for i, line in enumerate(lines) if line.strip().startswith("Warm-up: batch 1 in")]
        assert warmup, "\n".join(lines)
        assert warmup[0] < len(lines) - 1  # the ready line comes after the compile
        observation = example_observation(checkpoint, "libero_sim", batch_size=1, seed=4)
        with PolicyClient(port=port, timeout_ms=120000) as client:
            served, _ = client.get_action(observation, {"seed": 3})
        eager = Gr00tPolicy(checkpoint, "libero_sim", device="cpu", dtype="fp32")
        expected, _ = eager.get_action(observation, {"seed": 3})
        assert set(served) == set(expected)
        for key in expected:
            np.testing.assert_allclose(served[key], expected[key], rtol=1e-4, atol=1e-5)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_no_warmup_skips_the_sample_call(tmp_path):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "tiny", size="tiny", seed=0)
    port = _free_port()
    proc = _start(["serve", "--model-path", str(checkpoint), "--device", "cpu", "--port", str(port), "--no-warmup"])
    try:
        lines = _wait_ready(proc, timeout_s=180)
        assert not any("Warm-up" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_while_the_model_loads_exits_130_in_one_line(tiny_checkpoint, stop):
    """SIGTERM (a supervisor stopping the service) killed the start-up silently with 143."""
    proc = _start(["serve", "--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment", "--device", "cpu",
                   "--port", str(_free_port())])
    try:
        lines = []
        for line in proc.stdout:  # the banner comes before torch is imported and the checkpoint loads (seconds)
            lines.append(line.rstrip("\n"))
            if line.startswith("Starting GR00T inference server..."):
                break
        proc.send_signal(stop)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "\n".join(lines) + "\n" + rest
    assert proc.returncode == 130, output
    assert output.rstrip().endswith("gr00t-server serve: interrupted")
    assert "Traceback" not in output and "Server is ready" not in output
    assert "FakeTensor" not in output  # torch's INFO lines at exit are not shown


@pytest.mark.parametrize("where", ["port in use", "metrics port in use", "host not here", "port in use, host a name"])
def test_a_port_in_use_or_a_host_not_of_this_machine_is_refused_before_the_model_loads(tiny_checkpoint, where):
    """ZeroMQ (and the metrics endpoint) said so only at its bind, after the load and warm-up: minutes for a 3B model,
    per typo."""
    if where == "metrics port in use":
        pytest.importorskip("prometheus_client")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        held = holder.getsockname()[1]
        host, port, metrics = {"port in use": ("127.0.0.1", held, []),
                               "metrics port in use": ("127.0.0.1", _free_port(), ["--metrics-port", str(held)]),
                               "host not here": ("10.254.254.1", _free_port(), []),
                               "port in use, host a name": ("localhost", held, [])}[where]
        result = subprocess.run(_cli("serve", "--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment",
                                     "--device", "cpu", "--host", host, "--port", str(port), *metrics),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    expected = {"port in use": f"--port {port}: the port is in use on 127.0.0.1 (another server?)",
                "metrics port in use": f"--metrics-port {held}: the port is in use on 127.0.0.1 (another server?); pass "
                                       "another --metrics-port",
                "host not here": "--host 10.254.254.1: not an address of this machine",
                "port in use, host a name": f"--port {port}: the port is in use on localhost (another server?)"}[where]
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert "Warm-up:" not in result.stdout  # refused before the load and warm-up, not after


def test_a_clean_stop_with_standard_output_closed_exits_0(dataset):
    """`gr00t-server serve ... >&-`: it served, and its stop flushed a None sys.stdout and exited 1 with a traceback."""
    port = _free_port()
    proc = subprocess.Popen(_cli("serve", "--dataset-path", str(dataset), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    try:
        with PolicyClient(port=port, timeout_ms=60000) as client:
            assert client.ping()
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("mode", ["replay", "model"])
def test_flags_the_chosen_policy_does_not_read_are_named_as_ignored(dataset, tiny_checkpoint, mode):
    port = _free_port()
    if mode == "replay":
        args = ["--dataset-path", str(dataset), "--device", "cuda", "--no-warmup", "--execution-horizon", "4"]
        expected = "--device, --no-warmup: ignored; they apply to --model-path, and this replays --dataset-path"
    else:
        args = ["--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment", "--device", "cpu",
                "--dataset-path", str(dataset), "--execution-horizon", "4"]
        expected = ("--dataset-path, --execution-horizon: ignored; they apply to replay (--dataset-path without "
                    "--model-path), and this serves --model-path")
    proc = _start(["serve", *args, "--port", str(port)])
    try:
        lines = _wait_ready(proc)
        assert [_message(line) for line in lines if "ignored" in line] == [f"WARNING:gr00t_server:{expected}"]
        with PolicyClient(port=port, timeout_ms=10000) as client:
            assert client.ping()  # a warning, not a refusal: launchers that always pass these keep working
            client.kill_server()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_an_export_folder_the_inference_mode_does_not_read_is_named_as_ignored(tiny_checkpoint, tmp_path):
    """`serve --onnx-dir DIR` without --inference-mode onnxruntime served PyTorch without a word."""
    lines = _start_up_lines("--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment", "--device", "cpu",
                            "--onnx-dir", str(tmp_path / "onnx"), "--no-warmup")
    assert [_message(line) for line in lines if "ignored" in line] == [
        f"WARNING:gr00t_server:--onnx-dir {tmp_path / 'onnx'}: ignored; it is read with --inference-mode onnxruntime, "
        "and this serves --inference-mode pytorch"]


def test_a_plain_serve_warns_of_nothing_ignored(dataset):
    proc = _start(["serve", "--dataset-path", str(dataset), "--port", str(_free_port())])
    try:
        assert not [line for line in _wait_ready(proc) if "ignored" in line]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_max_batch_size_the_policy_cannot_use_is_named_as_ignored(dataset):
    """A replay keeps a session per client, so it is never batched: the flag is named, not silently dropped."""
    port = _free_port()
    proc = _start(["serve", "--dataset-path", str(dataset), "--max-batch-size", "8", "--port", str(port)])
    try:
        lines = _wait_ready(proc)
        assert [_message(line) for line in lines if "ignored" in line] == [
            "WARNING:gr00t_server:--max-batch-size 8: ignored; ReplayPolicy keeps a session per client, so every "
            "request is served alone"
        ]
        with PolicyClient(port=port, timeout_ms=10000) as client:
            assert client.get_server_info()["max_batch_size"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_batch_timeout_without_batching_is_named_as_ignored(dataset):
    """--batch-timeout-ms with batching off (no --max-batch-size) was accepted without a word."""
    lines = _start_up_lines("--dataset-path", str(dataset), "--batch-timeout-ms", "250")
    assert [_message(line) for line in lines if "ignored" in line] == [
        "WARNING:gr00t_server:--batch-timeout-ms 250: ignored; it bounds how long a batch waits, and this server "
        "batches no requests"]


def test_session_limits_for_a_policy_without_sessions_are_named_as_ignored(tiny_checkpoint):
    """Gr00tPolicy keeps no sessions: --max-sessions and --session-idle-s were accepted without a word."""
    lines = _start_up_lines("--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment", "--device",
                            "cpu", "--no-warmup", "--max-sessions", "3", "--session-idle-s", "5")
    assert [_message(line) for line in lines if "ignored" in line] == [
        "WARNING:gr00t_server:--max-sessions, --session-idle-s: ignored; Gr00tPolicy keeps no client sessions for "
        "them to limit"]


def test_session_limits_for_a_replay_are_not_named_as_ignored(dataset):
    lines = _start_up_lines("--dataset-path", str(dataset), "--max-sessions", "3", "--session-idle-s", "5")
    assert not [line for line in lines if "ignored" in line]


def test_the_start_up_block_says_when_the_tags_built_in_modality_config_is_used(tmp_path, capsys):
    """docs/serving.md promises the block says which config a replay uses; the built-in one was used silently."""
    from gr00t_client import EmbodimentTag
    from gr00t_server.cli import _replay_policy, build_parser

    keys = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    root = make_dataset(tmp_path / "libero_like", lengths=(6,), cameras=("image", "wrist_image"),
                        state_dims={k: 1 for k in keys}, action_dims={k: 1 for k in keys})
    args = build_parser().parse_args(["serve", "--dataset-path", str(root), "--embodiment-tag", "libero_sim"])
    _replay_policy(args, EmbodimentTag.resolve("libero_sim"))
    assert "Modality config: the built-in config of libero_sim (the dataset has its keys)" in capsys.readouterr().out


def _libero_like_dataset(tmp_path):
    keys = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    return make_dataset(tmp_path / "libero_like", lengths=(20,), cameras=("image", "wrist_image"),
                        state_dims={k: 1 for k in keys}, action_dims={k: 1 for k in keys})


def test_an_action_horizon_given_with_a_built_in_config_sets_its_action_steps(tmp_path, capsys):
    """`serve --dataset-path D --embodiment-tag libero_sim --action-horizon 8` served libero_sim's 16-step chunks."""
    from gr00t_client import EmbodimentTag
    from gr00t_server.cli import _replay_policy, build_parser

    root = _libero_like_dataset(tmp_path)
    args = build_parser().parse_args(["serve", "--dataset-path", str(root), "--embodiment-tag", "libero_sim",
                                      "--action-horizon", "8"])
    policy, _ = _replay_policy(args, EmbodimentTag.resolve("libero_sim"))
    assert policy.get_modality_config()["action"].delta_indices == list(range(8))
    assert policy.execution_horizon == 8
    assert "the built-in config of libero_sim (the dataset has its keys), action horizon 8 (--action-horizon)" in (
        capsys.readouterr().out)


def test_an_action_horizon_other_than_a_modality_config_files_is_refused_naming_both(tmp_path):
    from gr00t_client import EmbodimentTag
    from gr00t_server.cli import _replay_policy, build_parser
    from gr00t_server.cli_errors import CliError
    from gr00t_server.modality_configs import MODALITY_CONFIGS

    root = _libero_like_dataset(tmp_path)
    path = tmp_path / "libero.json"
    path.write_text(json.dumps({k: v.to_json_dict() for k, v in MODALITY_CONFIGS["libero_sim"].items()}))
    args = build_parser().parse_args(["serve", "--dataset-path", str(root), "--modality-config-path", str(path),
                                      "--action-horizon", "8"])
    with pytest.raises(CliError, match=f"--action-horizon 8: {re.escape(str(path))} sets the action delta_indices "
                                       r"\(16 steps: \[0, 1, 2"):
        _replay_policy(args, EmbodimentTag.resolve("new_embodiment"))


# serve at `ulimit -n 64` (soft and hard): it said "accepts about 0 clients at once" (the limit less 64), then served 51.
LOW_OPEN_FILE_LIMIT = 64
# The figure counts the descriptors open once the server is bound; run() then starts its socket loop and policy worker,
# and a call may hold a dataset file open for a moment, so the clients answered may be a few fewer (never more: each
# connection takes one descriptor, and those counted stay open).
CLIENTS_TOLD_TOLERANCE = 3


def _open_file_limit(limit):
    """For preexec_fn: soft and hard open-file limit `limit` in the child (serve cannot raise it)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _clients_answered(port, most):
    """How many clients, each kept connected, the server at `port` answers before the first that it does not."""
    clients = []
    try:
        while len(clients) < most:
            clients.append(PolicyClient(host="127.0.0.1", port=port, timeout_ms=1000))
            if not clients[-1].ping():
                return len(clients) - 1
        return len(clients)
    finally:
        for client in clients:
            client.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd")
def test_serve_at_a_low_open_file_limit_says_about_how_many_clients_it_then_answers(dataset):
    port = _free_port()
    proc = subprocess.Popen(_cli("serve", "--dataset-path", str(dataset), "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_open_file_limit(LOW_OPEN_FILE_LIMIT))
    try:
        lines = _wait_ready(proc)
        warning = next((line for line in lines if "open-file limit" in line), "\n".join(lines))
        assert f"the open-file limit is {LOW_OPEN_FILE_LIMIT} (its hard limit too)" in warning, warning
        assert "ulimit -Hn" in warning, warning
        told = int(re.search(r"accepts about (\d+) clients at once", warning).group(1))
        answered = _clients_answered(port, told + CLIENTS_TOLD_TOLERANCE + 5)
    finally:
        proc.kill()
        proc.wait()
    assert told - CLIENTS_TOLD_TOLERANCE <= answered <= told, (told, answered)
