"""Running out of memory while the weights are read: torch's allocator failing (a RuntimeError, not a MemoryError) ended
`gr00t-server serve` in a 40-line traceback naming neither the checkpoint, the tensor nor the remedy. A real failure:
serve in a subprocess whose address space is capped (RLIMIT_AS) a little above what mapping the weights file needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serving import free_port

resource = pytest.importorskip("resource")

BIG_KEY = "backbone.model.model.language_model.embed_tokens.weight"

# Imports what serve loads before the weights, caps the address space at what it uses now plus `headroom` bytes, then
# serves: the weights file maps (safetensors and torch each map it), their float32 copy (twice the file) cannot fit.
_SERVE_UNDER_A_CAP = """
import resource, sys
import gr00t_server.cli as cli, gr00t_server.policies.gr00t_policy, gr00t_server.serve_cli
used = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize")][0]
limit = used + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(cli.main(["serve", "--model-path", sys.argv[2], "--device", "cpu", "--dtype", "fp32", "--no-warmup",
                   "--port", sys.argv[3]]))
"""


@pytest.fixture(scope="module")
def big_embedding_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint but for a 1M-token embedding: one 128 MiB bfloat16 tensor (256 MiB as float32)."""
    from gr00t_server.model.checkpoint import _KEYS_NOT_SAVED, parameters_on_meta
    from gr00t_server.model.modeling import Gr00tN1d7
    from gr00t_server.model.presets import tiny_config
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path_factory.mktemp("big_embedding"), size="tiny", seed=0)
    config = tiny_config(vocab_size=1024 * 1024)
    config.save(checkpoint)
    with parameters_on_meta():
        model = Gr00tN1d7(config)
    state = {key: torch.full(value.shape, 0.01, dtype=torch.bfloat16) if value.is_floating_point()
             else torch.zeros(value.shape, dtype=value.dtype)
             for key, value in model.state_dict().items() if key not in _KEYS_NOT_SAVED}
    save_file(state, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    return checkpoint


def _serve_under_a_cap(checkpoint: Path, headroom: int) -> str:
    """The one line serve ends with, `headroom` bytes over what it had mapped before the load, in a subprocess."""
    # Address space, not memory, is capped: threads' stacks and malloc arenas (64 MiB each) count against it, and a
    # many-core machine's torch and BLAS pools would spend the headroom before the weights are read.
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    result = subprocess.run([sys.executable, "-c", _SERVE_UNDER_A_CAP, str(headroom), str(checkpoint), str(free_port())],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("gr00t-server serve: error: out of memory ("), error
    assert error.endswith("may not fit in this machine's memory: --dtype bf16 loads float32 weights at half the size; "
                          "with batching on, a smaller --max-batch-size needs less"), error
    return error


# As _SERVE_UNDER_A_CAP, for `gr00t-server export` (fp32 weights on the CPU, as its default there)
_EXPORT_UNDER_A_CAP = """
import resource, sys
import gr00t_server.cli as cli, gr00t_server.policies.gr00t_policy, gr00t_server.backends.commands
import gr00t_server.backends.export, gr00t_server.backends.onnxruntime_backend as ort_backend
ort_backend.import_onnx()
used = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize")][0]
resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(cli.main(["export", "--model-path", sys.argv[2], "--output", sys.argv[3], "--device", "cpu",
                   "--precision", "fp32", "--mode", "dit_only"]))
"""


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmSize from /proc")


@needs_proc
def test_torch_failing_to_allocate_a_weight_is_one_line_out_of_memory_naming_the_tensor_and_dtype_bf16(
        big_embedding_checkpoint):
    weights = big_embedding_checkpoint / "model.safetensors"
    size = weights.stat().st_size
    error = _serve_under_a_cap(big_embedding_checkpoint, 2 * size + 3 * size // 4)  # maps twice; not the fp32 copy
    assert f"{weights}: tensor {BIG_KEY!r} [1048576, 64] (256 MiB as torch.float32) could not be allocated on " \
           "cpu): " in error, error


@needs_proc
def test_export_running_out_of_memory_names_its_own_flags_not_serves(big_embedding_checkpoint, tmp_path):
    """export and verify load through the same code as serve, and were told to pass serve's --dtype bf16."""
    pytest.importorskip("onnx")
    weights = big_embedding_checkpoint / "model.safetensors"
    size = weights.stat().st_size
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    result = subprocess.run([sys.executable, "-c", _EXPORT_UNDER_A_CAP, str(2 * size + 3 * size // 4),
                             str(big_embedding_checkpoint), str(tmp_path / "onnx")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("gr00t-server export: error: out of memory ("), error
    assert f"{weights}: tensor {BIG_KEY!r} [1048576, 64] (256 MiB as torch.float32)" in error, error
    assert "--dtype" not in error and "--precision bf16 or fp16" in error, error


@needs_proc
def test_torch_failing_to_allocate_while_building_the_model_is_one_line_out_of_memory_naming_its_config(
        big_embedding_checkpoint):
    """The model is built one real parameter at a time, each moved to meta: the 256 MiB float32 embedding first."""
    size = (big_embedding_checkpoint / "model.safetensors").stat().st_size
    error = _serve_under_a_cap(big_embedding_checkpoint, size // 2)
    assert f"{big_embedding_checkpoint / 'config.json'}: building its model could not allocate 256 MiB on the CPU" \
           in error, error
