"""A device the policy cannot run on is refused in one line naming it and what to use, before the checkpoint loads
(a misspelt `--device` used to end `gr00t-server serve` in torch's traceback)."""

import subprocess

import pytest
import torch

from gr00t_server.policies.gr00t_policy import Gr00tPolicy, _resolve_device
from serving import SERVER_CLI


@pytest.mark.parametrize(
    "device, message",
    [
        ("banana", "device 'banana' is not a torch device name; use 'cpu', 'cuda' or 'cuda:N'"),
        ("cuda:x", "device 'cuda:x' is not a torch device name; use 'cpu', 'cuda' or 'cuda:N'"),
        ("meta", "device 'meta' is not supported: GR00T policies run on 'cpu', 'cuda' or 'cuda:N'"),
        ("mps", "device 'mps' is not supported: GR00T policies run on 'cpu', 'cuda' or 'cuda:N'"),
        # torch takes it, and safetensors then failed to read the weights, reported as a damaged file
        ("cpu:1", "device 'cpu:1' is not supported: the CPU is one device, 'cpu'"),
    ],
)
def test_unknown_and_unsupported_devices_are_named(device, message):
    with pytest.raises(ValueError) as error:
        _resolve_device(device)
    assert str(error.value) == message


def test_cpu_is_taken_in_every_spelling():
    assert _resolve_device("cpu") == _resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert _resolve_device("cpu:0") == torch.device("cpu")  # safetensors reads onto 'cpu' only


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match=r"^device 'cuda:1' was asked for but CUDA is not available here; use device "
                                         r"'cpu' \(--device cpu on the command line\)$"):
        _resolve_device("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("command", [["export", "--output", "onnx", "--mode", "dit_only"], ["verify", "--torch-compile"]],
                         ids=["export", "verify"])
def test_cuda_without_cuda_names_the_flag_on_the_command_line(tiny_checkpoint, tmp_path, monkeypatch, capsys, command):
    """The CLI said "use device='cpu'", a Python keyword, where the user has to change --device."""
    from gr00t_server import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main([*command, "--model-path", str(tiny_checkpoint), "--device", "cuda"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("CUDA is not available here; use device 'cpu' (--device cpu on the command line)"), error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_last_device_is_named():
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"this machine has {count} CUDA device"):
        _resolve_device(f"cuda:{count}")


def test_gr00t_policy_and_serve_refuse_a_misspelt_device(tiny_checkpoint):
    with pytest.raises(ValueError, match="device 'gpu' is not a torch device name"):
        Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="gpu")
    with pytest.raises(ValueError, match="device 'cpux' is not a torch device name"):
        Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", preprocess_device="cpux")
    result = subprocess.run([*SERVER_CLI, "serve", "--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment",
                             "--device", "gpu", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "gr00t-server serve: error: device 'gpu' is not a torch device name" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_preprocess_device_without_cuda_is_named_itself_not_device(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """`--device cpu --preprocess-device cuda` was told to pass --device cpu, which it had."""
    from gr00t_server import cli

    with pytest.raises(ValueError, match=r"^preprocess_device 'cuda' was asked for but CUDA is not available here; use "
                                         r"preprocess_device 'cpu' \(--preprocess-device cpu on the command line\)$"):
        Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu", preprocess_device="cuda")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve", "--model-path", str(tiny_checkpoint), "--device", "cpu", "--preprocess-device", "cuda",
                     "--port", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("use preprocess_device 'cpu' (--preprocess-device cpu on the command line)"), error
