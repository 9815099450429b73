"""Optional dependencies of gr00t-eval (plots, simulation, Ray), imported on first use.

A plain `pip install gr00t-eval` reads datasets and runs open-loop evaluation; the pip extras add
matplotlib (`plots`), gymnasium with Meta-World (`sim`) or with gym-pusht (`pusht`) and Ray (`ray`). A missing one
raises `MissingExtraError` with one line that names the extra to install; one installed but failing to import, with
one that names the cause.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed (the message names the pip extra that provides it) or is installed but
    failed to import (the message names the cause)."""


def is_installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_missing(exc: ImportError, module: str) -> bool:
    """Whether `exc` says `module`'s package itself is not installed, rather than that it failed to import (a library
    it loads, a binary built for another numpy): only then does installing the extra help."""
    package = module.split(".")[0]
    name = exc.name if isinstance(exc, ModuleNotFoundError) else None
    return name is not None and (name == package or name.startswith(package + "."))


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise MissingExtraError: '<purpose> needs <module>: pip install 'gr00t-eval[<extra>]'' when
    it is not installed, '<module> is installed but failed to import (<cause>)' when it is."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if not is_missing(exc, module):
            message = f"{purpose} needs {module}: {module} is installed but failed to import ({exc})"
            raise MissingExtraError(message) from exc
        raise MissingExtraError(f"{purpose} needs {module} ({exc}): pip install 'gr00t-eval[{extra}]'") from exc


def require_gymnasium(purpose: str) -> ModuleType:
    """Import gymnasium or raise MissingExtraError naming both simulator extras: where the env is not known, neither is
    the extra that installs gymnasium with its simulator."""
    try:
        return importlib.import_module("gymnasium")
    except ImportError as exc:
        if not is_missing(exc, "gymnasium"):
            raise MissingExtraError(f"{purpose} needs gymnasium: gymnasium is installed but failed to import "
                                    f"({exc})") from exc
        raise MissingExtraError(f"{purpose} needs gymnasium ({exc}): pip install 'gr00t-eval[sim]' for Meta-World, "
                                "'gr00t-eval[pusht]' for PushT") from exc
