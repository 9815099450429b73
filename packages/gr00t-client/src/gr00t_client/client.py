"""PolicyClient: a BasePolicy that runs on a remote GR00T policy server, with timeouts that really work.

Its connection, what it learns about the server and its messages are in client_connection.py, client_server_facts.py
and client_messages.py; its errors, argument checks and envelope field names are importable from here as well.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import zmq

from . import codec, curve, host_lookup
from .client_connection import ClientConnection
from .client_errors import (SHUTTING_DOWN, ClientClosedError, DeadlineNotRunError, ForkedSessionError,
                            MessageTooLargeError, PolicyServerError, PolicyTimeoutError, ReplyLostError,
                            ServerBusyError, ServerStoppingError, UpstreamFailedError)
from .client_messages import (ERROR_MARKER, OPTIONS_NOT_APPLIED_FIELD, PROTOCOL_VERSION, SESSION_CONTINUES_FIELD,
                              TIMEOUT_FIELD, TIMING_OPTION, UPSTREAM_CHANGES_FIELD, ClientMessages)
from .client_options import (DEFAULT_MAX_REPLY_BYTES, MAX_REPLY_BYTES_LIMIT, MAX_TIMEOUT_MS, check_api_token,
                             check_flag, check_host, check_max_reply_bytes, check_timeout_ms, endpoint_host,
                             is_ipv6_literal, normalize_host)
from .client_server_facts import ServerFacts
from .client_sockets import _NOBLOCK, _PROCESS_CONTEXT, _recv_frames, _ReplyOverCap, _ReplyWatch, send_frames
from .flat import is_flat_action, is_flat_observation, validate_flat_action, validate_flat_observation
from .modality import ModalityConfig
from .peer_text import shown_key
from .policy import (ActionError, BasePolicy, ObservationError, first_non_finite, non_finite_rows, validate_action,
                     validate_observation)

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "ERROR_MARKER",
    "MAX_TIMEOUT_MS",
    "PROTOCOL_VERSION",
    "SESSION_CONTINUES_FIELD",
    "SHUTTING_DOWN",
    "TIMEOUT_FIELD",
    "TIMING_OPTION",
    "ClientClosedError",
    "DeadlineNotRunError",
    "ForkedSessionError",
    "MessageTooLargeError",
    "PolicyClient",
    "PolicyServerError",
    "PolicyTimeoutError",
    "ReplyLostError",
    "ServerBusyError",
    "ServerStoppingError",
    "UpstreamFailedError",
    "endpoint_host",
    "is_ipv6_literal",
    "normalize_host",
    "send_frames",
]

logger = logging.getLogger(__name__)

_LEAST_SECOND_PING_MS = 10  # a lost ping with less of its budget left is not sent again (a loopback ping: 1-2 ms)
_UNCAPPED_DECODE = codec.DecodeLimits(max_message_bytes=MAX_REPLY_BYTES_LIMIT)  # item budget and depth still hold


def _in_neither_form(observation: Any) -> bool:
    """An observation in neither the nested form (`video`, `state`, `language` maps) nor the flat one (`video.<k>`
    keys): an empty one (a replay's) or a mistake, judged by what the server says its policy takes."""
    nested = isinstance(observation, Mapping) and any(group in observation for group in ("video", "state", "language"))
    return not nested and not is_flat_observation(observation)


class PolicyClient(ClientConnection, ServerFacts, ClientMessages, BasePolicy):
    """Talks to a GR00T policy server (ours or the reference) over ZeroMQ REQ.

    Every call honours `timeout_ms`. On a timeout the socket is closed with linger 0 and the next call
    uses a fresh one (the ZeroMQ guide's Lazy Pirate pattern), so a late reply never answers a later request.
    One client may be shared by threads: its calls are serialised by a lock (they take turns on the one socket), and
    they share its one server session (a replay's episode cursor): each robot needs a client of its own.
    With `return_server_timing`, each get_action info from a gr00t-server carries `server_timing` (queue wait,
    decode, policy and encode ms, batch size); per call, pass options={"return_server_timing": True} instead.
    `host` may be an IPv6 literal, with or without brackets ("::1", "[::1]"); a "host:port" is refused (ValueError).
    Once a gr00t-server has reported its `max_message_bytes` (`server_max_message_bytes`), a larger request raises
    MessageTooLargeError without being sent, instead of being dropped by the server and timing out.
    A reply frame over `max_reply_bytes` (default 256 MiB; None: no cap) is never read into memory: ZeroMQ drops the
    connection at its header and the call raises ReplyLostError at once. The cap bounds each frame: a reply of many
    frames under it is received whole, then refused undecoded (DecodeLimitError). Replies decode within
    codec.DecodeLimits.
    With `server_public_key` (and `client_secret_key`; paths of zmq.auth certificate files or z85 strings) the
    connection is CURVE-encrypted; a failed handshake raises HandshakeError (a ConnectionError) instead of timing out.
    `server_is_gr00t_server` says whether the server is a gr00t-server; get_action options that another server's policy
    ignores (all but batch_size: seed, noise, denoising_steps, rtc, ...) are warned of once per server, by name, as is
    denoising_steps for a gr00t-server whose get_server_info limits report no max_denoising_steps (an older one ignores
    it), and so are those a gr00t-server relay's info names under `options_not_applied` (its upstream ignores them).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 5555,
        timeout_ms: int = 15000,
        api_token: Optional[str] = None,
        strict: bool = False,
        *,
        session_id: Optional[str] = None,
        wire: str = "auto",
        return_server_timing: bool = False,
        server_public_key: Optional[curve.KeySource] = None,
        client_secret_key: Optional[curve.KeySource] = None,
        max_reply_bytes: Optional[int] = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        super().__init__(strict=check_flag("strict", strict))
        if wire not in ("auto", "reference", "multipart", "npsave"):
            raise ValueError(f"wire must be 'auto', 'reference', 'multipart' or 'npsave', got {wire!r}")
        timeout_ms = check_timeout_ms(timeout_ms)
        if isinstance(port, bool) or not isinstance(port, numbers.Integral) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an int from 1 to 65535, got {port!r}")
        self.host = check_host(host)
        self.port = int(port)
        self.timeout_ms = timeout_ms
        self.max_reply_bytes = check_max_reply_bytes(max_reply_bytes)
        self._reply_limits = (_UNCAPPED_DECODE if self.max_reply_bytes is None
                              else codec.DecodeLimits.for_message_bytes(self.max_reply_bytes))
        self.api_token = check_api_token(api_token)
        # The server refuses any other session_id (an int, bytes, ""): one it ignored would key us by the connection
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ValueError(f"session_id must be a non-empty str (or None for a random one), got {session_id!r:.60}")
        self.session_id = session_id or uuid.uuid4().hex
        self._session_given = bool(session_id)  # a forked child keeps a session id its user chose, not one made here
        # Set once a reset or get_action of this session was answered: later requests say the session continues, so a
        # server that no longer knows it (dropped long ago, or restarted) refuses them instead of starting it afresh.
        self._session_served = False
        # Set in a child forked after this client was served: the child's own session is new, and a policy that keeps
        # sessions must have it reset before its get_action (ForkedSessionError); cleared once one is answered.
        self._forked_session = False
        self._requested_wire = wire  # what _wire returns to when the server's facts are forgotten
        self._forget_server()  # nothing is known yet
        # Times the connection was made anew or given up (a restart, a lost reply): whoever answers since may be
        # another server, maybe with another model. on_new_server's check runs when it has moved.
        self.server_changes = 0
        self._new_server_check: Optional[Callable[["PolicyClient"], None]] = None
        self._checked_server_changes = 0
        self._upstream_changes: Optional[int] = None  # a relay server's UPSTREAM_CHANGES_FIELD, as last seen
        self._host_resolved = False  # the host name has resolved once (_check_host_resolves)
        self._unfinished_lookup: Optional[host_lookup.HostLookup] = None  # its lookup, while slower than a call's budget
        self.return_server_timing = check_flag("return_server_timing", return_server_timing)
        # CURVE encryption (gr00t_client.curve): None for plaintext; an ephemeral key pair when no client key is given.
        self._curve = curve.client_keys(server_public_key, client_secret_key)
        self._pid = os.getpid()  # the process whose ZeroMQ objects these are (see _adopt_after_fork)
        self._context: Optional[zmq.Context] = _PROCESS_CONTEXT.get()  # None once closed
        self._socket: Optional[zmq.Socket] = None
        self._handshake: Optional[_ReplyWatch] = None  # watches the current socket's handshakes and closings
        # Reentrant, so that close() from a signal handler on the thread that is in a call does not wait for itself.
        self._lock = threading.RLock()
        self._lock_owner: Optional[int] = None  # the thread inside a call (set once the lock is held)
        self._awaiting: Optional[str] = None  # the endpoint whose reply the REQ socket awaits (re-entry guard)
        self._closing = threading.Event()  # set by close(); an in-flight call gives up its wait at once
        self._interrupts = 0  # interrupt_calls() so far: a call that began before the last one gives up its wait
        # .active/.deadline: one budget for a whole get_action (negotiation, configs, the call), from its first
        # question; .check_due: a new-server check that call (or one with its own timeout_ms) runs once it lets go of
        # the lock
        self._call = threading.local()

    # --- transport ------------------------------------------------------------------------------

    @property
    def timeout_ms(self) -> int:
        """Each call's budget in milliseconds; checked when set, as in the constructor."""
        return self._timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, value: Any) -> None:
        self._timeout_ms = check_timeout_ms(value)

    def _round_trip(self, envelope: Dict[str, Any], endpoint: str, multipart: bool, deadline: Optional[float] = None) -> Any:
        if self._context is None:  # a question asked on a call's behalf (return_server_timing's) names that call
            raise self._closed_error(endpoint)
        if deadline is None:
            deadline = time.monotonic() + self.timeout_ms / 1000.0
        elif deadline <= time.monotonic():  # spent on earlier questions of this call: nothing sent, the socket kept
            raise self._timeout(endpoint)
        # Our server drops a request whose client has given up instead of running it; other servers ignore the field.
        envelope = {**envelope, TIMEOUT_FIELD: max(1, int((deadline - time.monotonic()) * 1000))}
        if self._server_is_reference:
            self._refuse_number_keys(envelope.get("data"), endpoint)
        encode_one = codec.encode_early_n16 if not multipart and self.speaks_npsave else codec.encode
        try:
            frames: List[Any] = codec.encode_multipart(envelope) if multipart else [encode_one(envelope)]
        except codec.WireEncodeError as exc:  # name the key: the codec knows values, not where they sit
            raise codec.located_encode_error(exc, envelope.get("data"), endpoint, encode_one) from exc
        try:
            self._check_size(frames, endpoint)
        except MessageTooLargeError:
            # The limit is what the server said when last asked: one restarted with a larger limit (as the error
            # advises) was refused for ever, since no request went out to learn it. Ask again, once, then judge.
            if endpoint == "get_server_info":
                raise
            self._forget_server()
            with self._asking_first(endpoint):
                self._negotiate(deadline)
            self._check_size(frames, endpoint)
        if self._awaiting is not None:  # this thread, mid-call, re-entered (a signal handler's call): the REQ socket
            # awaits the outer reply, and a second send would break both calls with low-level ZeroMQ errors
            raise RuntimeError(f"PolicyClient.{endpoint} called while this client awaits the reply to "
                               f"'{self._awaiting}' on the same thread (from a signal handler?); only close() may be "
                               "called there")
        if self._socket is None or self._handshake is None:  # none yet, or half of one (a close interrupted mid-way)
            self._check_host_resolves(deadline, endpoint)
        try:
            if self._socket is None or self._handshake is None:
                self._open_socket()  # made anew: a half one is closed first
            sock, handshake = self._socket, self._handshake
            handshake.expect_reply()
            self._awaiting = endpoint
            try:  # a connected REQ socket queues at once; only a full queue makes us wait
                send_frames(sock, frames, _NOBLOCK)
            except zmq.Again:  # no connection to queue on (yet): one refused by the server's keys is said so
                self._wait(handshake.wait_to_send, deadline, endpoint, sent=False)
                send_frames(sock, frames, 0)
            reply = self._receive_reply(sock, handshake, deadline, endpoint)
            if self._handshake is not None and self._handshake.reconnected():
                # The connection was made anew (the server restarted, or another took its port): this reply is
                # the new server's, and what was learned from the old one is forgotten.
                logger.info("reconnected to %s; asking the server for its facts again", self.address)
                self._forget_server()
                self.server_changes += 1
        except PolicyTimeoutError:  # ReplyLostError too
            self._replace_socket()  # Lazy Pirate: a REQ socket that timed out can never send again
            raise
        except _ReplyOverCap as over:  # the rest of the reply is dropped with the socket, unread
            self._discard_socket()
            raise codec.DecodeLimitError(
                f"reply to '{endpoint}' from the policy server at {self.address} was not read: its first {over.frames} "
                f"frames already hold {over.size} bytes, more than this client's max_reply_bytes of "
                f"{self.max_reply_bytes} bytes; if this server's replies really are that large, pass a larger "
                "max_reply_bytes to PolicyClient, or None for no cap"
            ) from None
        except zmq.ZMQError as exc:
            self._discard_socket()
            raise ConnectionError(f"ZeroMQ error talking to {self.address} ('{endpoint}'): {exc}") from exc
        except BaseException:  # e.g. Ctrl-C mid-wait: the REQ socket still awaits its reply and could never send
            self._discard_socket()
            raise
        finally:
            self._awaiting = None
        try:
            return self._decode_reply(reply, endpoint)
        except codec.DecodeLimitError as exc:  # the codec's words name no endpoint or peer
            raise codec.DecodeLimitError(
                f"reply to '{endpoint}' from the policy server at {self.address} was not decoded: {exc}"
            ) from exc

    def _receive_reply(self, sock: zmq.Socket, handshake: Any, deadline: float, endpoint: str) -> List[Any]:
        """The reply to the request just sent, by `deadline`. The socket correlates replies with requests: a reply to
        an earlier request (re-sent by a server or proxy, or from a server that does not send back the request-id
        routing frame) makes it readable, and libzmq drops it in recv; a blocking recv then waited for ever, past
        timeout_ms."""
        dropped = 0
        while True:
            try:
                if dropped and time.monotonic() >= deadline:  # a socket that kept saying readable: no spin past it
                    raise self._timeout(endpoint, handshake.stage())
                self._wait(handshake.wait_for_reply, deadline, endpoint)
            except PolicyTimeoutError as exc:
                if not dropped or isinstance(exc, ReplyLostError):
                    raise
                raise PolicyTimeoutError(
                    f"{exc}; {dropped} message(s) that came were replies to other requests and were dropped: a ROUTER "
                    "server must send back every routing frame it received (this client's request-id frame too)"
                ) from None
            try:
                return _recv_frames(sock, self.max_reply_bytes, _NOBLOCK)
            except zmq.Again:  # what made the socket readable was dropped as another request's reply
                dropped += 1

    def _deadline(self) -> float:
        """The end of this call's budget, taken once the lock is held (time spent waiting for another thread's call
        is not charged): inside a get_action, the budget its first question started (one budget for all of it)."""
        call = self._call
        if not getattr(call, "active", False):
            return time.monotonic() + self.timeout_ms / 1000.0
        if call.deadline is None:
            call.deadline = time.monotonic() + self.timeout_ms / 1000.0
        return call.deadline

    def call_endpoint(self, endpoint: str, data: Optional[Dict[str, Any]] = None, requires_input: bool = True,
                      timeout_ms: Optional[int] = None) -> Any:
        """Call any endpoint (within `timeout_ms` when given, else self.timeout_ms, which is left as it is);
        raises PolicyTimeoutError, PolicyServerError or ConnectionError."""
        if timeout_ms is not None:
            return self._call_within(check_timeout_ms(timeout_ms), endpoint, data, requires_input)
        watched = endpoint in ("reset", "get_action")
        try:
            with self._locked():
                if self._context is None:  # closed, earlier or by another thread while this call waited for its turn
                    raise self._closed_error(endpoint)
                self._notice_reconnection()
                deadline = getattr(self._call, "own_deadline", None) or self._deadline()  # one budget, negotiation included
                if self._server_is_ours is None and endpoint not in ("ping", "kill"):
                    with self._asking_first(endpoint):
                        asked = self._negotiate(deadline)
                    if endpoint == "get_server_info" and not requires_input and asked is not None:
                        # The negotiation was this very question: its answer, not a second one (a reference server
                        # logs a traceback for each get_server_info it does not know).
                        if isinstance(asked, PolicyServerError):
                            raise asked
                        return asked
                if endpoint == "get_action" and self._forked_session and self.server_keeps_sessions:
                    raise ForkedSessionError(endpoint, self.address, self.session_id)
                multipart = bool(self._server_is_ours) and self._wire in ("auto", "multipart")
                envelope = self._envelope(endpoint, data, requires_input)
                reply = self._round_trip(envelope, endpoint, multipart=multipart, deadline=deadline)
                if watched:
                    self._session_served, self._forked_session = True, False
        except ServerStoppingError:
            raise  # a server going away: nothing to ask it (nor after a timeout or lost connection: no answer came,
            # and a check would wait out another timeout on a dead server; the next answered call checks)
        except (PolicyServerError, codec.WireDecodeError) as exc:  # answered, by a server that may be another now
            if watched:
                self._check_new_server_after(exc)
            raise
        if watched:
            self._check_new_server()
        return reply

    def _call_within(self, budget_ms: int, endpoint: str, data: Optional[Dict[str, Any]], requires_input: bool) -> Any:
        # The budget lives in this thread's call state, never in self.timeout_ms: another thread's call on the
        # shared client keeps its own budget. Taken once the lock is held, like _deadline's.
        def within_budget() -> Any:  # the lock is held: a first call after a fork gets the child's call state
            with self._own_budget(time.monotonic() + budget_ms / 1000.0, budget_ms):
                return self.call_endpoint(endpoint, data, requires_input)

        return self._locked_check_deferred(within_budget)

    def _locked_check_deferred(self, work: Callable[[], Any]) -> Any:
        """`work()` holding the client's lock, one budget for all of it (_deadline); the new-server check it makes due
        runs once the lock is let go, so the check may ask this client from any thread, and what it raises comes
        before work's reply or error. Nested in such a call (a subclass calling back in), the outer one runs it."""
        self._adopt_after_fork()  # first: a forked child's adoption replaces self._call, and with it this state
        call = self._call
        if getattr(call, "active", False):
            with self._locked():
                return work()
        call.check_due = False
        try:
            with self._locked():
                call.active, call.deadline = True, None
                try:
                    return_value = work()
                finally:
                    call.active, call.deadline = False, None
        except Exception as exc:
            if call.check_due:  # answered, by a server that may be another now: what the check raises comes first
                self._check_new_server_after(exc)
            raise
        if call.check_due:
            self._check_new_server()
        return return_value

    @contextlib.contextmanager
    def deadline(self, at: Optional[float]) -> Iterator[None]:
        """This thread's calls inside the block end by `at` (a time.monotonic() time) where it comes before their own
        timeout_ms; None changes nothing. A relay passes its robot's deadline upstream so, answering in time."""
        if at is None:
            yield
            return
        own_deadline = min(at, time.monotonic() + self.timeout_ms / 1000.0)
        with self._own_budget(own_deadline, max(1, int((own_deadline - time.monotonic()) * 1000))):
            yield

    @contextlib.contextmanager
    def _own_budget(self, own_deadline: Optional[float], budget_ms: Optional[int]) -> Iterator[None]:
        """This thread's calls inside the block have the budget `budget_ms`, ending at `own_deadline` (None, None: the
        client's timeout_ms per call); the budget before it is restored after."""
        call = self._call
        saved = getattr(call, "own_deadline", None), getattr(call, "budget_ms", None)
        call.own_deadline, call.budget_ms = own_deadline, budget_ms
        try:
            yield
        finally:
            call.own_deadline, call.budget_ms = saved

    # --- policy API -----------------------------------------------------------------------------

    def ping(self, timeout_ms: Optional[int] = None) -> bool:
        """True when the server answers within `timeout_ms` (default: self.timeout_ms); False when it is down or
        unreachable, or this client is closed. See ping_or_raise for a lost reply."""
        try:
            self.ping_or_raise(timeout_ms)
            return True
        except (PolicyTimeoutError, ConnectionError):
            return False

    def ping_or_raise(self, timeout_ms: Optional[int] = None) -> None:
        """ping(), raising why the server did not answer (PolicyTimeoutError, HandshakeError, ReplyLostError,
        ClientClosedError, PolicyServerError) instead of returning False. A ping whose connection closed under it (a
        restarted server's old connection still being torn down, a forwarder's drop) is sent once more, over a fresh
        connection, within the same budget: that loss says nothing of the server now."""
        started = time.monotonic()
        try:
            self.call_endpoint("ping", requires_input=False, timeout_ms=timeout_ms)
        except ReplyLostError:
            budget_ms = self.timeout_ms if timeout_ms is None else timeout_ms
            remaining_ms = budget_ms - int((time.monotonic() - started) * 1000)
            if remaining_ms < _LEAST_SECOND_PING_MS:
                raise
            logger.debug("the connection to %s closed under a ping; pinging once more", self.address)
            self.call_endpoint("ping", requires_input=False, timeout_ms=remaining_ms)

    def get_server_info(self) -> Dict[str, Any]:
        """Server, protocol and model facts (gr00t-server only)."""
        return self.call_endpoint("get_server_info", requires_input=False)

    def kill_server(self) -> None:
        """Ask the server to shut down: allowed from loopback on a server without a token, from any peer with the
        server's token (loopback too needs it there), or from anyone on a server started with --allow-remote-kill."""
        self.call_endpoint("kill", requires_input=False)

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        """The server policy's modality configs (cached until the connection is made anew: a restarted server's own)."""
        with self._locked():
            self._notice_reconnection()
            if self._modality_config is None:
                self._modality_config = self.call_endpoint("get_modality_config", requires_input=False) or {}
            return self._modality_config

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Reset this client's session on the server; returns the server's info dict."""
        return self.call_endpoint("reset", {"options": options})

    def check_observation(self, observation: Dict[str, Any]) -> None:
        with self._locked():
            self._notice_reconnection()  # a restarted server's configs, not the old one's
            cached = self._modality_config is not None
        try:
            self._check_observation_with_server_facts(observation)
        except ObservationError:
            if not cached:
                raise
            # Refused by configs learned earlier: the server may serve another model now (its restart not yet seen
            # by the socket). Ask once more before refusing, so a fixed server is not refused for ever; the whole
            # decision again, by the new server's facts (a replay now takes the empty observation).
            with self._locked():
                if _in_neither_form(observation):
                    # Judged by the server's kind and form (a replay takes {}): behind a proxy, a server that took
                    # another's place (an upstream one's too) goes unseen, so what it is is asked again as well
                    self._forget_server()
                else:  # the configs alone decide: one request, as before
                    self._modality_config = None
            self._check_observation_with_server_facts(observation)

    def _check_observation_with_server_facts(self, observation: Any) -> None:
        """check_observation by the server's configs, observation form and policy kind, learnt first when unknown."""
        self.get_modality_config()
        self._learn_server_facts()  # after the configs: a reconnection their call saw forgot the facts
        configs = self.get_modality_config()  # kept (no request), unless the facts' call saw a reconnection
        empty = observation is None or (isinstance(observation, Mapping) and not observation)
        if empty and self.server_policy_kind == "replay":
            return  # a replay needs no observation, and its server takes an empty one
        # The flat form (`video.<k>`, `state.<k>`) is what a sim-wrapper server takes; it reports its wrapped
        # policy's nested configs, which hold either form. An observation in neither form is named in the server's.
        flat = is_flat_observation(observation) or (_in_neither_form(observation)
                                                    and self.server_observation_format == "flat")
        validate = validate_flat_observation if flat else validate_observation
        validate(observation, configs)

    def check_action(self, action: Dict[str, Any]) -> None:
        validate = validate_flat_action if is_flat_action(action) else validate_action
        validate(action, self.get_modality_config())

    def _refuse_non_finite(self, action: Any) -> None:
        """A robot must never be handed a NaN: every number of an action from any server (the reference does not check
        its policy's output; ours does, but a replaced get_action may not) must be finite, strict or not: arrays,
        numpy and Python floats, in lists and nested maps too (a reference peer in another language may send lists)."""
        found = first_non_finite(action)
        if found is not None:
            key, value = found
            rows = non_finite_rows(value)
            where = f" in rows {rows}" if rows else ""
            raise ActionError(f"Action key '{shown_key(key)}' from the server at {self.address} has non-finite values "
                              f"(NaN or inf){where}; the action was not used")

    def get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """BasePolicy.get_action within one timeout_ms budget: a first call's questions to the server (its kind, and
        for a strict client its modality config) come out of the same budget as the call itself."""
        self._adopt_after_fork()  # first: a forked child's adoption replaces self._call, and with it this budget
        if getattr(self._call, "active", False):  # nested (a subclass calling back in): the outer budget
            return super().get_action(observation, options)

        def asked() -> Tuple[Dict[str, Any], Dict[str, Any]]:
            with self._asking_first("get_action"):  # its questions (kind, configs) are named with it when they fail
                return super(PolicyClient, self).get_action(observation, options)

        # The lock is held from the first question to the reply: let go in between, another thread's call ran there
        # and this one's budget, started by its first question, ran out before it sent anything.
        return self._locked_check_deferred(asked)

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a dict or None; got {type(options).__name__} {options!r:.60}")
        if self.return_server_timing and self._serves_timing():
            options = {TIMING_OPTION: True, **(options or {})}
        reply = self.call_endpoint("get_action", {"observation": observation, "options": options})
        if options and self._server_is_ours is False:
            self._warn_ignored_options(options)
        if isinstance(reply, Mapping) and not self._server_is_ours:
            # What N1/N1.5's RobotInferenceServer (gr00t/eval/service.py) answers: it handed its policy our whole
            # {observation, options} map as the observation, so even this map is no answer to the request.
            raise codec.WireDecodeError(
                f"get_action reply from {self.address} must be [action, info]; got a map alone, as an N1/N1.5 server "
                "(gr00t/eval/service.py RobotInferenceServer) answers: PolicyClient does not support N1/N1.5 servers "
                "(docs/protocol.md, Compatibility); serve the model with gr00t-server or a newer Isaac-GR00T PolicyServer")
        if not isinstance(reply, (list, tuple)) or len(reply) != 2:
            raise codec.WireDecodeError(f"get_action reply must be [action, info]; got {type(reply).__name__}")
        # Every server's: ours checks its policy's output, but a get_action an operator registered in its place (or
        # an older gr00t-server) may not, and a robot must never be handed a NaN (about 5 us for a LIBERO chunk).
        self._refuse_non_finite(reply[0])
        self._notice_upstream_change(reply[1])
        self._notice_options_not_applied(reply[1])
        if options and self._server_is_ours:  # after a relay's own word on them, which names why more broadly
            self._warn_ignored_options(options)
        return reply[0], reply[1]

    def _notice_options_not_applied(self, info: Any) -> None:
        """A relay's upstream is not a gr00t-server: warn of the options its info names (OPTIONS_NOT_APPLIED_FIELD) as
        a direct connection to that server warns, once per server and name."""
        names = info.get(OPTIONS_NOT_APPLIED_FIELD) if isinstance(info, Mapping) else None
        if isinstance(names, (list, tuple)) and names and all(isinstance(name, str) for name in names):
            self._warn_ignored_options(dict.fromkeys(names), relayed=True)

    def _notice_upstream_change(self, info: Any) -> None:
        """A relay's upstream reconnected (its info's UPSTREAM_CHANGES_FIELD moved): the model behind this server may
        be another, so this counts as a server change (forgotten facts, on_new_server's check), as a restart does."""
        changes = info.get(UPSTREAM_CHANGES_FIELD) if isinstance(info, Mapping) else None
        if not isinstance(changes, int) or isinstance(changes, bool) or changes == self._upstream_changes:
            return
        if self._upstream_changes is not None:
            logger.info("the upstream of the relay at %s reconnected; asking the relay for its facts again", self.address)
            self._forget_server()
            self.server_changes += 1
            self._call.check_due = True  # get_action runs the check once it lets go of the lock
        self._upstream_changes = changes

    # --- lifetime -------------------------------------------------------------------------------

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickle's own words name a ZeroMQ handle ("self.handle cannot be converted"): what a spawn-started worker
        # (macOS and Windows' default, AsyncVectorEnv(context="spawn")) or a Ray task is handed a client shows
        raise TypeError(f"a PolicyClient cannot be pickled (it holds a ZeroMQ socket to {self.address}): make one in "
                        "each process that calls the server, from the same host, port and options (a forked child may "
                        "use its parent's)")

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: never hang or raise
            pass
