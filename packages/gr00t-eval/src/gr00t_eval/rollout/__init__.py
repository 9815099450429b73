"""Closed-loop rollout: env registry and adapters, MultiStepWrapper, and the episode-accounting runner."""

from ..extras import require

require("gymnasium", "sim", "closed-loop rollout")  # one line naming the extra, not a deep ImportError

from .envs import ENV_PREFIX_TO_EMBODIMENT_TAG, EnvFactory, embodiment_for_env, env_factory, make_env, register_env_prefix
from .multistep import EpisodeSummary, MultiStepWrapper, success_from_info
from .policy_io import HorizonSpec, ObservationMapper, PolicyRowCursor
from .runner import RolloutConfig, RolloutResult, RolloutRunner, run_rollout

__all__ = [
    "ENV_PREFIX_TO_EMBODIMENT_TAG",
    "EnvFactory",
    "EpisodeSummary",
    "HorizonSpec",
    "MultiStepWrapper",
    "ObservationMapper",
    "PolicyRowCursor",
    "RolloutConfig",
    "RolloutResult",
    "RolloutRunner",
    "embodiment_for_env",
    "env_factory",
    "make_env",
    "register_env_prefix",
    "run_rollout",
    "success_from_info",
]
