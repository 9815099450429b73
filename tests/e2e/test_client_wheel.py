"""The client wheel alone: built like `make dist`, installed in a fresh venv without torch, talks to a server."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from reference_peer import EchoPolicy, running_server

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT_PACKAGE = os.path.join(REPO_ROOT, "packages", "gr00t-client")

_CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import gr00t_client
    from gr00t_client import PolicyClient
    assert "site-packages" in gr00t_client.__file__, gr00t_client.__file__
    with PolicyClient(host="127.0.0.1", port=int(sys.argv[1]), timeout_ms=10000) as client:
        assert client.ping() is True
        observation = {
            "video": {k: np.zeros((1, 1, 32, 32, 3), np.uint8) for k in ("image", "wrist_image")},
            "state": {k: np.full((1, 1, 1), 3.0, np.float32) for k in ("x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper_2")},
            "language": {"annotation.human.action.task_description": [["pick"]]},
        }
        action, info = client.get_action(observation, {"tag": "wheel"})
    assert action["x"].shape == (1, 16, 1) and info == {"tag": "wheel", "first_state": 3.0}, (action, info)
    print("wheel client ok")
    """
)


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """Build the wheel from a copy of the package (concurrent builds never share a build/ folder), then
    install it with its dependencies from the configured indexes into a venv without system site-packages."""
    root = tmp_path_factory.mktemp("client-wheel")
    source = root / "gr00t-client"
    shutil.copytree(CLIENT_PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # -x: the build dependencies are already here (--no-isolation); only setuptools is needed for a wheel.
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-x", "--outdir", str(root / "dist"), str(source)])
    wheels = list((root / "dist").glob("gr00t_client-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # no --system-site-packages
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check", str(wheels[0])])
    return python


@pytest.mark.slow
def test_wheel_venv_has_no_torch_and_no_system_site_packages(wheel_venv):
    result = subprocess.run([str(wheel_venv), "-c", "import torch"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    check = subprocess.run([str(wheel_venv), "-c", "import gr00t_server"], capture_output=True, text=True, timeout=60)
    assert check.returncode != 0, "the server package leaked into the client venv"


@pytest.mark.slow
def test_wheel_client_pings_and_gets_an_action_from_a_running_server(wheel_venv):
    with running_server(EchoPolicy()) as server:
        result = run([str(wheel_venv), "-c", _CLIENT_SCRIPT, str(server.port)], cwd=str(wheel_venv.parent))
    assert "wheel client ok" in result.stdout
