"""`gr00t-server export` in an install without the [onnx] extra: one line naming the extra, before the checkpoint loads
(it loaded the checkpoint, began tracing and ended in a traceback from torch's exporter that named no extra).

Each check runs the real CLI in a subprocess: `sys.modules["onnx"] = None` makes `import onnx` fail exactly as if it
were not installed, and an `onnx` first on the path that raises at import stands for an installed one that is broken.
"""

from __future__ import annotations

import os
import subprocess
import sys

_EXPORT_WITHOUT_ONNX = "import sys; sys.modules['onnx'] = None; from gr00t_server.cli import main; sys.exit(main())"


def _export(checkpoint, output, code: str, env=None) -> subprocess.CompletedProcess:
    argv = ["export", "--model-path", str(checkpoint), "--output", str(output), "--mode", "dit_only", "--device", "cpu"]
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, env=env)


def test_export_without_onnx_names_the_extra_in_one_line_before_the_checkpoint_loads(tiny_checkpoint, tmp_path):
    output = tmp_path / "onnx"
    result = _export(tiny_checkpoint, output, _EXPORT_WITHOUT_ONNX)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "gr00t-server export: error: ONNX export needs onnx: pip install 'gr00t-server[onnx]' (or [onnx-gpu] for CUDA)"]
    assert not output.exists()


def test_an_installed_onnx_that_fails_to_import_is_reported_with_its_error_not_as_missing(tmp_path):
    broken = tmp_path / "site"
    (broken / "onnx").mkdir(parents=True)
    (broken / "onnx" / "__init__.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n")
    (broken / "onnx-1.16.0.dist-info").mkdir()
    (broken / "onnx-1.16.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: onnx\nVersion: 1.16.0\n")
    (tmp_path / "checkpoint").mkdir()  # onnx is checked before the checkpoint is read
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(broken), os.environ.get("PYTHONPATH")]))}
    code = "import sys; from gr00t_server.cli import main; sys.exit(main())"
    result = _export(tmp_path / "checkpoint", tmp_path / "onnx", code, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    [error] = result.stderr.strip().splitlines()
    assert error.startswith("gr00t-server export: error: ONNX export: onnx 1.16.0 is installed but failed to import "
                            "(ImportError: numpy.core.multiarray failed to import) beside numpy "), error
    assert error.endswith(": pip install --upgrade onnx"), error  # the module that failed, never gr00t-server itself
    assert not (tmp_path / "onnx").exists()
