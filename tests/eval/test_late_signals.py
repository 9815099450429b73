"""Stop signals at the edges of a gr00t-eval command: during its first imports, after its results are reported, and
in the few instants where a half-made thing (an episode's files, a MuJoCo renderer) could be left behind.

Each child process sends the signal to itself at the exact point under test (an import hook, an exit hook, a wrapped
library call), so the window is hit every time rather than by luck.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from stop_signals import LATE_STOP_SIGNALS, stop_on_import

EVAL_MAIN = "import sys\nfrom gr00t_eval.cli import main\nsys.exit(main())\n"  # what the console script runs


def run_program(prelude: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c PRELUDE + the console script` with ARGS (PYTHONPATH and the rest of the environment inherited)."""
    return subprocess.run([sys.executable, "-c", prelude + EVAL_MAIN, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_stop_signals_after_a_command_has_reported_leave_its_exit_status_alone():
    """SIGHUP, Ctrl-C or SIGTERM while the interpreter exits ended a finished run with 129/130/143 and no word."""
    result = run_program(LATE_STOP_SIGNALS, "suites")
    assert result.returncode == 0, result.stderr
    assert "metaworld-mt10" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_during_the_first_imports_is_one_line_and_exit_130(signum):
    """Ctrl-C while numpy and ZeroMQ were imported (before main) printed a KeyboardInterrupt traceback; SIGTERM killed
    the command silently with 143. (gr00t_client itself is imported before main, at no cost: it loads numpy on first
    use.)"""
    result = run_program(stop_on_import("numpy", signum), "suites")
    assert result.returncode == 130, result.stderr
    assert result.stderr == "gr00t-eval suites: interrupted\n"


def test_main_called_in_a_program_puts_its_signal_handlers_back():
    """Only the program ignores stop signals once its command has ended; a caller of main(argv) keeps its own."""
    from gr00t_eval.cli import main

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert main(["suites"]) == 0
    assert {signum: signal.getsignal(signum) for signum in before} == before


# Ctrl-C (to the process itself) as the second episode's meta/ is about to be written: its files are in data/ and
# videos/ by then.
CTRL_C_BEFORE_THE_SECOND_WRITE_META = """
import os, signal
from gr00t_eval.dataset.writer import DatasetWriter

_write_meta, _calls = DatasetWriter.write_meta, []

def write_meta(self):
    _calls.append(1)
    if len(_calls) == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return _write_meta(self)

DatasetWriter.write_meta = write_meta
"""


def _dataset_files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.suffix in (".parquet", ".mp4"))


@pytest.mark.sim
def test_ctrl_c_after_an_episodes_files_are_in_place_lists_it_in_meta(tmp_path):
    """The episode's parquet and mp4 stayed in data/ and videos/, and meta/ did not list them (a loader globbing data/
    read an episode the dataset does not have)."""
    pytest.importorskip("metaworld")
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "reach"
    result = run_program(CTRL_C_BEFORE_THE_SECOND_WRITE_META, "record", "--env-name", "metaworld/reach-v3",
                         "--episodes", "3", "--output", str(root), "--image-size", "32")
    assert result.returncode == 130, result.stderr
    assert f"INTERRUPTED: {root} holds the 2 episodes finished before the interrupt" in result.stdout
    listed = [json.loads(line) for line in (root / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert [episode["episode_index"] for episode in listed] == [0, 1]
    assert len(LeRobotDataset(root).episode_lengths) == 2
    assert _dataset_files(root) == [
        "data/chunk-000/episode_000000.parquet", "data/chunk-000/episode_000001.parquet",
        "videos/chunk-000/observation.images.corner2/episode_000000.mp4",
        "videos/chunk-000/observation.images.corner2/episode_000001.mp4"]


# A DatasetWriter whose second episode is stopped by Ctrl-C (to the process itself) at two points: between the renames
# of its files (its parquet in place, its video not) and once all its files are in place (its last log line). What
# each left is printed, then the episode is added for real and the dataset finalized.
WRITER_INTERRUPTED = """
import json, os, signal, sys
from pathlib import Path

import numpy as np

from gr00t_eval.dataset import writer as writer_module

root = Path(sys.argv[1])

def episode(length):
    rng = np.random.default_rng(length)
    return dict(frames={"front": rng.integers(0, 255, (length, 16, 16, 3), dtype=np.uint8)},
                states={"arm": rng.random((length, 2))}, actions={"arm": rng.random((length, 2))}, task="reach")

def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)

def files():
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "meta" not in p.parts)

writer = writer_module.DatasetWriter(root, fps=10)
writer.add_episode(**episode(4))
replace, debug = Path.replace, writer_module.logger.debug

def replace_then_ctrl_c(self, target):
    moved = replace(self, target)
    if Path(target).suffix == ".parquet":
        ctrl_c()
    return moved

left = {}
for point, patch in (("between renames", lambda: setattr(Path, "replace", replace_then_ctrl_c)),
                     ("files in place", lambda: setattr(writer_module.logger, "debug", lambda *a: ctrl_c()))):
    patch()
    try:
        writer.add_episode(**episode(5))
    except KeyboardInterrupt:
        pass
    Path.replace, writer_module.logger.debug = replace, debug
    left[point] = files()
writer.add_episode(**episode(6))
writer.finalize()
print(json.dumps(left))
"""


def test_an_interrupted_add_episode_leaves_no_file_or_value_of_it(tmp_path):
    """Ctrl-C once an episode's files were renamed into place (all of them, or only its parquet) left them in data/
    and videos/, listed in no meta file; the writer is a library, so the writer itself must not leave them."""
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "ds"
    result = subprocess.run([sys.executable, "-c", WRITER_INTERRUPTED, str(root)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    first_episode = ["data/chunk-000/episode_000000.parquet",
                     "videos/chunk-000/observation.images.front/episode_000000.mp4"]
    assert json.loads(result.stdout) == {"between renames": first_episode, "files in place": first_episode}
    dataset = LeRobotDataset(root)
    assert dataset.episode_lengths == [4, 6]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert (info["total_episodes"], info["total_frames"]) == (2, 10)


# Ctrl-C (to the process itself) while the Meta-World env's MuJoCo renderer is being built, before its render context.
CTRL_C_INSIDE_THE_RENDERER = """
import os, signal
os.environ.setdefault("MUJOCO_GL", "egl")
from mujoco import _render

_context = _render.MjrContext

def context_after_ctrl_c(*args):
    _render.MjrContext = _context
    os.kill(os.getpid(), signal.SIGINT)
    return _context(*args)

_render.MjrContext = context_after_ctrl_c
"""


@pytest.mark.sim
def test_ctrl_c_while_the_meta_world_renderer_is_built_prints_no_traceback(tmp_path):
    """The KeyboardInterrupt left a half-made Renderer (or GLContext) whose __del__ printed 'Exception ignored in ...
    Renderer.__del__' AttributeError tracebacks after the interrupt's own line."""
    pytest.importorskip("metaworld")
    result = run_program(CTRL_C_INSIDE_THE_RENDERER, "record", "--env-name", "metaworld/reach-v3", "--episodes", "1",
                         "--output", str(tmp_path / "reach"), "--image-size", "32")
    assert result.returncode == 130, result.stderr
    assert "INTERRUPTED before recording began" in result.stdout
    assert result.stderr == "gr00t-eval record: interrupted\n"
