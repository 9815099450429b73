"""A multipart header that references one array frame twice is refused, naming the frame, as stray frames are: both
arrays used to view the one frame, so writing into one changed the other. Our encoder gives every array a frame of
its own; such a message comes from a sender's framing bug. Real bytes; a real server on loopback."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from gr00t_client import BasePolicy, PolicyClient, codec
from serving import running_server

ARRAY_REFERENCE_EXT = 42  # the multipart header's ExtType code for "array in frame N"


def array_reference(frame_index, dtype, shape):
    return msgpack.ExtType(ARRAY_REFERENCE_EXT, msgpack.packb([frame_index, dtype, shape]))


def test_a_header_referencing_one_frame_twice_is_refused_naming_the_frame():
    frame = bytearray(np.zeros(8192, np.float32).tobytes())
    reference = array_reference(2, "<f4", [8192])
    message = [codec.MULTIPART_MAGIC, msgpack.packb({"a": reference, "b": reference}), frame]
    with pytest.raises(codec.WireDecodeError, match="frame 2 is referenced twice"):
        codec.decode_multipart(message)
    # our encoder gives one array object sent twice a frame each: its messages are not refused
    image = np.arange(64 * 1024, dtype=np.uint8)
    frames = codec.encode_multipart({"a": image, "b": [image]})
    assert len(frames) == 4
    decoded = codec.decode_multipart([bytes(frame) for frame in frames])
    np.testing.assert_array_equal(decoded["a"], image)
    np.testing.assert_array_equal(decoded["b"][0], image)


def test_the_frame_referenced_twice_is_named_among_others():
    frames = [bytearray(4096), bytearray(4096)]
    header = msgpack.packb({"first": array_reference(2, "|u1", [4096]), "second": array_reference(3, "|u1", [4096]),
                            "again": [array_reference(3, "|u1", [64, 64])]})
    with pytest.raises(codec.WireDecodeError, match="frame 3 is referenced twice") as raised:
        codec.decode_multipart([codec.MULTIPART_MAGIC, header, *frames])
    assert "frame 2" not in str(raised.value)


class SumPolicy(BasePolicy):
    """Answers with the sum of each of its two images; counts its calls."""

    def __init__(self):
        super().__init__(strict=False)
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        left, right = observation["video"]["left"], observation["video"]["right"]
        return {"sums": np.array([[[left.sum(), right.sum()]]], np.float64)}, {}

    def reset(self, options=None):
        return {}


def test_the_server_refuses_such_a_request_naming_the_frame_and_answers_the_next_normally():
    policy = SumPolicy()
    reference = array_reference(2, "|u1", [1, 1, 64, 64, 3])
    envelope = {"endpoint": "get_action", "data": {"observation": {"video": {"left": reference, "right": reference}},
                                                   "options": None}}
    with running_server(policy) as server:
        context = zmq.Context()
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10000)
        sock.connect(f"tcp://127.0.0.1:{server.port}")
        try:
            sock.send_multipart([codec.MULTIPART_MAGIC, msgpack.packb(envelope), bytes(64 * 64 * 3)])
            reply = codec.decode_multipart(sock.recv_multipart(copy=False))
        finally:
            sock.close(linger=0)
            context.term()
        with PolicyClient(port=server.port, wire="multipart") as client:
            left = np.full((1, 1, 64, 64, 3), 1, np.uint8)
            right = np.full((1, 1, 64, 64, 3), 2, np.uint8)
            action, _info = client.get_action({"video": {"left": left, "right": right}})
    assert reply["ok"] is False and "frame 2 is referenced twice" in reply["error"]
    assert policy.calls == 1  # the refused request never reached the policy
    np.testing.assert_array_equal(action["sums"], [[[left.sum(), right.sum()]]])
