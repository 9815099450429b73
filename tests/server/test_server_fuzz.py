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


def refusal_text(reply):
    """The error text of a one-frame error reply."""
    assert reply is not None, "the server did not answer"
    answer = ref_unpackb(reply[-1]) if len(reply) == 1 else codec.decode_multipart(reply)
    assert isinstance(answer, dict) and "error" in answer, f"expected an error reply, got {answer!r:.200}"
    return answer["error"]


@FUZZ
@given(payload=st.binary(min_size=1, max_size=512))
def test_random_bytes_are_refused_as_undecodable_not_as_an_internal_error(server, payload):
    try:
        msgpack.unpackb(payload, strict_map_key=False)
        return  # bytes that happen to be msgpack: the envelope tests cover what they say
    except Exception:
        pass
    assert "internal error" not in refusal_text(raw_round_trip(server.port, payload, timeout_ms=5000))
    assert_still_serving(server.port)


@pytest.mark.parametrize("array_map", [
    {"nd": True, "type": ",1", "kind": b"", "shape": [1], "data": b"\0" * 4},  # numpy reads the dtype as Python
    {"__ndarray_class__": True, "as_npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': '''  \n"},  # a header numpy cannot tokenize
], ids=["dtype-string", "npy-header"])
def test_arrays_numpy_parses_as_python_are_refused_naming_the_array_not_as_an_internal_error(server, array_map):
    envelope = {"endpoint": "get_action", "data": {"observation": {"state": {"x": array_map}}}}
    text = refusal_text(raw_round_trip(server.port, msgpack.packb(envelope, use_bin_type=True), timeout_ms=5000))
    assert "internal error" not in text and "state.x" in text, text
    assert_still_serving(server.port)
