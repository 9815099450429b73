"""Strict validation and finite checks that no other test held (found by mutation testing): inf as well as NaN,
states of the wrong rank, and non-finite numbers in every form a server that does not check may send (the last item
of a small array, a list, a complex number). Real policies; a real REP peer on loopback for the client."""

from __future__ import annotations

import numpy as np
import pytest
from reference_peer import EchoPolicy, libero_like_configs, libero_like_observation
from rep_thread import RepThread
from test_policy_validation import FixedActionPolicy, good_action

from gr00t_client import ActionChunker, ActionError, BasePolicy, ObservationError, PolicyClient, codec


# --- local strict validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_nested_state_is_refused_naming_key_and_rows(bad):
    """A NaN or inf state makes NaN actions: a strict policy refuses it, inf as well as NaN, naming the rows."""
    observation = libero_like_observation(batch=3)
    key = sorted(observation["state"])[0]
    observation["state"][key][2, 0, 0] = bad
    with pytest.raises(ObservationError, match=rf"State key '{key}' has non-finite values \(NaN or inf\) in rows \[2\]"):
        EchoPolicy(strict=True).get_action(observation)


def test_a_state_of_higher_rank_than_b_t_d_is_refused():
    """A (B, T, D, 1) state is not (B, T, D): refused, not handed to the model."""
    observation = libero_like_observation()
    key = sorted(observation["state"])[0]
    observation["state"][key] = observation["state"][key][..., None]
    with pytest.raises(ObservationError, match=rf"State key '{key}' must have shape \(B, T, D\); got shape \(1, 1, 1, 1\)"):
        EchoPolicy(strict=True).get_action(observation)


# --- the chunker, the last layer before a robot -----------------------------------------------------------------


@pytest.mark.parametrize("dtype, bad", [(np.float32, np.inf), (np.complex64, complex(np.nan, 0))], ids=["inf", "complex-nan"])
def test_the_chunker_refuses_a_non_finite_chunk_of_a_lenient_local_policy(dtype, bad):
    """A local policy checks nothing when not strict; the chunker refuses its inf or complex NaN before any step."""
    action = {"x": np.zeros((1, 4, 1), dtype)}
    action["x"][0, 2, 0] = bad
    chunker = ActionChunker(FixedActionPolicy(action, strict=False))
    with pytest.raises(ActionError, match=r"action key 'x' has non-finite values \(NaN or inf\) in rows \[0\]"):
        chunker.get_action(libero_like_observation())
    assert chunker.stats.requests == 1


# --- PolicyClient against a peer that does not check its actions --------------------------------------------------


def _unchecked_peer(action):
    """A reference-like REP peer: unknown to get_server_info and get_modality_config, answers get_action with `action`."""

    def answer(frames):
        request = codec.decode(frames[0].buffer)
        if request.get("endpoint") == "get_action":
            return [codec.encode([action, {}])]
        return [codec.encode({"error": f"Unknown endpoint: {request.get('endpoint')}"})]

    return RepThread(answer)


@pytest.mark.parametrize("action", [
    {"x": np.array([[[0.0], [0.5], [np.nan]]], np.float32)},  # the last item of a small array
    {"x": [[0.0, 0.5, float("inf")]]},  # a list, as a peer in another language may send
    {"x": {"gripper": complex(float("nan"), 0.0)}},  # a complex number (the codec decodes msgpack complex maps)
], ids=["last-item", "list", "complex-scalar"])
def test_a_client_refuses_non_finite_values_in_every_form_a_peer_may_send(action):
    """Strict or not, no NaN or inf from a server reaches the caller, wherever it sits in the action."""
    with _unchecked_peer(action) as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, strict=False) as client:
            with pytest.raises(ActionError, match=r"Action key 'x.*' from the server at .* has non-finite values"):
                client.get_action(libero_like_observation())


def test_an_info_that_is_not_a_map_is_refused():
    """(action, info) must be a pair of maps: an info of another type is refused, strict or not, not handed on."""
    for strict in (True, False):
        policy = FixedActionPolicy(good_action(), strict=strict)
        policy._get_action = lambda observation, options=None: (good_action(), "done")
        with pytest.raises(ActionError, match=r"returned a tuple of 2: \(dict, str\)"):
            policy.get_action(libero_like_observation())


# --- a strict client holds flat (sim-wrapper) observations to the server's configs --------------------------------


def _peer_with_configs():
    """A reference-like REP peer that reports libero-like modality configs and answers get_action with zeros."""

    def answer(frames):
        request = codec.decode(frames[0].buffer)
        endpoint = request.get("endpoint")
        if endpoint == "get_modality_config":
            return [codec.encode(libero_like_configs())]
        if endpoint == "get_action":
            return [codec.encode([{f"action.{k}": v for k, v in good_action(horizon=16).items()}, {}])]
        return [codec.encode({"error": f"Unknown endpoint: {endpoint}"})]

    return RepThread(answer)


def flat_observation(batch=1):
    nested = libero_like_observation(batch=batch, height=8, width=8)
    flat = {f"{group}.{key}": value for group in ("video", "state") for key, value in nested[group].items()}
    flat.update({key: [rows[0] for rows in value] for key, value in nested["language"].items()})
    return flat


def test_a_strict_client_refuses_a_flat_observation_with_a_non_finite_state_before_sending():
    """The flat form is held to the finite check as the nested one is: a NaN state is refused, naming the flat key."""
    with _peer_with_configs() as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, strict=True) as client:
            observation = flat_observation()
            assert client.get_action(observation)[0]  # the well-formed flat observation is served
            key = sorted(k for k in observation if k.startswith("state."))[0]
            observation[key] = observation[key].copy()
            observation[key][0, 0, 0] = np.nan
            with pytest.raises(ObservationError, match=rf"State key '{key}' has non-finite values"):
                client.get_action(observation)


def test_a_strict_client_refuses_a_flat_observation_whose_keys_disagree_on_the_batch():
    """One flat state key of 1 row among keys of 2 rows is refused, naming both keys (another env's row otherwise)."""
    with _peer_with_configs() as server:
        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=3000, strict=True) as client:
            observation = flat_observation(batch=2)
            key = sorted(k for k in observation if k.startswith("state."))[-1]
            observation[key] = observation[key][:1]
            with pytest.raises(ObservationError, match=rf"key '{key}' has batch size 1; expected 2"):
                client.get_action(observation)


# --- the flat form's strict action check (HEAD defect: see the reason) ----------------------------------------------


class LenientNestedPolicy(BasePolicy):
    """A lenient libero-like policy whose action is `rows` rows of zeros with `first` at action x's first step."""

    def __init__(self, rows=None, first=0.0):
        super().__init__(strict=False)
        self.rows, self.first = rows, first

    def _get_action(self, observation, options=None):
        rows = self.rows or next(iter(observation["state"].values())).shape[0]
        action = {k: np.zeros((rows, 16, 1), np.float32) for k in libero_like_configs()["action"].modality_keys}
        action["x"][0, 0, 0] = self.first
        return action, {}

    def reset(self, options=None):
        return {}

    def get_modality_config(self):
        return libero_like_configs()


@pytest.mark.parametrize("inner", [LenientNestedPolicy(first=np.nan), LenientNestedPolicy(rows=2)], ids=["nan", "two-rows-for-one"])
def test_a_strict_sim_wrapper_refuses_a_nan_or_mis_batched_action_as_the_nested_form_does(inner):
    """The flat form's strict check holds actions to what the nested one does: finite, one row per observation row."""
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    with pytest.raises(ActionError):
        Gr00tSimPolicyWrapper(inner, strict=True).get_action(flat_observation())
