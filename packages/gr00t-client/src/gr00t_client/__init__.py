"""gr00t-client: talk to a GR00T policy server from a robot or simulator."""

from .chunking import ActionChunker, ChunkerStats, merge_overlap
from .client import (MessageTooLargeError, PolicyClient, PolicyServerError, PolicyTimeoutError, ReplyLostError,
                     ServerStoppingError)
from .codec import WireDecodeError, WireEncodeError
from .curve import HandshakeError
from .embodiment import EMBODIMENT_TAG_TO_PROJECTOR_INDEX, EmbodimentTag
from .modality import ActionConfig, ActionFormat, ActionRepresentation, ActionType, ModalityConfig
from .policy import ActionError, BasePolicy, NonFiniteActionError, ObservationError, PolicyValidationError, PolicyWrapper

__version__ = "0.1.0"

__all__ = [
    "ActionChunker",
    "ChunkerStats",
    "merge_overlap",
    "ActionConfig",
    "ActionError",
    "ActionFormat",
    "ActionRepresentation",
    "ActionType",
    "BasePolicy",
    "EMBODIMENT_TAG_TO_PROJECTOR_INDEX",
    "EmbodimentTag",
    "HandshakeError",
    "ModalityConfig",
    "NonFiniteActionError",
    "ObservationError",
    "PolicyClient",
    "MessageTooLargeError",
    "PolicyServerError",
    "PolicyTimeoutError",
    "ReplyLostError",
    "ServerStoppingError",
    "PolicyValidationError",
    "PolicyWrapper",
    "WireDecodeError",
    "WireEncodeError",
]
