"""Packaging metadata that must hold for the wheels to install anywhere (read from the sources, no build).

One version per release (each package's `__version__`, which setuptools reads), siblings pinned to it,
LICENSE and py.typed shipped, lower bounds that the code and transformers really need, extras that do not
pull what nothing imports.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the dev venv runs 3.11
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"gr00t-client": "gr00t_client", "gr00t-eval": "gr00t_eval", "gr00t-server": "gr00t_server"}


def _pyproject(name: str) -> dict:
    return tomllib.loads((REPO / "packages" / name / "pyproject.toml").read_text())


def _version(name: str) -> str:
    init = (REPO / "packages" / name / "src" / PACKAGES[name] / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', init, re.MULTILINE)
    assert match, f"{name}: no literal __version__ in __init__.py (setuptools reads it statically)"
    return match.group(1)


def _requirements(name: str) -> List[Requirement]:
    project = _pyproject(name)["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def _by_name(name: str) -> Dict[str, List[Requirement]]:
    out: Dict[str, List[Requirement]] = {}
    for requirement in _requirements(name):
        out.setdefault(requirement.name.lower().replace("_", "-"), []).append(requirement)
    return out


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_version_is_read_from_the_package_and_matches_the_release(name):
    project = _pyproject(name)
    assert project["project"].get("dynamic") == ["version"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": f"{PACKAGES[name]}.__version__"}
    assert _version(name) == _version("gr00t-client")


@pytest.mark.parametrize("name", ["gr00t-eval", "gr00t-server"])
def test_siblings_are_pinned_to_the_same_release(name):
    release = _version(name)
    siblings = [r for r in _requirements(name) if r.name.startswith("gr00t-")]
    assert siblings, f"{name} declares no sibling"
    for requirement in siblings:
        assert str(requirement.specifier) == f"=={release}", f"{name}: {requirement} is not pinned to {release}"


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_license_and_py_typed_ship_in_every_package(name):
    project = _pyproject(name)
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert (REPO / "packages" / name / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert (REPO / "packages" / name / "src" / PACKAGES[name] / "py.typed").exists()
    assert project["tool"]["setuptools"]["package-data"][PACKAGES[name]] == ["py.typed"]
    assert "Typing :: Typed" in project["project"]["classifiers"] and project["project"]["urls"]


def test_replay_is_an_extra_of_the_server_not_a_dependency():
    project = _pyproject("gr00t-server")["project"]
    assert not any(Requirement(r).name == "gr00t-eval" for r in project["dependencies"])
    assert [Requirement(r).name for r in project["optional-dependencies"]["replay"]] == ["gr00t-eval"]


def test_plain_gr00t_eval_has_no_plotting_or_simulator_dependencies():
    names = {Requirement(r).name for r in _pyproject("gr00t-eval")["project"]["dependencies"]}
    assert not names & {"matplotlib", "gymnasium", "metaworld", "mujoco", "gym-pusht", "torch"}, names


def test_gymnasium_lower_bound_has_autoreset_mode_and_builds_meta_world():
    """1.1 brought AutoresetMode; 1.1.0's render-mode check refuses Meta-World 3.1.1's envs, 1.1.1 builds them."""
    for requirement in _by_name("gr00t-eval")["gymnasium"]:
        assert not requirement.specifier.contains("1.1.0") and requirement.specifier.contains("1.1.1"), requirement


def test_server_lower_bounds_satisfy_what_transformers_requires():
    """Our minimum of each shared dependency must be allowed by the installed transformers' own requirement."""
    ours = _by_name("gr00t-server")
    theirs = {Requirement(r).name.lower().replace("_", "-"): Requirement(r)
              for r in metadata.requires("transformers") or [] if "extra ==" not in r}
    checked = 0
    for name in ("huggingface-hub", "tokenizers", "safetensors"):
        lower = [s.version for r in ours[name] for s in r.specifier if s.operator in (">=", "==")]
        assert lower, f"{name} has no lower bound"
        assert theirs[name].specifier.contains(lower[0], prereleases=True), (
            f"gr00t-server allows {name}=={lower[0]}, but transformers requires {theirs[name]}")
        checked += 1
    assert checked == 3


def test_no_extra_pulls_packages_that_nothing_imports():
    requirements = {r.name for name in PACKAGES for r in _requirements(name)}
    assert "onnxscript" not in requirements and "dm-control" not in requirements
    assert not any(r.specifier and str(r.specifier).startswith("==") and not r.name.startswith("gr00t-")
                   for name in PACKAGES for r in _requirements(name)), "exact pins belong in constraints.txt"


