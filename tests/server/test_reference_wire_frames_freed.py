"""A reference-wire (single-frame) request's received frame is freed once the policy's call is done with the arrays
that view it, by reference counting alone: the cyclic GC runs too seldom to bound a server's memory by it."""

from __future__ import annotations

import time
import weakref
from typing import Any, Dict, List, Optional

import numpy as np
from received_frames import cyclic_gc_off, received_frame
from serving import running_server

from gr00t_client import BasePolicy, PolicyClient, codec
from gr00t_server.serving.messages import decode_payload

CAMERA = np.full((1, 1, 1024, 1024, 3), 7, np.uint8)  # 3 MiB: large arrays view the received frame


def viewed_buffer(array: np.ndarray) -> Any:
    """The object whose memory `array` views (the received ZeroMQ frame, when it was decoded in place)."""
    base = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


class FrameWatcher(BasePolicy):
    """Keeps a weak reference to the buffer each call's camera array views, and nothing else of the request."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.viewed: List[weakref.ref] = []

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None):
        self.viewed.append(weakref.ref(viewed_buffer(observation["video"]["front"])))
        return {"joints": np.zeros((1, 16, 7), np.float32)}, {}

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {}


def test_a_reference_wire_requests_frame_is_freed_once_its_call_is_done():
    """The viewing reader's functions called each other through closures that held the frame, a reference cycle:
    8 reference-wire clients sending 4096x4096 frames took a server from 39 MB to 2.3 GB, still 1.9 GB after. The
    latest call's frame may still be referenced by the worker until its next job; every earlier one is gone."""
    policy = FrameWatcher()
    observation = {"video": {"front": CAMERA}, "state": {"joints": np.zeros((1, 1, 7), np.float32)}}
    with cyclic_gc_off(), running_server(policy, inline_below_ms=0) as server, \
            PolicyClient(port=server.port, timeout_ms=10_000, wire="reference") as client:
        for _ in range(4):
            client.get_action(observation)
        earlier = policy.viewed[:-1]
        deadline = time.monotonic() + 2
        while any(ref() is not None for ref in earlier) and time.monotonic() < deadline:
            time.sleep(0.01)
        held = sum(ref() is not None for ref in earlier)
    assert len(earlier) == 3 and held == 0, f"{held} of 3 earlier calls' received frames are still alive"


def test_the_servers_decode_of_a_single_frame_request_frees_its_frame_with_the_request():
    frame = received_frame(codec.encode({"endpoint": "get_action", "data": {"observation": {"video": {"front": CAMERA}}}}))
    alive = weakref.ref(frame)
    with cyclic_gc_off():
        envelope, _ = decode_payload([frame], 1 << 28)
        del frame
        assert viewed_buffer(envelope["data"]["observation"]["video"]["front"]) is alive()  # decoded in place
        del envelope
        assert alive() is None, "the received frame outlived the request decoded from it"
