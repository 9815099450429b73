"""Reply encoding for JobRunner: an endpoint's result (get_action counted and timed, with server_timing when asked
for) or a failure (bounded error reply, internal errors logged with their traceback, refusals rate-limited) as the
frames sent back to the client."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from gr00t_client import codec
from gr00t_client.client import ERROR_MARKER
from gr00t_client.policy import PolicyValidationError

from .endpoints import RateLimitedLog, UnencodableResultError, error_text, log_text
from .messages import WIRE_N15, Request, RequestError, encode_reply, encode_timed_reply, refuse_unsendable_keys
from .metrics import OTHER_ENDPOINT
from .worker import Reply

if TYPE_CHECKING:
    from .server import PolicyServer

logger = logging.getLogger("gr00t_server.serving.server")  # PolicyServer's log: the split renamed no logger


def unencodable_result_path(request: Request, result: Any) -> str:
    """The key path of the first value in `result` that the reply's encoder refuses ('info.instruction' in a
    get_action pair); '' when none alone is refused. For error messages only: it encodes every leaf."""
    if request.endpoint == "get_action" and isinstance(result, list) and len(result) == 2:
        result = {"action": result[0], "info": result[1]}
    return codec.unencodable_path(result, codec.encode)


class ReplyFrames:
    """Turns a request's result, or its failure, into reply frames (either thread); JobRunner inherits it. It reads
    the server's stats, metrics and endpoint table live."""

    def __init__(self, server: "PolicyServer") -> None:
        self._server = server
        # Per server (a second server in one process starts with a clean slate). Client mistakes: the first of each
        # kind, then 20 per 10 s. A policy failing on every call (CUDA out of memory) logged a traceback per request,
        # gigabytes a day: the first of each kind keeps its traceback, then 5 a minute; the rest are counted.
        self._refusals = RateLimitedLog(logger)
        self._internal_errors = RateLimitedLog(logger, per_window=5, window_s=60.0, level=logging.ERROR)

    def flush_logs(self) -> None:
        """Report the refusals and internal errors counted but not logged (called when the server stops)."""
        self._refusals.flush()
        self._internal_errors.flush()

    def result_frames(
        self, request: Request, result: Any, policy_ms: float, batch_size: int, batch_rows: int,
        policy_started: Optional[float] = None,
    ) -> Reply:
        """Encode an endpoint's result (get_action: counted, timed, with server_timing when asked for); `batch_size`
        counts the requests of its policy call, `batch_rows` the rows the model ran."""
        stats, metrics = self._server.stats, self._server._metrics
        timing: Optional[Dict[str, Any]] = None  # every get_action's stages (metrics); in the reply when asked for
        wants_timing = False
        if request.endpoint == "get_action":  # a replaced one's bare action too: only the reply's timing needs info
            if policy_started is None:
                policy_started = time.monotonic() - policy_ms / 1000.0
            timing = {
                "queue_wait_ms": request.queue_wait_ms(policy_started),
                "decode_ms": request.decode_ms,
                "policy_ms": policy_ms,
                "batch_size": batch_size,
                "batch_rows": batch_rows,
                **request.timing,
            }
            wants_timing = (request.wants_timing and isinstance(result, list) and len(result) == 2  # asked: _route
                            and isinstance(result[1], dict))
        started = time.monotonic()
        try:
            # msgpack packs a tuple map key as an array without complaint: the client could decode none of the reply;
            # nor can a reference client (strict_map_key) one whose maps hold a number key
            str_keys_only = not request.reads_number_keys
            if request.endpoint == "get_action" and isinstance(result, list) and len(result) == 2:
                refuse_unsendable_keys(result[0], "action", str_keys_only)
                if request.wire_format != WIRE_N15:  # an N1/N1.5 client gets the action alone
                    refuse_unsendable_keys(result[1], "info", str_keys_only)
            elif isinstance(result, (dict, list, tuple)):
                refuse_unsendable_keys(result, f"the {request.endpoint} result", str_keys_only)
            if not wants_timing:
                frames = encode_reply(request, result, ok=True)
            else:
                frames = encode_timed_reply(request, result[0], result[1], timing or {}, started)
        except Exception as exc:  # a policy returned what the wire cannot carry: its bug, counted as internal
            where = unencodable_result_path(request, result) if isinstance(exc, codec.WireEncodeError) else ""
            error = UnencodableResultError(f"could not encode the result of '{request.endpoint}': "
                                           + (f"{where}: {exc}" if where else str(exc)))
            error.__cause__ = exc
            policy_started = policy_started if timing is not None else None
            return request, self.error_frames(request, error, policy_started=policy_started, policy_ms=policy_ms)
        # Multipart frames view the policy's own arrays; the socket thread sends them later, by when a policy that
        # reuses its output buffer (ONNX/TensorRT bindings) may have overwritten them. Own the bytes now (a timed
        # reply owns them already, inside its encode_ms).
        frames = [bytes(frame) if isinstance(frame, memoryview) else frame for frame in frames]
        encode_ms = (time.monotonic() - started) * 1000.0
        stats.add("encode_ms_total", encode_ms)
        if timing is not None:
            metrics.observe_stages(dict(timing, encode_ms=encode_ms))
        return request, frames

    def error_frames(
        self, request: Request, exc: BaseException, log: bool = True, policy_started: Optional[float] = None,
        policy_ms: Optional[float] = None,
    ) -> List[Any]:
        """A bounded error reply for `exc`; internal errors are logged with their traceback, refusals rate-limited.
        `policy_started` (and `policy_ms`, else until now): the request's policy call, which ran."""
        stats = self._server.stats
        stats.add("errors")
        if request.endpoint == "get_action" and request.admitted:
            self._observe_unanswered_stages(request, policy_started, policy_ms)
        message, internal = error_text(request.endpoint, exc)
        if request.outcome == "ok":
            request.outcome = "internal_error" if internal else "error"
        # The kinds always logged once are bounded: an unknown endpoint name (a client's choice, even without the
        # token) is "other", so a peer cannot spend the kinds, and with them the lines past the rate limit. Nor is a
        # kind the message, which may name a step or a value and so differ on every failure.
        known = request.endpoint if request.endpoint in self._server._endpoints else OTHER_ENDPOINT
        if internal:
            stats.add("internal_errors")
            self._internal_errors.warning("internal error in %s from %s", log_text(request.endpoint),
                                          request.peer or "local", exc_info=exc, kind=(known, type(exc).__name__))
        elif log:  # client-supplied text is cut and escaped: a name may be megabytes long or forge log lines
            # A bare ValueError/KeyError may be a bug in the policy told to the client as its mistake: the first of
            # each kind shows where it was raised (a refusal the server or the policy's checks word has no traceback).
            worded = isinstance(exc, (RequestError, PolicyValidationError, codec.WireDecodeError))
            self._refusals.warning("request %s from %s refused: %s", log_text(request.endpoint), request.peer or "local",
                                   log_text(message, 300, quoted=False), kind=(known, type(exc).__name__),
                                   first_exc_info=None if worded else exc)
        try:
            return encode_reply(request, message, ok=False)
        except Exception:  # the message itself cannot fail to encode, but never let a reply path raise
            return [codec.encode({"error": "internal error", ERROR_MARKER: True})]

    def _observe_unanswered_stages(
        self, request: Request, policy_started: Optional[float], policy_ms: Optional[float]
    ) -> None:
        """The stages of a get_action the queue took that gets no action: decode and queue_wait (an expired one
        waited until it was dropped: in overload the longest waits are these), and policy when its call ran."""
        now = time.monotonic()
        timing = {"decode_ms": request.decode_ms,
                  "queue_wait_ms": request.queue_wait_ms(now if policy_started is None else policy_started)}
        if policy_started is not None:
            timing["policy_ms"] = (now - policy_started) * 1000.0 if policy_ms is None else policy_ms
        self._server._metrics.observe_stages(timing)
