#!/usr/bin/env python3
"""Install the wheels in dist/ into fresh venvs, as a user would, and smoke-test each (`make dist-check`).

    python scripts/dist_check.py [--dist dist] [--work DIR] [--torch-spec SPEC] [--torch-index-url URL]
                                 [--reuse-deps-from VENV]

Every venv is new and has no system site-packages; wheels come from `pip install --find-links dist`:
  client  gr00t-client alone: no torch, no server, no eval; ping / get_action / kill against the replay server,
          with numpy 2 and again with numpy 1.
  eval    gr00t-eval alone: writes a LeRobot dataset, runs `gr00t-eval open-loop` against the replay server
          (error 0: replay serves the recorded actions), never imports torch, skips plots without matplotlib.
  server  gr00t-server without [replay]: imports without torch, `serve --dataset-path` fails with one line naming
          the extra; then gr00t-server[replay] serves the dataset and never imports torch.
The server venv gets torch from --torch-spec/--torch-index-url first (default: the CPU build). With
--reuse-deps-from VENV (the in-suite test) the server venv instead sees VENV's third-party packages through a
.pth file and our wheels are installed with --no-deps, which skips ~1.3 GB of downloads; the client and eval
venvs are then made without pip of their own (this interpreter's pip installs into them, without .pyc).
Stdlib only; needs Python >= 3.10 (every venv uses the Python that runs it, and gr00t-eval and gr00t-server need 3.10;
gr00t-client alone runs on 3.9).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

PACKAGES = ("gr00t_client", "gr00t_eval", "gr00t_server")
READY = "Server is ready and listening on tcp://"
ACTION_HORIZON = 16

# Runs a module as `python -m` would and reports, at exit, whether anything imported torch (start-up, requests,
# shutdown): the check happens inside the process, not by timing it.
_REPORT_TORCH_AT_EXIT = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, flush=True))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)

_WRITE_DATASET = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gr00t_eval.dataset import DatasetWriter
    with DatasetWriter(sys.argv[1], 10) as writer:
        for episode in range(2):
            steps = np.arange(6, dtype=np.float32)[:, None]
            frames = np.full((6, 32, 32, 3), 40 * (episode + 1), np.uint8)
            writer.add_episode(
                frames={"image": frames},
                states={"arm": episode * 100 + steps + np.arange(3, dtype=np.float32) / 10},
                actions={"arm": episode * 100 + 50 + steps + np.arange(3, dtype=np.float32) / 10},
                task="pick the cube",
            )
    hidden = [m for m in ("torch", "matplotlib", "gymnasium") if m in sys.modules]
    assert not hidden, f"writing a dataset imported {hidden}"
    print("eval: dataset written")
    """
)

_CLIENT_SMOKE = textwrap.dedent(
    """
    import importlib.metadata as metadata
    import importlib.util
    import sys
    import numpy as np
    import gr00t_client
    from gr00t_client import PolicyClient
    version, port, kill = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "kill"
    assert gr00t_client.__version__ == version, (gr00t_client.__version__, version)
    assert "site-packages" in gr00t_client.__file__, gr00t_client.__file__
    for name in ("torch", "gr00t_server", "gr00t_eval"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable in the client-only venv"
    files = [str(f) for f in metadata.files("gr00t-client")]
    assert any(f.endswith("gr00t_client/py.typed") for f in files), "py.typed missing"
    assert any(f.endswith("licenses/LICENSE") for f in files), "LICENSE missing from the wheel"
    with PolicyClient(host="127.0.0.1", port=port, timeout_ms=10000) as client:
        assert client.ping() is True
        assert client.get_modality_config()["action"].modality_keys == ["arm"]
        client.reset({"episode_index": 1})
        action, info = client.get_action({})
        assert action["arm"].shape == (1, %d, 3), action["arm"].shape
        np.testing.assert_allclose(action["arm"][0, 0], [150.0, 150.1, 150.2], rtol=0, atol=1e-5)
        if kill:
            client.kill_server()
    print(f"client: numpy {np.__version__} ping/get_action ok")
    """ % ACTION_HORIZON
)

