"""gr00t-client: talk to a GR00T policy server from a robot or simulator.

The public API is exported here and loaded on first use (PEP 562): `import gr00t_client` imports neither numpy nor
ZeroMQ until a name that needs them is asked for, so the command lines can take SIGTERM from their first line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# Public name -> the module (relative to this package) that defines it.
_EXPORTS: Dict[str, str] = {
    "ActionChunker": ".chunking",
    "ChunkerStats": ".chunking",
    "merge_overlap": ".chunking",
    "PolicyPositionError": ".chunking",
    "ClientClosedError": ".client",
    "DeadlineNotRunError": ".client",
    "ForkedSessionError": ".client",
    "MessageTooLargeError": ".client",
    "PolicyClient": ".client",
    "PolicyServerError": ".client",
    "PolicyTimeoutError": ".client",
    "ReplyLostError": ".client",
    "ServerBusyError": ".client",
    "ServerStoppingError": ".client",
    "UpstreamFailedError": ".client",
    "WireDecodeError": ".codec",
    "WireEncodeError": ".codec",
    "HandshakeError": ".curve",
    "EMBODIMENT_TAG_TO_PROJECTOR_INDEX": ".embodiment",
    "EmbodimentTag": ".embodiment",
    "ActionConfig": ".modality",
    "ActionFormat": ".modality",
    "ActionRepresentation": ".modality",
    "ActionType": ".modality",
    "ModalityConfig": ".modality",
    "ActionError": ".policy",
    "BasePolicy": ".policy",
    "NonFiniteActionError": ".policy",
    "ObservationError": ".policy",
    "PolicyValidationError": ".policy",
    "PolicyWrapper": ".policy",
}

# Submodules reachable as attributes (`gr00t_client.codec`), as they were when the package imported them all.
_SUBMODULES = ("chunking", "cli_flags", "cli_signals", "client", "codec", "curve", "embodiment", "flat", "frame_views", "modality",
               "policy", "stdout_guard")

__all__ = sorted(_EXPORTS)

# `Name as Name`: an explicit re-export, which a type checker needs to let users import the name from here (mypy
# --strict's no_implicit_reexport rejected `from <package> import <name>`); __all__ is not a literal.
if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .chunking import (ActionChunker as ActionChunker, ChunkerStats as ChunkerStats,
                           PolicyPositionError as PolicyPositionError, merge_overlap as merge_overlap)
    from .client import (ClientClosedError as ClientClosedError, DeadlineNotRunError as DeadlineNotRunError,
                         ForkedSessionError as ForkedSessionError, MessageTooLargeError as MessageTooLargeError,
                         PolicyClient as PolicyClient,
                         PolicyServerError as PolicyServerError, PolicyTimeoutError as PolicyTimeoutError,
                         ReplyLostError as ReplyLostError, ServerBusyError as ServerBusyError,
                         ServerStoppingError as ServerStoppingError,
                         UpstreamFailedError as UpstreamFailedError)
    from .codec import WireDecodeError as WireDecodeError, WireEncodeError as WireEncodeError
    from .curve import HandshakeError as HandshakeError
    from .embodiment import (EMBODIMENT_TAG_TO_PROJECTOR_INDEX as EMBODIMENT_TAG_TO_PROJECTOR_INDEX,
                             EmbodimentTag as EmbodimentTag)
    from .modality import (ActionConfig as ActionConfig, ActionFormat as ActionFormat,
                           ActionRepresentation as ActionRepresentation, ActionType as ActionType,
                           ModalityConfig as ModalityConfig)
    from .policy import (ActionError as ActionError, BasePolicy as BasePolicy,
                         NonFiniteActionError as NonFiniteActionError, ObservationError as ObservationError,
                         PolicyValidationError as PolicyValidationError, PolicyWrapper as PolicyWrapper)


def __getattr__(name: str) -> Any:
    """Import the module defining a public name (or the submodule itself) on first access."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module 'gr00t_client' has no attribute {name!r}")
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
