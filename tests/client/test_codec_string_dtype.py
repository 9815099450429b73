"""numpy 2's variable-width string dtype (np.array([...], dtype="T")): its items are 16-byte records of this process's
memory, and its type string 'StringDType()' names no dtype a peer can build. The codec sent those records; gr00t-server
answered "unknown array dtype 'StringDType()'" naming no key, and the np.save wire said "Object arrays cannot be saved".
Every encoder now refuses it, saying to send np.array(value.tolist()) (a '<U' array; value.astype(str)
raises in numpy 2), and the client names the key."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import pytest
from serving import running_server

from gr00t_client import BasePolicy, PolicyClient, PolicyServerError, WireEncodeError, codec

pytestmark = pytest.mark.skipif(not hasattr(getattr(np, "dtypes", None), "StringDType"), reason="numpy 2's dtype")

LANGUAGE_KEY = "annotation.human.task_description"
REFUSAL = r"variable-width string dtype 'StringDType\(\)' cannot be encoded.*send np\.array\(value\.tolist\(\)\)"


def string_dtype_array(items: int) -> np.ndarray:
    return np.array(["pick up the cube"] * items, dtype=np.dtypes.StringDType())


class LanguagePolicy(BasePolicy):
    """Answers every observation with a zero action and, in its info, the instruction as a StringDType array."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        return {"x": np.zeros((1, 1, 1), np.float32)}, {"instruction": string_dtype_array(1)}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}

    def get_modality_config(self) -> Dict[str, Any]:
        return {}


@pytest.mark.parametrize("items", [2, 20_000], ids=["small", "spliced-or-own-frame"])
@pytest.mark.parametrize("encoder", [codec.encode, codec.encode_multipart, codec.encode_early_n16])
def test_every_encoder_refuses_a_string_dtype_array_saying_to_send_fixed_width_strings(encoder, items):
    with pytest.raises(WireEncodeError, match=REFUSAL):
        encoder({"observation": {LANGUAGE_KEY: string_dtype_array(items)}})


def test_the_same_strings_as_a_fixed_width_array_still_round_trip():
    decoded = codec.decode(codec.encode({LANGUAGE_KEY: np.array(string_dtype_array(2).tolist())}))
    assert decoded[LANGUAGE_KEY].tolist() == ["pick up the cube"] * 2


def test_a_client_refuses_a_string_dtype_observation_naming_its_key():
    with running_server(LanguagePolicy()) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client:
        observation = {"state.x": np.zeros((2, 1, 1), np.float32), LANGUAGE_KEY: string_dtype_array(2)}
        with pytest.raises(WireEncodeError, match=rf"get_action: observation\.{LANGUAGE_KEY}: .*{REFUSAL}"):
            client.get_action(observation)


def test_a_policy_replying_with_a_string_dtype_array_gets_an_error_reply_not_unreadable_bytes():
    with running_server(LanguagePolicy()) as server, \
            PolicyClient(port=server.port, timeout_ms=5000, strict=False) as client:
        with pytest.raises(PolicyServerError, match=rf"could not encode the result of 'get_action': .*{REFUSAL}"):
            client.get_action({"state.x": np.zeros((1, 1, 1), np.float32)})