_SERVER_IMPORT_SMOKE = textwrap.dedent(
    """
    import importlib.metadata as metadata
    import sys
    import gr00t_server
    assert gr00t_server.__version__ == sys.argv[1], gr00t_server.__version__
    assert "torch" not in sys.modules, "import gr00t_server imported torch"
    files = [str(f) for f in metadata.files("gr00t-server")]
    assert any(f.endswith("gr00t_server/py.typed") for f in files), "py.typed missing"
    assert any(f.endswith("licenses/LICENSE") for f in files), "LICENSE missing from the wheel"
    print("server: import without torch ok")
    """
)


_STARTED = time.monotonic()


def log(message: str) -> None:
    """Print one progress line with the seconds since the check started."""
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {message}", flush=True)


class CheckFailed(RuntimeError):
    """One smoke check failed; the message says which and shows the command's output."""


def run(command: Sequence[str], *, timeout: float = 900, expect_rc: int = 0, env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a command; raise CheckFailed with its output unless it exits with `expect_rc`."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if result.returncode != expect_rc:
        raise CheckFailed(f"{' '.join(map(str, command))} exited {result.returncode} (expected {expect_rc}):\n"
                          f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Venv:
    """A fresh virtual environment without system site-packages."""

    def __init__(self, path: Path, *, with_pip: bool = True) -> None:
        self.path = path
        run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)], timeout=300)
        self.python = str(path / "bin" / "python")
        self.bin = path / "bin"
        self.with_pip = with_pip

    def pip(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """pip install into this venv: with its own pip as a user would, or (fast mode, a venv without pip)
        with this interpreter's pip through --python and without compiling .pyc files."""
        if self.with_pip:
            base = [self.python, "-m", "pip", "install"]
        else:
            base = [sys.executable, "-m", "pip", "--python", self.python, "install", "--no-compile"]
        return run([*base, "--quiet", "--disable-pip-version-check", *args], timeout=timeout)

    def site_packages(self) -> Path:
        out = run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
        return Path(out.strip())


def find_dist(dist: Path) -> Dict[str, Path]:
    """The one wheel of each package in `dist`, checked for LICENSE, py.typed and sibling pins; sdists too."""
    wheels: Dict[str, Path] = {}
    for package in PACKAGES:
        found = sorted(dist.glob(f"{package}-*.whl"))
        if len(found) != 1:
            raise CheckFailed(f"expected exactly one {package} wheel in {dist}, found {[p.name for p in found]}")
        wheels[package] = found[0]
        sdists = sorted(dist.glob(f"{package}-*.tar.gz"))
        if len(sdists) != 1:
            raise CheckFailed(f"expected exactly one {package} sdist in {dist}, found {[p.name for p in sdists]}")
        with tarfile.open(sdists[0]) as sdist:
            names = sdist.getnames()
        for wanted in ("LICENSE", "pyproject.toml", f"src/{package}/py.typed"):
            if not any(name.endswith("/" + wanted) for name in names):
                raise CheckFailed(f"{sdists[0].name} lacks {wanted}")
    versions = {package: wheel.name.split("-")[1] for package, wheel in wheels.items()}
    if len(set(versions.values())) != 1:
        raise CheckFailed(f"the three wheels disagree on the version: {versions}")
    version = versions["gr00t_client"]
    for package, wheel in wheels.items():
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            raise CheckFailed(f"{wheel.name} lacks dist-info/licenses/LICENSE")
        if f"{package}/py.typed" not in names:
            raise CheckFailed(f"{wheel.name} lacks {package}/py.typed")
        for line in meta.splitlines():
            if line.startswith("Requires-Dist: gr00t-") and f"=={version}" not in line:
                raise CheckFailed(f"{wheel.name}: sibling not pinned to {version}: {line}")
    log(f"dist: 3 wheels and 3 sdists of {version}, LICENSE and py.typed in each, siblings pinned")
    return wheels


def check_client_venv(work: Path, dist: Path, fast: bool) -> Venv:
    venv = Venv(work / "client", with_pip=not fast)
    venv.pip("--find-links", str(dist), "gr00t-client")
    log("client: gr00t-client installed alone")
    return venv


def check_eval_venv(work: Path, dist: Path, dataset: Path, fast: bool) -> Venv:
    venv = Venv(work / "eval", with_pip=not fast)
    venv.pip("--find-links", str(dist), "gr00t-eval")
    log("eval: gr00t-eval installed alone")
    for name in ("torch", "matplotlib", "gymnasium", "gr00t_server"):
        run([venv.python, "-c", f"import importlib.util as u; assert u.find_spec({name!r}) is None, {name!r}"])
    log(run([venv.python, "-c", _WRITE_DATASET, str(dataset)]).stdout.strip())
    return venv


def server_venv(work: Path, dist: Path, wheels: Dict[str, Path], torch_spec: str, torch_index_url: str,
                reuse_deps_from: Optional[Path]) -> Venv:
    """gr00t-server without [replay]: from dist with its dependencies, or --no-deps over a reused venv's packages."""
    if reuse_deps_from is None:
        venv = Venv(work / "server")
        venv.pip(*(["--index-url", torch_index_url] if torch_index_url else []), torch_spec)
        venv.pip("--find-links", str(dist), "gr00t-server")
        return venv
    venv = Venv(work / "server", with_pip=False)
    reused = run([str(reuse_deps_from / "bin" / "python"), "-c",
                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # A path line, not a site dir: the reused venv's own .pth files (its editable gr00t installs) stay inactive.
    (venv.site_packages() / "_reused_deps.pth").write_text(reused + "\n")
    venv.pip("--no-deps", "--ignore-installed", str(wheels["gr00t_client"]), str(wheels["gr00t_server"]))
    return venv


def check_server_without_replay(venv: Venv, version: str, dataset: Path) -> None:
    log(run([venv.python, "-c", _SERVER_IMPORT_SMOKE, version]).stdout.strip())
    run([venv.python, "-c", "import importlib.util as u; assert u.find_spec('gr00t_eval') is None"])
    run([str(venv.bin / "gr00t-server"), "serve", "--help"])
    result = run([str(venv.bin / "gr00t-server"), "serve", "--dataset-path", str(dataset)], expect_rc=2, timeout=120)
    lines = result.stderr.strip().splitlines()
    if len(lines) != 1 or f"pip install gr00t_eval-{version}-py3-none-any.whl" not in lines[0]:
        raise CheckFailed(f"serve --dataset-path without [replay] should fail with one line naming the extra:\n"
                          f"{result.stderr}")
    log(f"server: without [replay] -> {lines[0]}")


def add_replay(venv: Venv, dist: Path, wheels: Dict[str, Path], reusing: bool) -> None:
    if reusing:
        venv.pip("--no-deps", "--ignore-installed", str(wheels["gr00t_eval"]))
    else:
        venv.pip("--find-links", str(dist), "gr00t-server[replay]")


def serve_replay(venv: Venv, dataset: Path, port: int) -> subprocess.Popen:
    """`gr00t-server serve --dataset-path` in the server venv, reporting at exit whether torch was imported."""
    proc = subprocess.Popen(
        [venv.python, "-c", _REPORT_TORCH_AT_EXIT, "gr00t_server.cli", "serve", "--dataset-path", str(dataset),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: List[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(READY):
            return proc
    proc.kill()
    raise CheckFailed("gr00t-server[replay] never became ready:\n" + "\n".join(lines))


def check_open_loop(venv: Venv, dataset: Path, port: int, out: Path) -> None:
    result = run([venv.python, "-c", _REPORT_TORCH_AT_EXIT, "gr00t_eval.cli", "open-loop", "--dataset-path",
                  str(dataset), "--port", str(port), "--traj-ids", "0", "1", "--output-dir", str(out)], timeout=300)
    if "torch imported: False" not in result.stdout:
        raise CheckFailed(f"gr00t-eval open-loop imported torch:\n{result.stdout}")
    if "skipping plots (pip install 'gr00t-eval[plots]')" not in result.stderr:
        raise CheckFailed(f"open-loop without matplotlib did not say how to get plots:\n{result.stderr}")
    import json

    aggregated = json.loads((out / "results.json").read_text())["aggregated"]
    if aggregated["n_trajectories"] != 2 or aggregated["avg_mse"] != 0.0:
        raise CheckFailed(f"open-loop against a replay of the same dataset should give MSE 0 on 2 trajectories, "
                          f"got {aggregated}")
    log(f"eval: open-loop against the replay server: {aggregated['n_trajectories']} trajectories, MSE 0, no torch")


MIN_PYTHON = (3, 10)  # gr00t-eval's and gr00t-server's requires-python


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--dist", default="dist", help="folder with the wheels and sdists (default dist)")
    parser.add_argument("--work", default=None, help="folder for the venvs (default: a temporary folder)")
    parser.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC", "torch==2.13.0+cpu"),
                        help="torch requirement for the server venv (default $TORCH_SPEC or torch==2.13.0+cpu)")
    parser.add_argument("--torch-index-url", default=os.environ.get("TORCH_INDEX_URL", ""),
                        help="index for torch (default $TORCH_INDEX_URL; empty: pip's configured indexes)")
    parser.add_argument("--reuse-deps-from", type=Path, default=None,
                        help="server venv: reuse this venv's third-party packages, install our wheels --no-deps")
    parser.add_argument("--check-python", action="store_true",
                        help="only check that this Python can make the venvs (make dist-check runs it before dist)")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:  # at once, not after minutes of installs and pip's own words
        print(f"dist_check: Python {sys.version.split()[0]} runs this, and every venv is made with it; gr00t-eval and "
              f"gr00t-server need Python >= {'.'.join(map(str, MIN_PYTHON))}: run it with a newer python3",
              file=sys.stderr)
        return 2
    if args.check_python:
        return 0
    dist = Path(args.dist).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="gr00t-dist-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        wheels = find_dist(dist)
        version = wheels["gr00t_client"].name.split("-")[1]
        dataset = work / "dataset"
        fast = args.reuse_deps_from is not None
        with ThreadPoolExecutor(max_workers=3) as pool:  # the three installs are independent
            client_job = pool.submit(check_client_venv, work, dist, fast)
            eval_job = pool.submit(check_eval_venv, work, dist, dataset, fast)
            server_job = pool.submit(server_venv, work, dist, wheels, args.torch_spec, args.torch_index_url,
                                     args.reuse_deps_from)
            client, evaluation, server = client_job.result(), eval_job.result(), server_job.result()
        log("server: gr00t-server installed without [replay]")
        check_server_without_replay(server, version, dataset)
        add_replay(server, dist, wheels, reusing=args.reuse_deps_from is not None)
        log("server: [replay] added")
        port = free_port()
        proc = serve_replay(server, dataset, port)
        try:
            log(run([client.python, "-c", _CLIENT_SMOKE, version, str(port), "keep"]).stdout.strip())
            check_open_loop(evaluation, dataset, port, work / "open-loop")
            client.pip("numpy<2")
            log(run([client.python, "-c", _CLIENT_SMOKE, version, str(port), "kill"]).stdout.strip())
            rest, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 0 or "torch imported: False" not in rest:
            raise CheckFailed(f"the replay server exited {proc.returncode} or imported torch:\n{rest}")
        log("server: [replay] served, killed by the client, exited 0, never imported torch")
    except CheckFailed as exc:
        print(f"dist-check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"dist-check passed in {time.monotonic() - started:.0f} s (venvs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
