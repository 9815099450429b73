"""Test helpers for what holds a received ZeroMQ frame alive: a frame as a socket hands it over, and a block in which
only reference counting frees objects."""

from __future__ import annotations

import contextlib
import gc
import itertools
from typing import Iterator

import zmq

_ADDRESSES = itertools.count()


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """Only reference counting frees objects meanwhile: what a reference cycle holds stays until gc runs."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def received_frame(message: bytes) -> zmq.Frame:
    """`message` as a ZeroMQ socket hands it over: a writable frame the receiver owns."""
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://received-frame-{next(_ADDRESSES)}"
    try:
        receiver.bind(address)
        sender.connect(address)
        sender.send(message)
        return receiver.recv(copy=False)
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        context.term()