def test_tensorrt_extras_use_cuda_specific_wheels_below_11_and_onnx_extras_are_distinct():
    extras = _pyproject("gr00t-server")["project"]["optional-dependencies"]
    assert "tensorrt" not in extras
    for cuda in ("cu12", "cu13"):
        trt = [Requirement(r) for r in extras[f"tensorrt-{cuda}"] if r.startswith("tensorrt")]
        assert [r.name for r in trt] == [f"tensorrt-{cuda}"]
        assert not trt[0].specifier.contains("11.0.0") and trt[0].specifier.contains("10.13.3.9")
    runtimes = {extra: {Requirement(r).name for r in extras[extra]} & {"onnxruntime", "onnxruntime-gpu"}
                for extra in ("onnx", "onnx-gpu")}
    assert runtimes == {"onnx": {"onnxruntime"}, "onnx-gpu": {"onnxruntime-gpu"}}


def test_set_version_rewrites_every_version_and_sibling_pin_in_one_go(tmp_path):
    """scripts/set_version.py on a copy of the version-bearing files: all three packages move together."""
    import shutil
    import subprocess

    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "set_version.py", tmp_path / "scripts")
    for name, module in PACKAGES.items():
        (tmp_path / "packages" / name / "src" / module).mkdir(parents=True)
        shutil.copy(REPO / "packages" / name / "pyproject.toml", tmp_path / "packages" / name)
        shutil.copy(REPO / "packages" / name / "src" / module / "__init__.py", tmp_path / "packages" / name / "src" / module)
    result = subprocess.run([sys.executable, str(tmp_path / "scripts" / "set_version.py"), "7.8.9rc1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name, module in PACKAGES.items():
        init = (tmp_path / "packages" / name / "src" / module / "__init__.py").read_text()
        assert '__version__ = "7.8.9rc1"' in init
        project = tomllib.loads((tmp_path / "packages" / name / "pyproject.toml").read_text())["project"]
        pins = [Requirement(r) for r in project["dependencies"] + sum(project.get("optional-dependencies", {}).values(), [])
                if r.startswith("gr00t-")]
        assert all(str(pin.specifier) == "==7.8.9rc1" for pin in pins), pins


@pytest.mark.parametrize("module", ["gr00t_server", "gr00t_eval"])
def test_each_command_line_tool_says_its_version(module, capsys):
    """`gr00t-server --version` / `gr00t-eval --version` were usage errors: a robot team could not tell which release a
    machine ran without Python."""
    import importlib

    package = importlib.import_module(module)
    cli = importlib.import_module(f"{module}.cli")
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"{module.replace('_', '-')} {package.__version__}"


def test_dist_check_refuses_a_python_older_than_the_packages_need_at_once():
    """`make dist-check` makes every venv with the Python that runs it: on 3.9 it installed the client for a minute,
    then failed in pip's words ("requires a different Python"). It names the Python it needs, the newest any package
    requires, before installing anything."""
    import subprocess

    from packaging.specifiers import SpecifierSet

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import dist_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    floors = [min(spec.version for spec in SpecifierSet(_pyproject(name)["project"]["requires-python"]))
              for name in PACKAGES]
    assert ".".join(map(str, dist_check.MIN_PYTHON)) == max(floors, key=lambda v: tuple(map(int, v.split("."))))
    # this interpreter stands for an older one: the floor is raised one minor version above it
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import dist_check; "
            f"dist_check.MIN_PYTHON = {tuple(sys.version_info[:2])!r}[:1] + ({sys.version_info[1] + 1},); "
            "sys.exit(dist_check.main(['--dist', sys.argv[2]]))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "scripts"), "/nonexistent-dist"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert f"need Python >= {sys.version_info[0]}.{sys.version_info[1] + 1}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert dist_check.main(["--check-python"]) == 0  # this Python can (what make dist-check asks before building)
    # run first in dist-check's own recipe: as a prerequisite beside dist, `make -j` ran dist's rm -rf dist with it
    target = re.search(r"^dist-check:(.*)\n\t(.*)\n\t(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert target and not target.group(1).strip(), "dist-check must have no prerequisite to run beside its check"
    assert target.group(2).endswith("dist_check.py --check-python") and target.group(3) == "$(MAKE) dist", target.group(0)
