"""Limits of the request envelope at their exact values (mutants of serving/messages.py that no test noticed): an
error text of exactly the cap is sent whole, a session_id of exactly --max-session-id-chars is a session."""

from __future__ import annotations

import pytest

from gr00t_server.serving.messages import RequestError, bounded, session_of


def test_a_message_of_exactly_the_cap_is_sent_whole_and_one_more_character_is_cut_within_it():
    assert bounded("x" * 200, 200) == "x" * 200
    cut = bounded("x" * 201, 200)
    assert len(cut) <= 200 and cut.endswith("more characters)") and cut.startswith("x")


def test_a_session_id_of_exactly_the_cap_is_a_session_and_one_more_character_is_refused():
    assert session_of({"session_id": "s" * 128}, 128) == "s" * 128
    with pytest.raises(RequestError, match=r"session_id has 129 characters; this server accepts at most 128"):
        session_of({"session_id": "s" * 129}, 128)
    assert session_of({}, 128) is None and session_of({"session_id": None}, 128) is None
    with pytest.raises(RequestError, match=r"'session_id' must be a non-empty str of at most 128 characters"):
        session_of({"session_id": ""}, 128)
