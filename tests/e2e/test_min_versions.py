"""gr00t-client and gr00t-eval at the bottom of what their pyprojects admit: the oldest `requires-python`
interpreter with every dependency pinned to its lower bound, as on an older robot or evaluation machine; the
client at the top too: the newest Python its classifiers name, with the newest release of each dependency; and
gr00t-server's transformers stack at its lower bounds.

A fresh venv of that interpreter gets those pins and the package (from a copy of its sources, so no build folder
is left in the checkout), then runs the package's own tests that need nothing else.

- gr00t-client (Python 3.9, numpy 1.21.0, pyzmq 22.0.0, msgpack 1.0.0 today): the codec, modality, embodiment
  and CURVE tests, and a smoke script (min_versions_smoke.py) against real gr00t-servers of the dev venv over
  loopback: both wire formats, errors, a NaN refusal, CURVE, a timeout and the ActionChunker.
- gr00t-eval (Python 3.10, numpy 1.21.2, pyarrow 17.0.0, av 17.1.0, tqdm 4.60.0; matplotlib 3.8.4 for [plots]):
  the dataset reader and writer (h264 and av1 mp4s, parquet, both LeRobot layouts), metrics and open-loop tests.
- gr00t-server's model code (transformers 4.57.0, tokenizers 0.22.0, safetensors 0.4.3, huggingface_hub 0.34.0
  today) with the dev venv's Python and torch: the model, checkpoint, policy and processing tests.

Skipped when no interpreter of the version is found (GR00T_PYTHON_3_9, _3_10, _3_13 name one) or when pip
cannot reach an index.
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

# A venv build and a test run each (pip and the inner run have their own limits): past pytest.ini's 10 minutes when the
# machine is busy, as it was when the server's model tests took 5 minutes in a clean clone beside other work.
pytestmark = pytest.mark.timeout(1800)

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (the dev venv's)

REPO = Path(__file__).resolve().parents[2]
PACKAGES = REPO / "packages"
# Each package's tests that need nothing but the package, its dependencies and the test tools.
CLIENT_ONLY_TESTS = [f"tests/client/{name}" for name in (
    "test_codec.py", "test_codec_depth_limit.py", "test_codec_packers.py", "test_curve_client.py",
    "test_embodiment.py", "test_modality.py")]
EVAL_ONLY_TESTS = [f"tests/eval/{name}" for name in (
    "test_dataset_reader.py", "test_dataset_writer.py", "test_metrics.py", "test_open_loop.py",
    "test_video_reader_defects.py", "test_video_frame_times.py")]
TEST_TOOLS = ["pytest", "pytest-timeout", "hypothesis"]
# A lower bound with no wheel for the oldest Python is tested at the first release that has one (a source build
# of numpy takes many minutes): numpy 1.21.0 and 1.21.1 have no wheels for Python 3.10.
LOWEST_WITH_A_WHEEL = {("3.10", "numpy==1.21"): "numpy==1.21.2", ("3.10", "pyzmq==22"): "pyzmq==22.3.0"}
_OFFLINE_HINTS = ("No matching distribution found", "Could not find a version", "NewConnectionError",
                  "Temporary failure in name resolution", "Network is unreachable")


def _project(package: str) -> dict:
    return tomllib.loads((PACKAGES / package / "pyproject.toml").read_text())["project"]


def _oldest_supported(package: str) -> str:
    return re.fullmatch(r">=\s*(3\.\d+)", _project(package)["requires-python"]).group(1)


def lower_bound_pins(dependencies: List[str]) -> Dict[str, str]:
    """{name: "name==X"} for each `name>=X` requirement (siblings `gr00t-*==V` are skipped: installed from source);
    a dependency without a lower bound raises."""
    pins = {}
    for requirement in dependencies:
        if requirement.startswith("gr00t-"):
            continue
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(,.*)?", requirement)
        if match is None:
            raise ValueError(f"dependency {requirement!r} has no '>=' lower bound to test")
        name, bound = match.group(1), match.group(2)
        if name in pins:  # named twice (a sibling's too): the higher bound is the one both admit
            bound = max(bound, pins[name].split("==")[1], key=lambda v: tuple(int(p) for p in v.split(".") if p))
        pins[name] = f"{name}=={bound}"
    return pins


def _python_version(candidate: str) -> str:
    """'3.9' for a working interpreter, '' for one that does not run (e.g. a pyenv shim of a version not selected)."""
    try:
        result = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60)
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _python(version: str) -> str:
    """An interpreter of Python `version`: GR00T_PYTHON_3_9 (any X.Y), pythonX.Y on PATH, or pyenv's."""
    variable = f"GR00T_PYTHON_{version.replace('.', '_')}"
    if os.environ.get(variable):
        candidate = os.environ[variable]
        found = _python_version(candidate)
        assert found == version, f"{variable}={candidate} is Python {found or '(not runnable)'}, not {version}"
        return candidate
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"), *sorted(map(str, pyenv_root.glob(f"versions/{version}.*/bin/python{version}")))]
    for candidate in filter(None, candidates):
        if _python_version(candidate) == version:
            return candidate
    pytest.skip(f"no python{version} found; set {variable} to one")


