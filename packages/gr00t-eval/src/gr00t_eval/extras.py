"""Optional dependencies of gr00t-eval (plots, simulation, Ray), imported on first use.

A plain `pip install gr00t-eval` reads datasets and runs open-loop evaluation; the pip extras add
matplotlib (`plots`), gymnasium with Meta-World (`sim`) or with gym-pusht (`pusht`) and Ray (`ray`). A missing one
raises `MissingExtraError` with one line that names the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that provides it."""


def is_installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingExtraError: '<purpose> needs <module>: pip install 'gr00t-eval[<extra>]''."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs {module} ({exc}): pip install 'gr00t-eval[{extra}]'") from exc


def require_gymnasium(purpose: str) -> ModuleType:
    """Import gymnasium or raise MissingExtraError naming both simulator extras: where the env is not known, neither is
    the extra that installs gymnasium with its simulator."""
    try:
        return importlib.import_module("gymnasium")
    except ImportError as exc:
        raise MissingExtraError(f"{purpose} needs gymnasium ({exc}): pip install 'gr00t-eval[sim]' for Meta-World, "
                                "'gr00t-eval[pusht]' for PushT") from exc
