"""Audit 13b (mutation testing, policy identity): the pinned-policy check no earlier test pinned down."""

from __future__ import annotations

import pytest

from gr00t_eval.policy_identity import ServedPolicyChanged, check_serves, record_from_info

SERVED = {"policy_class": "Gr00tSimPolicyWrapper", "embodiment_tag": "new_embodiment",
          "policy_identity": {"kind": "checkpoint", "weights_sha256": "ab12"}, "modality_configs": {"action": [0, 1]}}


class RestartedServer:
    """What a client reaches after its server came back as one that does not say what it serves (a reference
    server: no policy_class in its info)."""

    address = "127.0.0.1:5555"

    def get_server_info(self):
        return {"version": "reference"}


def test_a_server_that_no_longer_says_which_policy_it_serves_counts_as_another_policy():
    """A pinned run whose server restarts as one that names no policy stops (ServedPolicyChanged): its episodes
    cannot be shown to come from the pinned checkpoint."""
    with pytest.raises(ServedPolicyChanged, match="now serves an unknown policy"):
        check_serves(RestartedServer(), record_from_info(SERVED))


def test_the_same_policy_passes_the_pinned_check():
    """The check passes when the server still serves the pinned record's policy."""

    class SameServer(RestartedServer):
        def get_server_info(self):
            return dict(SERVED)

    check_serves(SameServer(), record_from_info(SERVED))


def test_an_unauthorized_reply_to_the_policy_question_is_raised_not_read_as_no_info():
    """A wrong token's "Unauthorized" reply to get_server_info is raised (every request of the run would be refused),
    not taken as a server that cannot say which policy it serves."""
    from gr00t_client.client import PolicyServerError
    from gr00t_eval.policy_identity import policy_record

    class WrongToken(RestartedServer):
        def get_server_info(self):
            raise PolicyServerError("Unauthorized: missing or wrong API token")

    with pytest.raises(PolicyServerError, match="Unauthorized"):
        policy_record(WrongToken())


def test_the_same_checkpoint_with_other_modality_configs_is_another_policy():
    """Two servers of one checkpoint whose modality configs differ (another horizon) have different fingerprints."""
    from gr00t_eval.policy_identity import same_policy

    other = {**SERVED, "modality_configs": {"action": [0, 1, 2, 3]}}
    assert not same_policy(record_from_info(SERVED), record_from_info(other))


def test_an_inner_pin_leaves_the_outer_one_in_place_when_it_ends():
    """Code that pins a client once around several runs (each of which pins it again, as run_rollout does) stays
    pinned after the first run ends: a restart with another checkpoint later is still caught."""
    from eval.scale_fixtures import Checkpoint
    from test_served_policy_swap import serving_in_turn

    from gr00t_client import PolicyClient
    from gr00t_eval.policy_identity import pinned_policy

    server = serving_in_turn(Checkpoint("A"), Checkpoint("B"))
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=3000) as client, pinned_policy(client):
            with pinned_policy(client):  # the first run's own pin
                client.reset()
            server.restart(reconnecting=1)
            with pytest.raises(ServedPolicyChanged):
                client.reset()
    finally:
        server.stop()
