"""gr00t-server: serve GR00T N1.7 policies over ZeroMQ.

The public API is exported here and loaded on first use (PEP 562), so `import gr00t_server` stays cheap: it
imports no torch until a model policy is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# Public name -> the module (relative to this package) that defines it.
_EXPORTS: Dict[str, str] = {
    "PolicyServer": ".serving",
    "ServerLimits": ".serving",
    "Gr00tPolicy": ".policies.gr00t_policy",
    "ReplayPolicy": ".policies.replay",
    "Gr00tSimPolicyWrapper": ".policies.sim_wrapper",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

# `Name as Name`: an explicit re-export, which a type checker needs to let users import the name from here (mypy
# --strict's no_implicit_reexport rejected `from <package> import <name>`); __all__ is not a literal.
if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .policies.gr00t_policy import Gr00tPolicy as Gr00tPolicy
    from .policies.replay import ReplayPolicy as ReplayPolicy
    from .policies.sim_wrapper import Gr00tSimPolicyWrapper as Gr00tSimPolicyWrapper
    from .serving import PolicyServer as PolicyServer, ServerLimits as ServerLimits


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first access (keeps `import gr00t_server` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gr00t_server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
