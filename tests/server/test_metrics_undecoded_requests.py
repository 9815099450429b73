"""Requests refused before they are decoded (a byte budget, --max-message-mb, a malformed message) are counted and
answered under the endpoint their request map names first, not as `other` (the label of endpoint names the server
does not know), and as `undecoded` when no name can be read. Real ZeroMQ peers and real /metrics scrapes on
loopback."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq

from gr00t_client import BasePolicy, codec
from gr00t_server.server import ServerLimits
from serving import running_server

pytest.importorskip("prometheus_client")
from test_prometheus_metrics import requests_count, scrape_settled  # noqa: E402 - needs prometheus_client

MIB = 1 << 20


class NapPolicy(BasePolicy):
    """Sleeps 0.3 s per call, so that requests pipelined behind the first wait in the queue."""

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        time.sleep(0.3)
        return {"arm": np.zeros((1, 16, 3), np.float32)}, {}

    def reset(self, options=None):
        return {}


def large_get_action(image_bytes: int) -> dict:
    image = np.zeros((1, 1, 1, image_bytes, 1), np.uint8)
    return {"endpoint": "get_action", "data": {"observation": {"video": {"cam": image}}}}


def error_of(frames) -> tuple:
    """(error message, endpoint) of an error reply in either format; (None, None) for a result."""
    reply = codec.decode_multipart(frames) if codec.is_multipart(frames) else codec.decode(frames[-1])
    return (reply.get("error"), reply.get("endpoint")) if isinstance(reply, dict) else (None, None)


def dealer(port: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


@pytest.mark.parametrize("encode", [lambda request: [codec.encode(request)], codec.encode_multipart],
                         ids=["single-frame", "multipart"])
def test_get_action_refused_for_its_connections_byte_budget_is_counted_as_get_action(encode, caplog):
    """Three 1.2 MiB get_action pipelined on one connection with a 2 MiB budget: the two refused were counted under
    endpoint="other", answered and logged as endpoint '?'; alerts on get_action refusals missed the flood."""
    limits = ServerLimits(max_client_queued_bytes=2 * MIB)
    with running_server(NapPolicy(), metrics_port=0, limits=limits) as server:
        sock = dealer(server.port)
        try:
            with caplog.at_level(logging.WARNING, logger="gr00t_server"):
                for _ in range(3):
                    sock.send_multipart([b"", *encode(large_get_action(int(1.2 * MIB)))])
                errors = [error_of(sock.recv_multipart()[1:]) for _ in range(3)]
        finally:
            sock.close()
        samples = scrape_settled(server, 3)
    refused = [endpoint for error, endpoint in errors if error and "budget" in error]
    assert refused == ["get_action", "get_action"]
    assert requests_count(samples, "get_action", "refused") == 2
    assert requests_count(samples, "other", "refused") == 0
    assert "request 'get_action' from 127.0.0.1 refused: this connection already has" in caplog.text


def test_a_request_over_max_message_bytes_is_counted_under_the_endpoint_it_names():
    with running_server(NapPolicy(), metrics_port=0, max_message_bytes=MIB) as server:
        sock = dealer(server.port)
        try:
            sock.send_multipart([b"", codec.encode(large_get_action(int(1.5 * MIB)))])
            error, endpoint = error_of(sock.recv_multipart()[1:])
        finally:
            sock.close()
        samples = scrape_settled(server, 1)
    assert "exceeds this server's limit" in error
    assert endpoint == "get_action"
    assert requests_count(samples, "get_action", "error") == 1
    assert requests_count(samples, "other", "error") == 0


def test_a_request_whose_endpoint_cannot_be_read_is_counted_as_undecoded():
    """Not valid msgpack, and an oversized request whose map puts a megabyte before its endpoint: the server does not
    decode either to find a name, and counts them apart from the unknown endpoint names of `other`."""
    late_endpoint = {"data": large_get_action(int(1.5 * MIB))["data"], "endpoint": "get_action"}
    with running_server(NapPolicy(), metrics_port=0, max_message_bytes=MIB) as server:
        sock = dealer(server.port)
        try:
            replies = []
            for payload in (b"\xc1 not msgpack", codec.encode(late_endpoint)):
                sock.send_multipart([b"", payload])
                replies.append(error_of(sock.recv_multipart()[1:]))
        finally:
            sock.close()
        samples = scrape_settled(server, 2)
    assert [endpoint for _error, endpoint in replies] == ["undecoded", "undecoded"]
    assert requests_count(samples, "undecoded", "error") == 2
    assert requests_count(samples, "other", "error") == 0


def test_a_client_naming_the_endpoint_undecoded_is_counted_as_other():
    """A well-formed request for the unknown endpoint "undecoded", decoded or refused before decoding with its name
    read, was counted in the series of requests whose name could not be read: any client could write to it."""
    oversized = {"endpoint": "undecoded", "data": large_get_action(int(1.5 * MIB))["data"]}
    with running_server(NapPolicy(), metrics_port=0, max_message_bytes=MIB) as server:
        sock = dealer(server.port)
        try:
            errors = []
            for payload in (codec.encode({"endpoint": "undecoded", "data": {}}), codec.encode(oversized)):
                sock.send_multipart([b"", payload])
                errors.append(error_of(sock.recv_multipart()[1:])[0])
        finally:
            sock.close()
        samples = scrape_settled(server, 2)
    assert "Unknown endpoint: undecoded" in errors[0]
    assert "exceeds this server's limit" in errors[1]
    assert requests_count(samples, "other", "error") == 2
    assert requests_count(samples, "undecoded", "error") == 0