def _pip(python: Path, *args: str) -> None:
    # --no-compile: byte-compiling every module of torch and transformers took half of the install (the tests import
    # a small part of them, compiled as they are imported)
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                             *args],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0 and any(hint in result.stdout + result.stderr for hint in _OFFLINE_HINTS):
        pytest.skip(f"pip cannot fetch {args} (offline?)")
    assert result.returncode == 0, f"pip install {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _pins(package: str, extras: List[str] = ()) -> List[str]:
    """Lower-bound pins of `package`, its `extras` and its gr00t siblings' dependencies, for its oldest Python."""
    project = _project(package)
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    for sibling in [r.split("==")[0] for r in project["dependencies"] if r.startswith("gr00t-")]:
        requirements += _project(sibling)["dependencies"]  # a sibling's bound is met by the same lowest release
    minimum = _oldest_supported(package)
    return [LOWEST_WITH_A_WHEEL.get((minimum, pin), pin) for pin in lower_bound_pins(requirements).values()]


def _newest_supported(package: str) -> str:
    """The newest 'Programming Language :: Python :: 3.X' classifier of `package`."""
    versions = [c.rsplit(" ", 1)[1] for c in _project(package)["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    return max(versions, key=lambda v: int(v.split(".")[1]))


def _min_venv(root: Path, python_version: str, pins: List[str], tools: List[str], sources: List[str]) -> Path:
    """A venv of Python `python_version` with `pins` and `tools` in one resolve (so no tool lifts a pin) and our
    `sources` installed from copies without their dependencies."""
    interpreter = _python(python_version)
    subprocess.run([interpreter, "-m", "venv", str(root / "venv")], check=True, timeout=300)
    python = root / "venv" / "bin" / "python"
    _pip(python, *pins, *tools)
    copies = []
    for name in sources:
        copy = root / name
        shutil.copytree(PACKAGES / name, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        copies.append(str(copy))
    _pip(python, "--no-deps", *copies)
    return python


def _installed(python: Path, *modules: str) -> Dict[str, str]:
    code = "import importlib.metadata as m, sys; print(' '.join(m.version(d) for d in sys.argv[1:]))"
    versions = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(modules, versions))


def _assert_at_the_pins(python: Path, pins: List[str]) -> None:
    """Each pinned distribution is installed at its pin (`numpy==1.21` is met by 1.21.0)."""
    wanted = dict(pin.split("==") for pin in pins)
    installed = _installed(python, *wanted)
    for name, version in wanted.items():
        assert installed[name] == version or installed[name].startswith(version + "."), (name, installed[name], version)


def _run_tests(python: Path, tests: List[str]) -> str:
    """Run `tests` in the venv of `python`; a run past 15 minutes is a hang, reported with what it printed (av 12.0
    hung so, in FFmpeg's decoder teardown). The server's model tests take a few minutes on 2 cores alone and passed 5
    with other work beside them."""
    try:
        # the outer run's PYTEST_ADDOPTS (say --durations) is not the inner run's: its output is read below
        env = {name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"}
        result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests],
                                cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"the tests hung for 15 minutes in {python}; they printed:\n{printed[-4000:]}")
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    # the counts, not the word: a test's name may hold "failed" (test_ping_is_false_on_a_failed_handshake)
    assert re.search(r"\d+ passed", result.stdout) and not re.search(r"\d+ failed", result.stdout), result.stdout[-2000:]
    return result.stdout


def _client_venv(root: Path) -> Path:
    return _min_venv(root, _oldest_supported("gr00t-client"), _pins("gr00t-client"), [*TEST_TOOLS, "msgpack-numpy"],
                     ["gr00t-client"])


def _client_newest_venv(root: Path) -> Path:
    """The other end of the range: the newest Python the client claims, with the newest release of each dependency."""
    names = list(lower_bound_pins(_project("gr00t-client")["dependencies"]))
    return _min_venv(root, _newest_supported("gr00t-client"), names, [*TEST_TOOLS, "msgpack-numpy"], ["gr00t-client"])


# The server's model code (Qwen3-VL backbone from transformers, checkpoint loading, tokenizer, processing) at the
# lowest transformers stack gr00t-server admits, with the dev venv's Python and torch: torch's own lower bound (2.4)
# would be another multi-GB build, so it is not tested here.
TRANSFORMERS_STACK = ("transformers", "tokenizers", "safetensors", "huggingface_hub")
SERVER_MODEL_TESTS = [f"tests/server/{name}" for name in (
    "test_model_forward.py", "test_model_checkpoint.py", "test_model_keys.py", "test_gr00t_policy.py",
    "test_gr00t_policy_stages.py", "test_processing_text.py", "test_processing_patches.py", "test_processing_image.py",
    "test_processing_config.py")]


def _transformers_stack_pins() -> List[str]:
    pins = lower_bound_pins(_project("gr00t-server")["dependencies"])
    return [pins[name] for name in TRANSFORMERS_STACK]


def _server_transformers_venv(root: Path) -> Path:
    import importlib.metadata
    import sys

    torch_pin = f"torch=={importlib.metadata.version('torch')}"  # the build the dev venv has (make install's)
    others = [name for name in lower_bound_pins(_project("gr00t-server")["dependencies"])  # unpinned: newest
              if name not in TRANSFORMERS_STACK and name != "torch"]
    return _min_venv(root, "%d.%d" % sys.version_info[:2], [*_transformers_stack_pins(), torch_pin, *others],
                     [*TEST_TOOLS, "msgpack", "msgpack-numpy"], ["gr00t-client", "gr00t-server"])


def _eval_venv(root: Path) -> Path:
    return _min_venv(root, _oldest_supported("gr00t-eval"), _pins("gr00t-eval", ["plots"]), TEST_TOOLS,
                     ["gr00t-client", "gr00t-eval"])


VENVS = {"client_venv": _client_venv, "client_newest_venv": _client_newest_venv,
         "server_transformers_venv": _server_transformers_venv, "eval_venv": _eval_venv}


@pytest.fixture(scope="module")
def venv_builds(request, tmp_path_factory):
    """The venvs this run's selected tests need, built side by side (one after another they took two and a half
    minutes, most of it pip waiting on downloads and disk): {name: future of its interpreter's path}. A build's
    skip (no interpreter, no index) or failure is raised by the test that asks for it."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = set()
    for item in request.session.items:  # each test names its venv as its "venv" parameter
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and callspec.params.get("venv") in VENVS:
            wanted.add(callspec.params["venv"])
    pool = ThreadPoolExecutor(max(1, len(wanted)))
    builds = {name: pool.submit(VENVS[name], tmp_path_factory.mktemp(name)) for name in sorted(wanted)}
    yield builds
    pool.shutdown(wait=True)


def _built(venv_builds, name: str) -> Path:
    return venv_builds[name].result(timeout=1800)


def test_every_dependency_has_a_lower_bound_that_is_pinned_here():
    assert _oldest_supported("gr00t-client") == "3.9" and _newest_supported("gr00t-client") == "3.13"
    assert set(lower_bound_pins(_project("gr00t-client")["dependencies"])) == {"pyzmq", "msgpack", "numpy"}
    assert {"numpy", "pyarrow", "av", "tqdm"} <= set(lower_bound_pins(_project("gr00t-eval")["dependencies"]))
    assert "numpy==1.21.2" in _pins("gr00t-eval") and "numpy==1.21" in _pins("gr00t-client")
    assert lower_bound_pins(["numpy>=1.21", "gr00t-client==0.1.0", "numpy>=1.24.1", "numpy>=1.22"]) == {"numpy": "numpy==1.24.1"}
    with pytest.raises(ValueError, match="no '>=' lower bound"):
        lower_bound_pins(["numpy"])


# The first release of an extra's dependency that works with the rest of what the packages admit. Their venvs (torch,
# onnxruntime, MuJoCo, OpenCV) are too big to build in the suite, so the bounds themselves are checked.
FIRST_WORKING_RELEASE = [
    # IOBinding took an ONNX element type (the only way to bind bfloat16) from 1.20: "Not a valid numpy type" before
    ("gr00t-server", "onnx", "onnxruntime", "1.20"),
    ("gr00t-server", "onnx-gpu", "onnxruntime-gpu", "1.20"),
    # start_http_server returns the (server, thread) it started from 0.20 (None before)
    ("gr00t-server", "metrics", "prometheus_client", "0.20"),
    # gymnasium 1.1.0 refused Meta-World 3.1.1's envs: AssertionError: ['human', 'rgb_array', 'depth_array']
    ("gr00t-eval", "sim", "gymnasium", "1.1.1"),
    ("gr00t-eval", "pusht", "gymnasium", "1.1.1"),
    # gym-pusht admits opencv-python 4.9, built for numpy 1: it fails to import beside numpy 2
    ("gr00t-eval", "pusht", "opencv-python", "4.10.0.84"),
]


def _release(version: str) -> tuple:
    return tuple(int(part) for part in version.split("."))


@pytest.mark.parametrize("package, extra, name, first_working", FIRST_WORKING_RELEASE,
                         ids=[f"{extra}-{name}" for _, extra, name, _ in FIRST_WORKING_RELEASE])
def test_an_extra_admits_no_release_older_than_the_first_that_works(package, extra, name, first_working):
    pins = lower_bound_pins(_project(package)["optional-dependencies"][extra])
    assert name in pins, f"{package}[{extra}] sets no lower bound for {name}; releases before {first_working} fail"
    bound = pins[name].split("==")[1]
    assert _release(bound) >= _release(first_working), \
        f"{package}[{extra}] admits {name} {bound}, but releases before {first_working} fail"


# The first release of a dependency that needs numpy 2 without declaring it: while a package admits numpy 1, pip
# installs that release beside numpy 1 (pip check is clean) and it fails at import, so the package caps it below.
NEEDS_NUMPY_2_FROM = [
    # "ImportError: pyarrow requires NumPy 2.0 or newer": `pip install gr00t-eval "numpy<2"` read no dataset
    ("gr00t-eval", "pyarrow", "26"),
]


@pytest.mark.parametrize("package, name, needs_numpy_2_from", NEEDS_NUMPY_2_FROM,
                         ids=[name for _, name, _ in NEEDS_NUMPY_2_FROM])
def test_a_dependency_needing_numpy_2_is_capped_below_that_release_while_numpy_1_is_admitted(package, name,
                                                                                             needs_numpy_2_from):
    dependencies = _project(package)["dependencies"]
    numpy_floor = lower_bound_pins(dependencies)["numpy"].split("==")[1]
    assert _release(numpy_floor) < (2,), f"{package} no longer admits numpy 1: drop {name} from NEEDS_NUMPY_2_FROM"
    requirement = next(r for r in dependencies if re.match(rf"\s*{re.escape(name)}\s*[<>=!~]", r))
    caps = re.findall(r"<\s*([0-9][0-9.]*)", requirement)
    assert caps and _release(caps[0]) <= _release(needs_numpy_2_from), (
        f"{package} admits numpy {numpy_floor} and {requirement!r}; expected {name}<{needs_numpy_2_from}: "
        f"{name} {needs_numpy_2_from} needs numpy 2 and fails to import beside numpy 1")


CLIENT_ENDS = pytest.mark.parametrize("venv", ["client_venv", "client_newest_venv"], ids=["lowest", "newest"])


@pytest.mark.slow
@CLIENT_ENDS
def test_the_client_only_tests_pass_at_both_ends_of_the_admitted_versions(venv, venv_builds):
    client_venv = _built(venv_builds, venv)
    if venv == "client_venv":
        _assert_at_the_pins(client_venv, _pins("gr00t-client"))
    _run_tests(client_venv, CLIENT_ONLY_TESTS)


@pytest.mark.slow
@CLIENT_ENDS
def test_the_client_at_both_ends_of_the_admitted_versions_talks_to_our_server(venv, venv_builds):
    client_venv = _built(venv_builds, venv)
    server_public, server_secret = zmq.curve_keypair()
    wrong_public, _ = zmq.curve_keypair()
    with running_server(EchoPolicy()) as plain, \
            running_server(EchoPolicy(), curve_secret_key=server_secret.decode()) as encrypted:
        dead = zmq.Context.instance().socket(zmq.ROUTER)  # accepts connections, never answers
        dead_port = dead.bind_to_random_port("tcp://127.0.0.1")
        try:
            result = subprocess.run(
                [str(client_venv), str(Path(__file__).with_name("min_versions_smoke.py")), str(plain.port),
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
    print(next(line for line in result.stdout.splitlines() if line.startswith("versions:")))


@pytest.mark.slow
@pytest.mark.parametrize("venv", ["eval_venv"], ids=["lowest"])
def test_the_eval_dataset_and_open_loop_tests_pass_at_the_lowest_admitted_versions(venv, venv_builds):
    eval_venv = _built(venv_builds, venv)
    _assert_at_the_pins(eval_venv, _pins("gr00t-eval", ["plots"]))
    output = _run_tests(eval_venv, EVAL_ONLY_TESTS)
    # av1 must be written and read here too (av 12's FFmpeg encodes it with libaom-av1, not SVT-AV1)
    assert "cannot be encoded by this PyAV build" not in output, output[-3000:]


# A PolicyServer with a metrics port, in a process whose prometheus_client is the one pinned first on its path.
_METRICS_SERVER = """
import urllib.request
from gr00t_client import PolicyClient
from reference_peer import EchoPolicy
from serving import running_server
with running_server(EchoPolicy(), metrics_port=0) as server:
    with PolicyClient(port=server.port, timeout_ms=10000) as client:
        assert client.ping()
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
print(page)
"""


@pytest.mark.slow
def test_the_metrics_endpoint_serves_at_the_lowest_prometheus_client_admitted(tmp_path):
    """prometheus_client 0.17-0.19 (once admitted) returned nothing from start_http_server: `serve --metrics-port`
    died at start-up unpacking it. The wheel is pure Python and small, so the lower bound itself is installed here."""
    import sys

    pin = lower_bound_pins(_project("gr00t-server")["optional-dependencies"]["metrics"])["prometheus_client"]
    _pip(Path(sys.executable), "--no-deps", "--target", str(tmp_path / "lib"), pin)
    path = [str(tmp_path / "lib"), str(REPO / "tests"), *(str(PACKAGES / name / "src") for name in (
        "gr00t-client", "gr00t-server", "gr00t-eval")), os.environ.get("PYTHONPATH", "")]
    result = subprocess.run([sys.executable, "-c", _METRICS_SERVER], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))})
    assert result.returncode == 0, f"the metrics server failed with {pin}:\n{result.stderr[-3000:]}"
    bound, installed = pin.split("==")[1], _installed_at(tmp_path / "lib", "prometheus_client")
    assert installed == bound or installed.startswith(bound + "."), (pin, installed)
    assert "gr00t_requests" in result.stdout and "gr00t_queue_depth" in result.stdout, result.stdout[-2000:]


def _installed_at(target: Path, distribution: str) -> str:
    """The version of `distribution` that pip installed into the --target folder `target`."""
    import importlib.metadata

    return next(importlib.metadata.distributions(path=[str(target)], name=distribution)).version


@pytest.mark.slow
@pytest.mark.parametrize("venv", ["server_transformers_venv"], ids=["lowest"])
def test_the_server_model_code_passes_at_the_lowest_transformers_stack(venv, venv_builds):
    server_transformers_venv = _built(venv_builds, venv)
    _assert_at_the_pins(server_transformers_venv, _transformers_stack_pins())
    _run_tests(server_transformers_venv, SERVER_MODEL_TESTS)
