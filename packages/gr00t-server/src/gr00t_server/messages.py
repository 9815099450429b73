"""Server-side messages: frames -> Request (routing, envelope, auth) and replies -> frames, in both wire formats."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import zmq

from gr00t_client import codec
from gr00t_client.client import ERROR_MARKER


class RequestError(Exception):
    """A request that cannot be served; the message goes back to the client."""


@dataclass
class Request:
    """One decoded request and where its reply goes."""

    routing: List[Any]
    multipart: bool
    endpoint: str
    data: Any
    session: str
    peer: Optional[str]
    received_at: float
    decode_ms: float
    timing: Dict[str, float] = field(default_factory=dict)


def split_routing(frames: List[Any]) -> Tuple[List[Any], List[Any]]:
    """ROUTER frames -> (routing frames for the reply, payload frames); REQ peers put an empty delimiter between."""
    split = next((i for i, frame in enumerate(frames) if len(frame) == 0), None)
    if split is None:  # not from a REQ socket: route back by identity alone
        return frames[:1], frames[1:]
    return frames[: split + 1], frames[split + 1 :]


def peer_address(payload: List[Any]) -> Optional[str]:
    """The sender's IP address as ZeroMQ reports it (None for non-TCP transports)."""
    try:
        return payload[0].get("Peer-Address") if payload else None
    except (zmq.ZMQError, AttributeError):
        return None


def decode_payload(payload: List[Any], max_message_bytes: int) -> Tuple[Any, bool]:
    """Payload frames -> (envelope, is_multipart); RequestError or WireDecodeError on anything malformed."""
    if not payload:
        raise RequestError("empty message: expected a msgpack request map")
    # ZMQ_MAXMSGSIZE bounds each frame (a frame over it is dropped with its connection, unanswered); a multipart
    # message must respect the cap as a whole too, and that we can answer.
    total_bytes = sum(len(frame) for frame in payload)
    if total_bytes > max_message_bytes:
        raise RequestError(
            f"message of {total_bytes} bytes exceeds this server's limit of {max_message_bytes} bytes "
            "(max_message_bytes); it was not decoded. Send smaller or fewer images, or start the server with a "
            "larger --max-message-mb"
        )
    if codec.is_multipart(payload):
        return codec.decode_multipart(payload), True
    if len(payload) == 1:
        return codec.decode(payload[0].buffer), False
    raise RequestError(f"message has {len(payload)} frames but no multipart header; expected 1 frame")


def check_envelope(envelope: Any, api_token: Optional[str]) -> Dict[str, Any]:
    """Validate the request map (str keys, str endpoint) and the API token, compared in constant time."""
    if not isinstance(envelope, dict):
        raise RequestError(f"request must be a map with 'endpoint' and 'data', got {type(envelope).__name__}")
    envelope = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in envelope.items()}
    endpoint = envelope.get("endpoint", "get_action")
    if not isinstance(endpoint, str):
        raise RequestError(f"'endpoint' must be a str, got {type(endpoint).__name__}")
    if api_token is not None:
        token = envelope.get("api_token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), api_token.encode()):
            raise RequestError("Unauthorized: Invalid API token")
    return envelope


def encode_reply(request: Request, body: Any, ok: bool) -> List[Any]:
    """A result or error in the format the request came in (our errors carry ERROR_MARKER in the reference format)."""
    if request.multipart:
        header = {"ok": True, "result": body} if ok else {"ok": False, "error": body, "endpoint": request.endpoint}
        return codec.encode_multipart(header)
    if ok:
        return [codec.encode(body)]
    return [codec.encode({"error": body, ERROR_MARKER: True, "endpoint": request.endpoint})]


def encode_timed_reply(request: Request, action: Any, info: Dict[str, Any], timing: Dict[str, Any], started: float) -> List[Any]:
    """Encode [action, info] with server_timing.encode_ms in info.

    The action is packed first and timed; info (a few small values) is packed after, so encode_ms covers the
    action payload but not the info map that carries it. The parts are joined without re-encoding.
    """
    buffers: List[Any] = []
    action_part = codec.pack_multipart_header(action, buffers) if request.multipart else codec.encode(action)
    info = dict(info)
    info["server_timing"] = dict(timing, encode_ms=(time.monotonic() - started) * 1000.0)
    if not request.multipart:
        return [codec.join_packed_array([action_part, codec.encode(info)])]
    result = codec.join_packed_array([action_part, codec.pack_multipart_header(info, buffers)])
    return [codec.MULTIPART_MAGIC, codec.join_packed_map({"ok": codec.encode(True), "result": result}), *buffers]
