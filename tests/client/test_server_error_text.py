"""What a wrong or hostile server says reaches the caller bounded and escaped: its error text (megabytes, a newline,
terminal escapes) and the action keys it names, so that it can neither flood a log or results file nor forge a log
line. A raw REP socket on loopback plays the server; the real PolicyClient talks to it."""

from __future__ import annotations

from typing import List

import msgpack
import numpy as np
import pytest
from reference_peer import ref_packb
from rep_thread import RepThread

from gr00t_client import ActionError, PolicyClient, PolicyServerError

HUGE = 3_000_000
FORGED = "2026-01-01 00:00:00 INFO:gr00t_eval:forged line \x1b[31mred\x1b[0m"
MULTIPART_MAGIC = b"\x00GR00T-MP1"


def reference_error(text: str) -> List[bytes]:
    return [msgpack.packb({"error": text})]


def multipart_error(text: str) -> List[bytes]:
    return [MULTIPART_MAGIC, msgpack.packb({"ok": False, "error": text})]


def server_error_of(reply: List[bytes], wire: str) -> PolicyServerError:
    with RepThread(lambda frames: reply) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, wire=wire) as client:
            with pytest.raises(PolicyServerError) as raised:
                client.call_endpoint("reset", {"options": None})
    return raised.value


@pytest.mark.parametrize("wire, reply", [("reference", reference_error), ("multipart", multipart_error)])
def test_a_servers_error_of_megabytes_is_cut_saying_how_much_was_cut(wire, reply):
    error = server_error_of(reply("E" * HUGE + "\n" + FORGED), wire)
    assert len(error.server_message) <= 2000 and len(str(error)) <= 2100
    assert error.server_message.startswith("EEEE") and error.server_message.endswith(" more characters)")


@pytest.mark.parametrize("wire, reply", [("reference", reference_error), ("multipart", multipart_error)])
def test_a_servers_error_cannot_forge_a_log_line(wire, reply):
    error = server_error_of(reply("model failed\n" + FORGED), wire)
    assert "\n" not in str(error) and "\x1b" not in str(error)
    assert error.server_message == "model failed\\n" + FORGED.replace("\x1b", "\\x1b")


def test_a_servers_short_printable_error_is_kept_whole():
    message = "ValueError: state key 'arm' has shape (1, 2); expected (1, 1, 7) — «quoted» text"
    assert server_error_of(reference_error(message), "reference").server_message == message


def test_an_action_key_of_megabytes_from_the_server_is_cut_in_the_error_naming_it():
    key = "k" * HUGE + "\n" + FORGED
    reply = [ref_packb(({key: np.array([[[np.nan]]], np.float32)}, {}))]
    with RepThread(lambda frames: reply) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000, wire="reference") as client:
            with pytest.raises(ActionError, match="has non-finite values") as raised:
                client.get_action({"state": {"x": np.zeros((1, 1, 3), np.float32)}})
    message = str(raised.value)
    assert len(message) < 1000 and "\n" not in message and " more characters)" in message
