"""The packages ship py.typed: every public name (__all__) is an explicit re-export a type checker accepts (under
mypy --strict, `from gr00t_client import PolicyClient` was 'does not explicitly export'), read from the source as a
type checker reads it, while the names stay lazily imported at run time."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ["gr00t_client", "gr00t_eval", "gr00t_server"]


def _type_checking_imports(package: str) -> dict:
    """name -> (module, alias) of every `from .module import name [as alias]` under `if TYPE_CHECKING:`."""
    init = Path(importlib.import_module(package).__file__)
    imports = {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.dump(statement)
                for alias in statement.names:
                    imports[alias.name] = ("." * statement.level + (statement.module or ""), alias.asname)
    return imports


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_imported_for_type_checkers_as_an_explicit_reexport(package):
    module = importlib.import_module(package)
    public = set(module.__all__) - {"__version__"}
    imports = _type_checking_imports(package)
    assert set(imports) == public, f"{package}: TYPE_CHECKING imports differ from __all__: {set(imports) ^ public}"
    implicit = sorted(name for name, (_, alias) in imports.items() if alias != name)
    assert not implicit, f"{package}: not imported as `Name as Name` (mypy --strict refuses them): {implicit}"


@pytest.mark.parametrize("package", PACKAGES)
def test_the_type_checking_imports_name_the_module_that_defines_each_name(package):
    exports = importlib.import_module(package)._EXPORTS
    imports = _type_checking_imports(package)
    assert {name: module for name, (module, _) in imports.items()} == exports


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_the_package_still_imports_none_of_its_public_modules(package):
    modules = sorted({m.lstrip(".") for m in importlib.import_module(package)._EXPORTS.values()})
    probe = (f"import sys, {package}\n"
             f"print([m for m in {modules!r} if '{package}.' + m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
