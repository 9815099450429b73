"""What a served policy's wrapper and the server's own info tell about its limits, through a real server: the limits
get_server_info reports are the ones enforced, and a sim-wrapped policy's flat language keys are held to them."""

from __future__ import annotations

import numpy as np
import pytest
from reference_peer import EchoPolicy
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import BasePolicy
from gr00t_server.policies import Gr00tSimPolicyWrapper
from gr00t_server.serving import ServerLimits

LANGUAGE_KEY = "annotation.human.action.task_description"
LEGACY_KEY = "annotation.human.coarse_action"


def sim_configs(language_key: str) -> dict:
    return {
        "video": ModalityConfig(delta_indices=[0], modality_keys=["image"]),
        "state": ModalityConfig(delta_indices=[0], modality_keys=["arm"]),
        "action": ModalityConfig(delta_indices=[0, 1], modality_keys=["arm"]),
        "language": ModalityConfig(delta_indices=[0], modality_keys=[language_key]),
    }


class CountingPolicy(BasePolicy):
    """A nested policy returning ones; counts its calls."""

    def __init__(self, configs: dict) -> None:
        super().__init__(strict=False)
        self.configs = configs
        self.calls = 0

    def get_modality_config(self):
        return self.configs

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        self.calls += 1
        return {"arm": np.ones((1, 2, 3), np.float32)}, {}


def flat_observation(language_key: str, text) -> dict:
    return {"video.image": np.zeros((1, 1, 8, 8, 3), np.uint8), "state.arm": np.zeros((1, 1, 3), np.float32),
            language_key: [text]}


def test_get_server_info_reports_every_limit_the_server_was_started_with():
    """get_server_info's "limits" are the ServerLimits in force, field by field (none defaulted or swapped)."""
    limits = ServerLimits(max_rows=3, max_language_chars=101, max_language_tokens=17, max_cameras=5,
                          max_image_pixels=999, max_session_id_chars=33, max_sessions=7, session_idle_s=12.5,
                          max_queued_bytes=4321)
    with running_server(EchoPolicy(), limits=limits) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            info = client.get_server_info()
    assert info["limits"] == {"max_rows": 3, "max_language_chars": 101, "max_language_tokens": 17, "max_cameras": 5,
                              "max_image_pixels": 999, "max_session_id_chars": 33, "max_sessions": 7,
                              "session_idle_s": 12.5, "max_queued_bytes": 4321}


@pytest.mark.parametrize("config_key, sent_key", [(LANGUAGE_KEY, LANGUAGE_KEY), ("task", LEGACY_KEY)],
                         ids=["flat language key", "legacy key read for task"])
def test_language_bytes_under_a_sim_wrappers_flat_language_key_are_held_to_the_limit(config_key, sent_key):
    """Bytes under the flat key a Gr00tSimPolicyWrapper reads as language (the legacy coarse_action key too, when
    the config's key is "task") are language: over --max-language-chars they are refused before the policy runs."""
    inner = CountingPolicy(sim_configs(config_key))
    with running_server(Gr00tSimPolicyWrapper(inner, strict=False), limits=ServerLimits(max_language_chars=10)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError) as caught:
                client.get_action(flat_observation(sent_key, b"pick up the bowl"))
            action, _ = client.get_action(flat_observation(sent_key, b"pick"))
    assert f"language '{sent_key}' in row 0 has 16 characters; this server accepts at most 10" in caught.value.server_message
    assert inner.calls == 1 and action["action.arm"].shape == (1, 2, 3)
