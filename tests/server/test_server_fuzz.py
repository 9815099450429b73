"""Fuzzing: whatever bytes or msgpack values arrive, the server replies or drops them and still answers ping."""

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_peer import EchoPolicy, raw_round_trip, ref_packb, ref_unpackb, running_server

from gr00t_client import codec

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server():
    with running_server(EchoPolicy(), max_message_bytes=1024 * 1024) as server:
        yield server


def assert_still_serving(port):
    reply = raw_round_trip(port, ref_packb({"endpoint": "ping"}), timeout_ms=5000)
    assert reply is not None and ref_unpackb(reply[0])["status"] == "ok"


def send(port, frames):
    """Send and accept any answer (or none, for messages ZeroMQ itself drops)."""
    raw_round_trip(port, frames, timeout_ms=2000)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10) | st.binary(max_size=10), children, max_size=5),
    max_leaves=20,
)
_field_names = st.sampled_from(["endpoint", "data", "api_token", "session_id", "observation", "options", "nd", "type", "kind", "shape", "data", "__ndarray_class__", "as_npy", "__ModalityConfig__", "as_json", "__ndarray__", "dtype"])
_envelopes = st.dictionaries(
    _field_names | _field_names.map(str.encode),
    _msgpack_values | st.sampled_from(["ping", "get_action", "reset", "kill", "get_modality_config", "|O", "<f4", "V8"]),
    max_size=6,
)


@FUZZ
@given(payload=st.binary(max_size=512))
def test_random_bytes_never_stop_the_server(server, payload):
    send(server.port, payload)
    assert_still_serving(server.port)


@FUZZ
@given(envelope=_envelopes)
def test_random_envelopes_never_stop_the_server(server, envelope):
    if envelope.get("endpoint") == "kill" or envelope.get(b"endpoint") == "kill":
        envelope["endpoint"] = "ping"  # kill from loopback is honoured by design
    send(server.port, msgpack.packb(envelope, use_bin_type=True))
    assert_still_serving(server.port)


@FUZZ
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=4), multipart=st.booleans())
def test_random_multi_frame_messages_never_stop_the_server(server, frames, multipart):
    send(server.port, ([codec.MULTIPART_MAGIC] if multipart else []) + frames)
    assert_still_serving(server.port)
