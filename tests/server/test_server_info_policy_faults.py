"""get_server_info of a custom policy whose `work_limits()` or `observation_format` raises: the info is still
answered, that field marked unavailable ({"error": ...}), the failure logged once, and the server goes on serving.
A real PolicyServer on loopback and a real PolicyClient."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gr00t_client import BasePolicy, ModalityConfig, PolicyClient
from serving import running_server

CONFIGS = {"state": ModalityConfig([0], ["joints"]), "action": ModalityConfig([0, 1, 2, 3], ["arm"])}
OBSERVATION = {"state": {"joints": np.zeros((1, 1, 3), np.float32)}}


class FaultyInfoPolicy(BasePolicy):
    """A policy whose `work_limits()` or `observation_format` (the one named by `fails`) raises `exc`."""

    def __init__(self, fails, exc):
        super().__init__()
        self.fails, self.exc = fails, exc

    @property
    def observation_format(self):
        if self.fails == "observation_format":
            raise self.exc
        return "nested"

    def work_limits(self):
        if self.fails == "work_limits":
            raise self.exc
        return {"max_denoising_steps": 8}

    def get_modality_config(self):
        return CONFIGS

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        return {"arm": np.zeros((1, 4, 3), np.float32)}, {}


@pytest.mark.parametrize("exc", [RuntimeError("x" * 5000), SystemExit(3)], ids=["RuntimeError", "SystemExit"])
def test_info_marks_a_failing_observation_format_unavailable_and_the_server_goes_on(exc, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server"), \
            running_server(FaultyInfoPolicy("observation_format", exc)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        for _ in range(3):
            info = client.get_server_info()
            assert info["observation_format"] == {"error": f"internal error in observation_format: {type(exc).__name__}"}
            assert info["limits"]["max_denoising_steps"] == 8 and info["policy_class"] == "FaultyInfoPolicy"
        action, _ = client.get_action(OBSERVATION)
        assert action["arm"].shape == (1, 4, 3)
        assert client.ping()
    logged = [r.getMessage() for r in caplog.records if "observation_format failed" in r.getMessage()]
    assert len(logged) == 1, logged  # once, not per request
    assert len(logged[0]) < 1500  # the policy's 5,000-character message cut


@pytest.mark.parametrize("exc", [ValueError("no processor"), SystemExit(3)], ids=["ValueError", "SystemExit"])
def test_info_marks_failing_work_limits_unavailable_keeps_the_servers_limits_and_the_server_goes_on(exc, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server"), \
            running_server(FaultyInfoPolicy("work_limits", exc)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
        # a ValueError's message is sent as the server sends a validation error's; any other is named by its type
        expected = "ValueError: no processor" if isinstance(exc, ValueError) else "internal error in work_limits: SystemExit"
        assert info["limits"]["error"] == expected, info["limits"]
        assert "max_rows" in info["limits"] and "max_denoising_steps" not in info["limits"]
        assert info["observation_format"] == "nested"
        assert client.get_server_info()["limits"]["error"] == info["limits"]["error"]
        action, _ = client.get_action(OBSERVATION)
        assert action["arm"].shape == (1, 4, 3)
    assert len([r for r in caplog.records if "work_limits failed" in r.getMessage()]) == 1
