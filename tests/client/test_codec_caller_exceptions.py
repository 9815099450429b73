"""The decoders turn only what malformed bytes raise into WireDecodeError: an exception the caller's own signal
handler raises mid-decode (a robot's SIGALRM watchdog) reaches the caller as itself, and the client's server-info
negotiation does not take it for a server it cannot read. Fuzzed messages stay WireDecodeError, never another type."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_peer import EchoPolicy, libero_like_observation
from serving import running_server

from gr00t_client import PolicyClient, codec, wire_decode
from gr00t_client.wire_errors import WireDecodeError

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)
LIMITS = codec.DecodeLimits.for_message_bytes(1 << 20)


class Watchdog(Exception):
    """What a robot's SIGALRM watchdog raises to abandon an overrunning step."""


@contextmanager
def watchdog_fires_in_the_next_map_hook():
    """Deliver a signal whose handler raises Watchdog as the next map of a decode on this thread is turned into its
    value: where a real watchdog's exception appears when its alarm falls during a decode (deterministically)."""

    def on_signal(signum, frame):
        raise Watchdog("control step overran")

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is wire_decode._decode_hook.__code__:
            sys.setprofile(None)
            signal.raise_signal(signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, on_signal)
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR1, previous)


def request() -> bytes:
    return codec.encode({"endpoint": "get_action", "data": {"observation": {
        "state": {"x": np.arange(7, dtype=np.float32).reshape(1, 1, 7)},
        "video": {"front": np.zeros((1, 1, 8, 8, 3), np.uint8)}, "language": {"task": [["pick"]]}}}})


def large_request() -> bytearray:
    """A request in a writable buffer large enough for the viewing reader (share_buffer) to read it."""
    return bytearray(codec.encode({"data": {"frame": np.zeros(300_000, np.uint8), "x": {"a": [1, 2]}}}))


DECODERS = {
    "decode": lambda data: codec.decode(data),
    "decode with limits": lambda data: codec.decode(memoryview(data), LIMITS),
    "decode sharing the buffer": lambda data: codec.decode(bytearray(data), LIMITS, share_buffer=True),
    "decode_noting_npsave": lambda data: codec.decode_noting_npsave(memoryview(data), LIMITS),
}


@pytest.mark.parametrize("decoder", DECODERS.values(), ids=DECODERS.keys())
@pytest.mark.parametrize("message", [request(), codec.encode_early_n16({"a": np.ones(3)}), bytes(large_request())],
                         ids=["msgpack-numpy", "np.save", "viewed"])
def test_a_signal_handlers_exception_during_a_decode_reaches_the_caller_as_itself(decoder, message):
    with watchdog_fires_in_the_next_map_hook(), pytest.raises(Watchdog, match="control step overran"):
        decoder(message)


def test_a_signal_handlers_exception_during_a_multipart_decode_reaches_the_caller_as_itself():
    frames = codec.encode_multipart({"frame": np.zeros((64, 64), np.float32), "x": {"a": 1}})
    with watchdog_fires_in_the_next_map_hook(), pytest.raises(Watchdog, match="control step overran"):
        codec.decode_multipart(frames, LIMITS)


def test_a_watchdog_during_the_first_calls_negotiation_reaches_the_caller_and_the_server_stays_a_gr00t_server():
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        observation = libero_like_observation(height=8, width=8)
        with watchdog_fires_in_the_next_map_hook(), pytest.raises(Watchdog):
            client.get_action(observation)  # its first call asks get_server_info first, whose reply is decoded here
        action, _ = client.get_action(observation)  # the client is usable, and still knows whom it talks to
        assert action
        assert client.server_is_gr00t_server is True
        assert client.get_server_info()["server"] == "gr00t-server"


def mutated(message: bytes, data) -> bytes:
    """`message` cut, overwritten or spliced, as hypothesis picks."""
    kind = data.draw(st.sampled_from(["cut", "overwrite", "insert"]))
    at = data.draw(st.integers(0, len(message) - 1))
    if kind == "cut":
        return message[:at]
    junk = data.draw(st.binary(min_size=1, max_size=6))
    if kind == "overwrite":
        return message[:at] + junk + message[at + len(junk):]
    return message[:at] + junk + message[at:]


SEEDS = [request(), codec.encode_early_n16({"a": np.ones((2, 3)), "b": [1, "x"]}), bytes(large_request()),
         msgpack.packb({"__ndarray__": b"abcd", "dtype": "<f4", "shape": [1]}),
         msgpack.packb({"__npgeneric__": True, "dtype": "<i4", "data": 3}),
         msgpack.packb({"complex": True, "data": "(1+2j)"}),
         msgpack.packb({"__ModalityConfig__": True, "as_json": '{"delta_indices": [0], "modality_keys": ["a"]}'})]


@FUZZ
@given(data=st.data())
def test_fuzzed_messages_are_decoded_or_refused_as_wire_decode_errors_by_every_decoder(data):
    if data.draw(st.booleans()):
        message = mutated(data.draw(st.sampled_from(SEEDS)), data)
    else:
        message = data.draw(st.binary(max_size=200))
    for decoder in DECODERS.values():
        try:
            decoder(message)
        except WireDecodeError:
            pass


@FUZZ
@given(data=st.data())
def test_fuzzed_multipart_messages_are_decoded_or_refused_as_wire_decode_errors(data):
    message = {"frame": np.zeros((40, 40), np.float32), "x": {"a": "b"}}
    frames = [bytes(memoryview(frame)) for frame in codec.encode_multipart(message)]
    which = data.draw(st.integers(1, len(frames) - 1))
    frames[which] = mutated(frames[which], data)
    try:
        codec.decode_multipart(frames, LIMITS)
    except WireDecodeError:
        pass


@pytest.mark.parametrize("type_str", [",1", "04", ","])
def test_a_dtype_string_numpy_reads_as_python_is_refused_as_an_unknown_dtype(type_str):
    message = msgpack.packb({"nd": True, "type": type_str, "kind": b"", "shape": [1], "data": b"\0" * 4})
    with pytest.raises(WireDecodeError, match="is not a dtype str"):  # refused by its form, before numpy reads it
        codec.decode(message)


def test_an_np_save_header_numpy_cannot_tokenize_is_refused_as_malformed():
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } \x00 '''"
    blob = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    with pytest.raises(WireDecodeError, match="Malformed __ndarray_class__ payload"):
        codec.decode(msgpack.packb({"__ndarray_class__": True, "as_npy": blob}))
