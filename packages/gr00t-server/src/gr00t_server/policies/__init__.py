"""Policies served by gr00t-server: dataset replay and the flat-key simulation wrapper."""

from .replay import ReplayPolicy
from .sim_wrapper import Gr00tSimPolicyWrapper

__all__ = ["Gr00tSimPolicyWrapper", "ReplayPolicy"]
