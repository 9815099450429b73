"""gr00t-client at the bottom of what its pyproject admits: the oldest `requires-python` interpreter with every
dependency pinned to its lower bound (numpy 1.21, pyzmq 22, msgpack 1.0 today), as on an older robot computer.

A fresh venv of that interpreter gets those pins and the client (from a copy of its sources, so no build folder
is left in the checkout); then the client's own codec, modality, embodiment and CURVE tests run in it, and a
smoke script (min_versions_smoke.py) talks to real gr00t-servers of the dev venv over loopback: both wire formats,
errors, a NaN refusal, CURVE, a timeout and the ActionChunker. Skipped when no interpreter of that version is
found (GR00T_MIN_PYTHON names one) or when pip cannot reach an index.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import zmq

from reference_peer import EchoPolicy
from serving import running_server

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the dev venv's)

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "packages" / "gr00t-client"
# The client's tests that need nothing but gr00t_client (and, as test tools, pytest, hypothesis, msgpack-numpy).
CLIENT_ONLY_TESTS = ["test_codec.py", "test_codec_depth_limit.py", "test_codec_packers.py", "test_curve_client.py",
                     "test_embodiment.py", "test_modality.py"]
TEST_TOOLS = ["pytest", "pytest-timeout", "hypothesis", "msgpack-numpy"]
_OFFLINE_HINTS = ("No matching distribution found", "Could not find a version", "NewConnectionError",
                  "Temporary failure in name resolution", "Network is unreachable")


def _project() -> dict:
    return tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]


def lower_bound_pins(dependencies: List[str]) -> Dict[str, str]:
    """{name: "name==X"} for each `name>=X` requirement; a dependency without a lower bound raises."""
    pins = {}
    for requirement in dependencies:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(,.*)?", requirement)
        if match is None:
            raise ValueError(f"gr00t-client dependency {requirement!r} has no '>=' lower bound to test")
        pins[match.group(1)] = f"{match.group(1)}=={match.group(2)}"
    return pins


def _python_version(candidate: str) -> str:
    """'3.9' for a working interpreter, '' for one that does not run (e.g. a pyenv shim of a version not selected)."""
    try:
        result = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60)
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _oldest_python() -> str:
    """An interpreter of the client's oldest supported Python: GR00T_MIN_PYTHON, pythonX.Y on PATH, or pyenv's."""
    minimum = re.fullmatch(r">=\s*(3\.\d+)", _project()["requires-python"]).group(1)
    if os.environ.get("GR00T_MIN_PYTHON"):
        candidate = os.environ["GR00T_MIN_PYTHON"]
        found = _python_version(candidate)
        assert found == minimum, f"GR00T_MIN_PYTHON={candidate} is Python {found or '(not runnable)'}, not {minimum}"
        return candidate
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{minimum}"), *sorted(map(str, pyenv_root.glob(f"versions/{minimum}.*/bin/python{minimum}")))]
    for candidate in filter(None, candidates):
        if _python_version(candidate) == minimum:
            return candidate
    pytest.skip(f"no python{minimum} found (gr00t-client's requires-python); set GR00T_MIN_PYTHON to one")


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0 and any(hint in result.stdout + result.stderr for hint in _OFFLINE_HINTS):
        pytest.skip(f"pip cannot fetch {args} (offline?)")
    assert result.returncode == 0, f"pip install {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def min_venv(tmp_path_factory) -> Path:
    """A venv of the oldest supported Python with the client and its dependencies at their lower bounds."""
    interpreter = _oldest_python()
    root = tmp_path_factory.mktemp("client-min-versions")
    subprocess.run([interpreter, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    pins = list(lower_bound_pins(_project()["dependencies"]).values())
    # One resolve, so the test tools cannot lift a pinned dependency (pip would refuse rather than upgrade).
    _pip(python, *pins, *TEST_TOOLS)
    source = root / "gr00t-client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _pip(python, "--no-deps", str(source))
    return python


def test_every_client_dependency_has_a_lower_bound_that_is_pinned_here():
    pins = lower_bound_pins(_project()["dependencies"])
    assert set(pins) == {"pyzmq", "msgpack", "numpy"}, pins  # the client's promise: these three only
    with pytest.raises(ValueError, match="no '>=' lower bound"):
        lower_bound_pins(["numpy"])


@pytest.mark.slow
def test_the_client_only_tests_pass_at_the_lowest_admitted_versions(min_venv):
    versions = subprocess.run(
        [str(min_venv), "-c", "import numpy, zmq, msgpack; print(numpy.__version__, zmq.__version__, msgpack.version)"],
        capture_output=True, text=True, check=True).stdout.split()
    pins = lower_bound_pins(_project()["dependencies"])
    for name, installed in zip(("numpy", "pyzmq"), versions):
        assert pins[name].split("==")[1] in installed, (name, installed, pins[name])
    result = subprocess.run(
        [str(min_venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", *[f"tests/client/{t}" for t in CLIENT_ONLY_TESTS]],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert re.search(r"\d+ passed", result.stdout) and "failed" not in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_the_client_at_the_lowest_admitted_versions_talks_to_our_server(min_venv, tmp_path):
    server_public, server_secret = zmq.curve_keypair()
    wrong_public, _ = zmq.curve_keypair()
    with running_server(EchoPolicy()) as plain, \
            running_server(EchoPolicy(), curve_secret_key=server_secret.decode()) as encrypted:
        dead = zmq.Context.instance().socket(zmq.ROUTER)  # accepts connections, never answers
        dead_port = dead.bind_to_random_port("tcp://127.0.0.1")
        try:
            result = subprocess.run(
                [str(min_venv), str(Path(__file__).with_name("min_versions_smoke.py")), str(plain.port),
                 str(encrypted.port), server_public.decode(), wrong_public.decode(), str(dead_port)],
                capture_output=True, text=True, timeout=300,
            )
        finally:
            dead.close(linger=0)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    for line in ("plain multipart: ping, modality config, get_action, reset, errors ok",
                 "plain reference: ping, modality config, get_action, reset, errors ok",
                 "ActionChunker (asynchronous) over the client ok",
                 "CURVE: encrypted get_action ok, a wrong server key raises HandshakeError",
                 "timeout against a dead port ok"):
        assert line in result.stdout, f"missing {line!r} in:\n{result.stdout}"
    versions = next(line for line in result.stdout.splitlines() if line.startswith("versions:"))
    assert f"numpy {lower_bound_pins(_project()['dependencies'])['numpy'].split('==')[1]}" in versions, versions
    print(versions)
