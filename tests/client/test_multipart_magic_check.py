"""Telling a multipart message from a reference-wire one looks at the first frame's length and few bytes: the check
copied the whole first frame (a zmq Frame's `.bytes`), 56 ms and 48 MB more for a 48 MB reference-wire request on
the server's socket thread, and pyzmq kept the copy on the frame while the request lived."""

from __future__ import annotations

import tracemalloc

import pytest
import zmq

from gr00t_client.multipart import MULTIPART_MAGIC, is_multipart

MB = 2**20


@pytest.fixture
def pair():
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://magic-check")
    b.connect("inproc://magic-check")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)
    context.term()


def test_a_large_single_frame_is_told_apart_without_copying_it(pair):
    sender, receiver = pair
    sender.send(b"\x81" + b"\x00" * (16 * MB))
    frame = receiver.recv(copy=False)
    tracemalloc.start()
    try:
        answer = is_multipart([frame])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer is False
    assert peak < MB, f"telling a 16 MB frame apart allocated {peak / MB:.1f} MB"


@pytest.mark.parametrize("first, expected", [
    (MULTIPART_MAGIC, True),
    (MULTIPART_MAGIC + b"\x00", False),
    (MULTIPART_MAGIC[:-1], False),
    (b"\x00" * len(MULTIPART_MAGIC), False),
    (b"", False),
])
def test_only_the_magic_frame_itself_marks_a_multipart_message(pair, first, expected):
    sender, receiver = pair
    sender.send_multipart([first, b"header"])
    frames = receiver.recv_multipart(copy=False)
    assert is_multipart(frames) is expected
    assert is_multipart([bytes(first)]) is expected and is_multipart([bytearray(first)]) is expected


def test_no_frames_are_not_multipart():
    assert is_multipart([]) is False
