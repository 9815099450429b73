"""PolicyClient: a BasePolicy that runs on a remote GR00T policy server, with timeouts that really work."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import numbers
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import zmq

from . import codec, curve
from .flat import is_flat_action, is_flat_observation, validate_flat_action, validate_flat_observation
from .modality import ModalityConfig
from .policy import (ActionError, BasePolicy, ObservationError, first_non_finite, non_finite_rows, validate_action,
                     validate_observation)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
ERROR_MARKER = "__gr00t_error__"
TIMING_OPTION = "return_server_timing"
TIMEOUT_FIELD = "timeout_ms"  # envelope field: the client's remaining budget; gr00t-server drops the request after it
CLOSE_POLL_MS = 50  # an in-flight call notices close() from another thread within this long


class PolicyServerError(RuntimeError):
    """The server answered with an error; the message is the server's."""

    def __init__(self, message: str, endpoint: Optional[str] = None) -> None:
        super().__init__(f"Server error: {message}")
        self.server_message = message
        self.endpoint = endpoint

    def __reduce__(self):  # pickled (a Ray task's error) with the server's own words: "Server error: " once
        return (type(self), (self.server_message, self.endpoint))


SESSION_CONTINUES_FIELD = "session_continues"  # see _session_served (gr00t_server.serving.messages reads it)
SHUTTING_DOWN = "server is shutting down"  # how our server's answers begin once it is stopping (ServerStoppingError)
NOT_RUN_FOR_DEADLINE = "was not run: the client's deadline"  # our server's refusal of a request out of time


class ServerStoppingError(PolicyServerError, ConnectionError):
    """The server answered that it is shutting down: the request was not run (or not finished), and later requests
    will find no server. An evaluation stops here rather than score the request's episode and time out on the next.
    A ConnectionError too, as the connection is as good as gone."""


def server_error(message: str, endpoint: Optional[str]) -> PolicyServerError:
    """The error for a server's error reply: ServerStoppingError when the server says it is shutting down,
    DeadlineNotRunError when it did not run the request for want of time."""
    if message.startswith(SHUTTING_DOWN):
        return ServerStoppingError(message, endpoint)
    if NOT_RUN_FOR_DEADLINE in message:
        return DeadlineNotRunError(message, endpoint)
    return PolicyServerError(message, endpoint)


class MessageTooLargeError(PolicyServerError):
    """A request larger than the server's `max_message_bytes`; it was not sent, and the client stays usable.

    A PolicyServerError because the server would refuse it as well (a frame over the limit is dropped there
    unanswered, so without this check the caller would only see a timeout).
    """

    def __init__(self, endpoint: str, size: int, limit: int) -> None:
        message = (
            f"request '{endpoint}' of {size} bytes exceeds this server's limit of {limit} bytes (max_message_bytes), "
            "so it was not sent; send smaller or fewer images, or start the server with a larger --max-message-mb"
        )
        super().__init__(message, endpoint)
        self.args = (message,)  # the client's words, not the server's: no "Server error:" prefix
        self.size = size
        self.limit = limit

    def __reduce__(self):  # pickled (a Ray task's error) as made: PolicyServerError's would call this with its args
        return (type(self), (self.endpoint, self.size, self.limit))


class PolicyTimeoutError(TimeoutError):
    """The server did not answer within timeout_ms; the client's socket was replaced (the new one connects at once)."""


class DeadlineNotRunError(PolicyServerError, PolicyTimeoutError):
    """The server did not run the request: the client's deadline had passed, or was nearer than a policy call takes,
    when its turn came. A PolicyTimeoutError too, so that a loop that holds position on a timeout does so here."""


class ReplyLostError(PolicyTimeoutError):
    """The connection closed while a reply was awaited, so none can come: raised at once instead of after timeout_ms.

    A PolicyTimeoutError, as these cases were before, so that code that handles timeouts handles it too.
    """


MAX_TIMEOUT_MS = 2**31 - 1  # ZeroMQ's poll timeout is a C int of milliseconds (about 24.8 days)
# gr00t-server's default max_message_bytes: a request may be this large, and replies (action chunks of KBs to a few
# MB, configs, info) never come near it; a robot can afford it, unlike the GBs a wrong or hostile peer could send.
DEFAULT_MAX_REPLY_BYTES = 256 * 1024 * 1024
MAX_REPLY_BYTES_LIMIT = 2**63 - 1  # ZMQ_MAXMSGSIZE is an int64
_UNCAPPED_DECODE = codec.DecodeLimits(max_message_bytes=MAX_REPLY_BYTES_LIMIT)  # item budget and depth still hold


def check_timeout_ms(value: Any) -> int:
    """`value` as a PolicyClient timeout in whole milliseconds; ValueError naming it unless it is a number from 1 to
    MAX_TIMEOUT_MS (bool is an int, NaN fails every comparison, inf has no int(): each is refused, naming itself)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 1 <= value <= MAX_TIMEOUT_MS:
        raise ValueError(f"timeout_ms must be a number of milliseconds from 1 to {MAX_TIMEOUT_MS}, got {value!r}")
    return int(value)


def check_max_reply_bytes(value: Any) -> Optional[int]:
    """`value` as PolicyClient's reply cap in bytes (None: no cap); ValueError naming it unless it is a whole number
    of bytes from 1 to 2**63 - 1 (as gr00t-server checks its max_message_bytes) or None."""
    if value is None:
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy numbers too
    whole = number and (isinstance(value, numbers.Integral) or (math.isfinite(value) and value == int(value)))
    if not (whole and 1 <= value <= MAX_REPLY_BYTES_LIMIT):
        raise ValueError(
            f"max_reply_bytes must be a whole number of bytes from 1 to {MAX_REPLY_BYTES_LIMIT}, or None for no cap, "
            f"got {value!r}"
        )
    return int(value)


def normalize_host(host: str) -> str:
    """The host without the brackets an IPv6 literal may be written in: '[::1]' -> '::1'."""
    if isinstance(host, str) and host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def is_ipv6_literal(host: str) -> bool:
    """True for an IPv6 address such as '::1', '[::1]' or 'fe80::1%eth0'; not for a name, an IPv4 address or a
    'host:port'."""
    try:
        ipaddress.IPv6Address(str(normalize_host(host)))
    except ValueError:
        return False
    return True


def check_host(host: Any) -> str:
    """`host` as PolicyClient connects to it (an IPv6 literal without brackets); ValueError unless it is a non-empty
    name or IP address. A colon outside an IPv6 literal is a ':port', which ZeroMQ would retry in silence."""
    bare = normalize_host(host) if isinstance(host, str) else None
    if not bare:
        raise ValueError(f"host must be a non-empty str (a name or an IP address), got {host!r}")
    if ":" in bare and not is_ipv6_literal(bare):
        name, _, port = bare.rpartition(":")
        example = f" (host={name!r}, port={port})" if port.isdigit() else ""
        raise ValueError(f"host {host!r} is not a host name or an IP address: it holds a ':port' (or is a malformed "
                         f"IPv6 address); pass the host alone and the port as port={example}")
    return bare


def endpoint_host(host: str) -> str:
    """The host as a tcp:// endpoint spells it: IPv6 literals in brackets ('[::1]'), others unchanged."""
    bare = normalize_host(host)
    return f"[{bare}]" if is_ipv6_literal(bare) else bare


def _nbytes(frames: List[Any]) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


class _ProcessContext:
    """The ZeroMQ context every PolicyClient of this process shares (made afresh in a forked child).

    A context per client cost 2 native threads and about 9 file descriptors each, and a context's first socket
    starts its I/O thread: out of descriptors there, libzmq aborts the process (SIGABRT, no Python error), as it
    did at the 114th live client under the common 1024-descriptor limit. With one context, an out-of-descriptors
    socket is refused (a ConnectionError naming it) and the process lives. Clients close their own sockets; the
    context stays for the process's life."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: Optional[zmq.Context] = None
        self._pid: Optional[int] = None
        if hasattr(os, "register_at_fork"):  # a parent thread may hold the lock at the fork
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._context, self._pid = None, None

    def get(self) -> zmq.Context:
        """This process's context (a parent's does not survive a fork: the child's first call spun for ever)."""
        with self._lock:
            if self._context is None or self._context.closed or self._pid != os.getpid():
                context = zmq.Context()
                # ZeroMQ's default of 1023 sockets a context was one per client; a client holds 3 (its REQ socket and
                # its handshake monitor's two): at the default, the 342nd live client was refused "Too many open
                # files" under any descriptor limit. The descriptor limit is what bounds them now.
                context.set(zmq.MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT))
                self._context, self._pid = context, os.getpid()
            return self._context


_PROCESS_CONTEXT = _ProcessContext()
_SNDMORE = int(zmq.SNDMORE)  # plain ints: pyzmq's send_multipart does enum.Flag arithmetic per frame
_NOBLOCK = int(zmq.NOBLOCK)


# pyzmq's Socket.send without the wrapper around it (routing_id and group, unused here): called positionally it
# costs a third of the wrapper's copy=False call (0.35-0.6 us against 2 us a frame, measured), which a small frame
# pays and gains nothing from, since pyzmq copies a frame under the socket's copy_threshold anyway.
_SEND = zmq.backend.Socket.send


def send_frames(sock: zmq.Socket, frames: List[Any], flags: int = 0) -> None:
    """send_multipart(frames, flags, copy=False) without its per-frame overhead: frames under the socket's
    copy_threshold are copied (as pyzmq would), larger ones sent without a copy. A message is queued whole or not
    at all, so only the first frame can raise zmq.Again. Frames are bytes, 1-d byte memoryviews or zmq.Frame."""
    threshold = sock.copy_threshold
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        size = frame.nbytes if type(frame) is memoryview else len(frame)
        _SEND(sock, frame, flags | _SNDMORE if index < last else flags, size < threshold)


class _ReplyWatch(curve.HandshakeMonitor):
    """The handshake monitor, also noting an established connection that closes while a reply is awaited: a REQ
    socket never resends, so that request's reply cannot come (the reply was over ZMQ_MAXMSGSIZE, or the server
    stopped, restarted or dropped the request)."""

    _dropped = False

    def expect_reply(self) -> None:
        """Called just before a request is sent: closings seen from now on lose its reply; earlier ones did not."""
        if self._monitor.get(zmq.EVENTS) & curve.MONITOR_READABLE:
            self._drain()
        self._dropped = False

    def dropped(self) -> bool:
        """True once an established connection closed since expect_reply()."""
        return self._dropped

    def _record(self, event: int, value: int) -> None:
        # settled with no failure: the last handshake succeeded (a closing mid-handshake is the parent's to judge)
        if event == zmq.EVENT_DISCONNECTED and self._handshake_settled and self._failure is None:
            self._dropped = True
        super()._record(event, value)


class _ReplyOverCap(Exception):
    """A multipart reply whose frames together pass max_reply_bytes: reading stopped there (the socket is dropped)."""

    def __init__(self, size: int, frames: int) -> None:
        super().__init__(size, frames)
        self.size, self.frames = size, frames


def _recv_frames(sock: zmq.Socket, max_bytes: Optional[int] = None) -> List[Any]:
    """recv_multipart(copy=False), reading Frame.more instead of a RCVMORE getsockopt per frame. With `max_bytes`,
    _ReplyOverCap as soon as the frames read pass it: ZMQ_MAXMSGSIZE bounds each frame, not their sum, so a reply
    of many frames under the cap was otherwise read whole into memory before its size was checked."""
    frame = sock.recv(copy=False)
    frames = [frame]
    size = len(frame)
    while frame.more:
        if max_bytes is not None and size > max_bytes:
            raise _ReplyOverCap(size, len(frames))
        frame = sock.recv(copy=False)
        frames.append(frame)
        size += len(frame)
    return frames


class PolicyClient(BasePolicy):
    """Talks to a GR00T policy server (ours or the reference) over ZeroMQ REQ.

    Every call honours `timeout_ms`. On a timeout the socket is closed with linger 0 and the next call
    uses a fresh one (the ZeroMQ guide's Lazy Pirate pattern), so a late reply never answers a later request.
    One client may be shared by threads: its calls are serialised by a lock (they take turns on the one socket).
    With `return_server_timing`, each get_action info from a gr00t-server carries `server_timing` (queue wait,
    decode, policy and encode ms, batch size); per call, pass options={"return_server_timing": True} instead.
    `host` may be an IPv6 literal, with or without brackets ("::1", "[::1]"); a "host:port" is refused (ValueError).
    Once a gr00t-server has reported its `max_message_bytes` (`server_max_message_bytes`), a larger request raises
    MessageTooLargeError without being sent, instead of being dropped by the server and timing out.
    A reply over `max_reply_bytes` (default 256 MiB; None: no cap) is never read into memory: ZeroMQ drops the
    connection at its header and the call raises ReplyLostError at once. Replies decode within codec.DecodeLimits.
    With `server_public_key` (and `client_secret_key`; paths of zmq.auth certificate files or z85 strings) the
    connection is CURVE-encrypted; a failed handshake raises HandshakeError (a ConnectionError) instead of timing out.
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
        super().__init__(strict=strict)
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
        self.api_token = api_token
        # The server refuses any other session_id (an int, bytes, ""): one it ignored would key us by the connection
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ValueError(f"session_id must be a non-empty str (or None for a random one), got {session_id!r:.60}")
        self.session_id = session_id or uuid.uuid4().hex
        self._session_given = bool(session_id)  # a forked child keeps a session id its user chose, not one made here
        # Set once a reset or get_action of this session was answered: later requests say the session continues, so a
        # server that no longer knows it (dropped long ago, or restarted) refuses them instead of starting it afresh.
        self._session_served = False
        self._requested_wire = wire  # what _wire returns to when the server's facts are forgotten
        self._forget_server()  # nothing is known yet
        # Times the connection was made anew or given up (a restart, a lost reply): whoever answers since may be
        # another server, maybe with another model. on_new_server's check runs when it has moved.
        self.server_changes = 0
        self._new_server_check: Optional[Callable[["PolicyClient"], None]] = None
        self._checked_server_changes = 0
        self._host_resolved = False  # the host name has resolved once (_check_host_resolves)
        self.return_server_timing = bool(return_server_timing)
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
        # .active/.deadline: one budget for a whole get_action (negotiation, configs, the call), from its first question
        self._call = threading.local()

    # --- transport ------------------------------------------------------------------------------

    @property
    def timeout_ms(self) -> int:
        """Each call's budget in milliseconds; checked when set, as in the constructor."""
        return self._timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, value: Any) -> None:
        self._timeout_ms = check_timeout_ms(value)

    @property
    def address(self) -> str:
        """The ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555 or tcp://[::1]:5555."""
        return f"tcp://{endpoint_host(self.host)}:{self.port}"

    def _open_socket(self) -> zmq.Socket:
        """A connected REQ socket (and its monitor)."""
        if self._context is None:
            raise RuntimeError("PolicyClient is closed")
        try:
            sock = self._context.socket(zmq.REQ)
        except zmq.ZMQError as exc:  # e.g. EMFILE: too many open files
            raise ConnectionError(f"cannot open a socket to {self.address}: {exc}") from exc
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Only for literals: with IPV6 on, a name like "localhost" could resolve to ::1 while the server is on 127.0.0.1.
            sock.setsockopt(zmq.IPV6, int(is_ipv6_literal(self.host)))
            sock.copy_threshold = codec.ZERO_COPY_MIN_BYTES
            # libzmq drops a peer at the header of a larger frame, before allocating it (-1: no cap)
            sock.setsockopt(zmq.MAXMSGSIZE, -1 if self.max_reply_bytes is None else self.max_reply_bytes)
            curve.apply_client_keys(sock, self._curve)
            self._handshake = _ReplyWatch(sock, self.address, self._curve)
            sock.connect(self.address)
        except zmq.ZMQError as exc:  # e.g. a malformed host: close the socket and keep to our error types
            if self._handshake is not None:
                self._handshake.close()
                self._handshake = None
            sock.close(linger=0)
            raise ConnectionError(f"cannot connect to {self.address}: {exc}") from exc
        return sock

    def _forget_server(self) -> None:
        """Forget what was learned about the server (kind, wire, message limit, configs): it may have been restarted
        or replaced behind the same address, so the next call asks again instead of trusting stale facts. Also the
        state before the first call."""
        # Even with wire="reference" we ask once whether the server is ours, so that a result map with an
        # "error" key from our server (which marks its errors) is not taken for an error.
        self._server_is_ours: Optional[bool] = True if self._requested_wire == "multipart" else None
        self._wire = self._requested_wire  # "auto" becomes "reference" once a server without multipart is seen
        # True once the server is known to be np.save-era (its replies carry __ndarray_class__ arrays or only the
        # legacy __ModalityConfig_class__ marker): from then on requests use that format, which it can read.
        self.speaks_npsave = self._requested_wire == "npsave"
        # The server's max_message_bytes from get_server_info; None when unknown (reference, older or unasked server).
        self.server_max_message_bytes: Optional[int] = None
        self._modality_config: Optional[Dict[str, ModalityConfig]] = None

    def _discard_socket(self) -> None:
        self._forget_server()  # a broken connection: whoever answers next may be another server
        self.server_changes += 1
        self._close_socket()

    def _close_socket(self) -> None:
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.close()
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close(linger=0)

    def _replace_socket(self) -> None:
        """After a timeout (Lazy Pirate): forget the server's facts (whoever answers next may be another server),
        close the socket and connect its replacement at once, so that the new connection's handshake runs while the
        caller is between calls instead of inside the next call's budget. On a link whose round trip is a third of
        timeout_ms, a handshake, a get_server_info question and the call itself did not fit in one budget: every
        call after one latency spike timed out, for good."""
        self._forget_server()
        self.server_changes += 1
        self._close_socket()
        if self._context is None or self._closing.is_set():
            return
        try:
            self._socket = self._open_socket()
        except ConnectionError as exc:  # e.g. out of file descriptors: the next call tries again, and says why
            logger.debug("could not reconnect to %s at once: %s", self.address, exc)

    def _timeout(self, endpoint: str, stage: Optional[str] = None) -> PolicyTimeoutError:
        """`stage`: what the connection got to (HandshakeMonitor.stage); '' when connected, None when not known."""
        if stage is None:
            why = "is it running and reachable?"
        elif stage:
            why = stage + self._localhost_hint(stage)
        else:
            why = "connected, but no reply came: a policy call slower than the timeout, a hung server or a slow link?"
        return PolicyTimeoutError(
            f"policy server at {endpoint_host(self.host)}:{self.port} did not answer '{endpoint}' within "
            f"{getattr(self._call, 'budget_ms', None) or self.timeout_ms} ms ({why})"
        )

    def _localhost_hint(self, stage: str) -> str:
        if self.host.lower() == "localhost" and "refused" in stage:
            return "; host 'localhost' is connected over IPv4 (127.0.0.1): for a server bound to ::1 pass host='::1'"
        return ""

    def _check_host_resolves(self, deadline: float) -> None:
        """ConnectionError at once for a host name that does not resolve (ZeroMQ would retry it in silence until
        the timeout). Checked until the name has resolved once; a lookup slower than the budget is left to ZeroMQ,
        as is a temporary DNS failure. IP addresses are not looked up; a malformed IPv4 address is refused."""
        if self._host_resolved or is_ipv6_literal(self.host):
            return
        try:
            ipaddress.IPv4Address(self.host)
            self._host_resolved = True
            return
        except ValueError:  # a name, a short form the resolver reads (127.1), or a malformed address (999.1.1.1)
            pass
        outcome: Dict[str, Any] = {}

        def look_up() -> None:
            try:
                outcome["ipv4"] = socket.getaddrinfo(self.host, self.port, socket.AF_INET, socket.SOCK_STREAM)
            except socket.gaierror as exc:
                outcome["error"] = exc
                try:  # a name with IPv6 addresses only: ZeroMQ is not told to use IPv6 for names
                    outcome["ipv6"] = socket.getaddrinfo(self.host, self.port, socket.AF_INET6, socket.SOCK_STREAM)
                except (socket.gaierror, OSError):
                    pass
            except (OSError, UnicodeError) as exc:
                outcome["error"] = exc

        lookup = threading.Thread(target=look_up, name="gr00t-client-resolve", daemon=True)
        lookup.start()
        lookup.join(max(0.0, min(deadline - time.monotonic(), 5.0)))
        if "ipv4" in outcome:
            self._host_resolved = True
            return
        error = outcome.get("error")
        if error is None or getattr(error, "errno", None) == socket.EAI_AGAIN:
            return  # slow or temporarily failing DNS: ZeroMQ keeps trying, and the timeout says so
        if "ipv6" in outcome:
            addresses = sorted({info[4][0] for info in outcome["ipv6"]})
            raise ConnectionError(f"host {self.host!r} has IPv6 addresses only ({', '.join(addresses)}); pass one of "
                                  "them as host to connect over IPv6")
        raise ConnectionError(f"cannot connect to the policy server at {self.address}: host {self.host!r} does not "
                              f"resolve ({error}); check the host name (or IP address)")

    def _reply_lost(self, endpoint: str) -> ReplyLostError:
        cap = self.max_reply_bytes
        too_large = ("" if cap is None else
                     f", or its reply was larger than this client's max_reply_bytes of {cap} bytes (ZeroMQ drops a "
                     "connection at the header of a larger message, unread; if this server's replies really are that "
                     "large, pass a larger max_reply_bytes to PolicyClient, or None for no cap)")
        return ReplyLostError(  # the likely cause first: a server that died (the size cap is the rarer one)
            f"the connection to the policy server at {endpoint_host(self.host)}:{self.port} closed while this client "
            f"waited for its reply to '{endpoint}', so none can come: the server stopped, restarted or dropped the "
            f"request (one over its max message size){too_large}. The next call connects anew."
        )

    def _round_trip(self, envelope: Dict[str, Any], endpoint: str, multipart: bool, deadline: Optional[float] = None) -> Any:
        if deadline is None:
            deadline = time.monotonic() + self.timeout_ms / 1000.0
        elif deadline <= time.monotonic():  # spent on earlier questions of this call: nothing sent, the socket kept
            raise self._timeout(endpoint)
        # Our server drops a request whose client has given up instead of running it; other servers ignore the field.
        envelope = {**envelope, TIMEOUT_FIELD: max(1, int((deadline - time.monotonic()) * 1000))}
        encode_one = codec.encode_early_n16 if not multipart and self.speaks_npsave else codec.encode
        try:
            frames: List[Any] = codec.encode_multipart(envelope) if multipart else [encode_one(envelope)]
        except codec.WireEncodeError as exc:  # name the key: the codec knows values, not where they sit
            where = codec.unencodable_path(envelope.get("data"), encode_one)
            raise codec.WireEncodeError(f"{endpoint}: {where}: {exc}" if where else f"{endpoint}: {exc}") from exc
        try:
            self._check_size(frames, endpoint)
        except MessageTooLargeError:
            # The limit is what the server said when last asked: one restarted with a larger limit (as the error
            # advises) was refused for ever, since no request went out to learn it. Ask again, once, then judge.
            if endpoint == "get_server_info":
                raise
            self._forget_server()
            self._negotiate(deadline)
            self._check_size(frames, endpoint)
        if self._awaiting is not None:  # this thread, mid-call, re-entered (a signal handler's call): the REQ socket
            # awaits the outer reply, and a second send would break both calls with low-level ZeroMQ errors
            raise RuntimeError(f"PolicyClient.{endpoint} called while this client awaits the reply to "
                               f"'{self._awaiting}' on the same thread (from a signal handler?); only close() may be "
                               "called there")
        if self._socket is None:
            self._check_host_resolves(deadline)
            self._socket = self._open_socket()
        sock, handshake = self._socket, self._handshake
        assert handshake is not None  # opened with the socket
        try:
            handshake.expect_reply()
            self._awaiting = endpoint
            try:  # a connected REQ socket queues at once; only a full queue makes us wait
                send_frames(sock, frames, _NOBLOCK)
            except zmq.Again:  # no connection to queue on (yet): one refused by the server's keys is said so
                self._wait(handshake.wait_to_send, deadline, endpoint, sent=False)
                send_frames(sock, frames, 0)
            self._wait(handshake.wait_for_reply, deadline, endpoint)
            reply = _recv_frames(sock, self.max_reply_bytes)
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

    def _decode_reply(self, reply: List[Any], endpoint: str) -> Any:
        """The reply's result, decoded within this client's limits; PolicyServerError for the server's errors."""
        limits = self._reply_limits
        if len(reply) > 1 and self.max_reply_bytes is not None:
            size = _nbytes(reply)  # ZMQ_MAXMSGSIZE bounds each frame, not their sum
            if size > self.max_reply_bytes:
                raise codec.DecodeLimitError(
                    f"its {size} bytes in {len(reply)} frames exceed this client's max_reply_bytes of "
                    f"{self.max_reply_bytes} bytes; if this server's replies really are that large, pass a larger "
                    "max_reply_bytes to PolicyClient, or None for no cap"
                )
        if codec.is_multipart(reply):
            return self._unwrap_multipart(codec.decode_multipart(reply, limits), endpoint)
        if len(reply) != 1:
            raise codec.WireDecodeError(f"reply to '{endpoint}' has {len(reply)} frames; expected 1")
        if len(reply[0]) == 5 and reply[0].bytes == b"ERROR":
            raise PolicyServerError("Make sure we are running the correct policy server.", endpoint)
        if self._server_is_ours:  # ours answers in the format it is asked in: nothing to learn
            return self._unwrap_reference(codec.decode(reply[0].buffer, limits), endpoint)
        try:
            message, written_npsave = codec.decode_noting_npsave(reply[0].buffer, limits)
        except codec.WireDecodeError as exc:  # e.g. a ModalityConfig this client cannot read: still learn the wire
            if getattr(exc, "written_npsave", False) and not self.speaks_npsave:
                self.speaks_npsave = True
            raise
        if written_npsave and not self.speaks_npsave:
            self.speaks_npsave = True
            logger.info("server at %s speaks the np.save-era wire; sending that format from now on", self.address)
        return self._unwrap_reference(message, endpoint)

    def _wait(self, wait: Callable[[int], bool], deadline: float, endpoint: str, sent: bool = True) -> None:
        """Wait (the monitor's wait_to_send or wait_for_reply) until `deadline`; a failed handshake (keys, or
        encryption on one side only) raises HandshakeError, not a timeout; once the request is `sent`, its
        connection closing raises ReplyLostError."""
        assert self._handshake is not None
        while True:  # in slices, so that close() from another thread is noticed within CLOSE_POLL_MS
            if self._closing.is_set():
                raise ConnectionError(f"PolicyClient for {self.address} was closed while waiting for '{endpoint}'")
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if wait(min(remaining_ms, CLOSE_POLL_MS)):
                return
            if sent and self._handshake.dropped():
                raise self._reply_lost(endpoint)
            if remaining_ms <= CLOSE_POLL_MS:
                raise self._handshake.failure() or self._timeout(endpoint, self._handshake.stage())

    def _check_size(self, frames: List[Any], endpoint: str) -> None:
        """Refuse, before sending, a request over the server's limit (a frame over it would get no reply at all)."""
        limit = self.server_max_message_bytes
        if limit is not None:
            size = _nbytes(frames)
            if size > limit:
                raise MessageTooLargeError(endpoint, size, limit)

    def _unwrap_multipart(self, message: Any, endpoint: str) -> Any:
        if not isinstance(message, dict) or "ok" not in message:
            raise codec.WireDecodeError(f"multipart reply to '{endpoint}' lacks the 'ok' field")
        if not message["ok"]:
            raise server_error(str(message.get("error", "unknown error")), endpoint)
        return message.get("result")

    def _unwrap_reference(self, reply: Any, endpoint: str) -> Any:
        if isinstance(reply, dict) and "error" in reply:
            # Our server marks its errors, so a real result with an "error" key passes through intact.
            if reply.get(ERROR_MARKER) or not self._server_is_ours:
                raise server_error(str(reply["error"]), endpoint)
        return reply

    def _negotiate(self, deadline: Optional[float] = None) -> Any:
        """Ask once whether the server is ours (multipart capable); a reference server says 'Unknown endpoint'.
        Returns the get_server_info answer (its reply, or the error reply's PolicyServerError); None when unreadable."""
        envelope = self._envelope("get_server_info", None, requires_input=False)
        try:
            info = self._round_trip(envelope, "get_server_info", multipart=False, deadline=deadline)
        except PolicyServerError as exc:
            if "Unauthorized" in exc.server_message or isinstance(exc, ServerStoppingError):
                raise  # a server going away said nothing about what it is: learnt from the next one
            self._server_is_ours = False
            logger.debug("server at %s is not a gr00t-server (%s); using the reference wire", self.address, exc)
            self._probe_wire_generation(deadline)
            return exc
        except codec.WireDecodeError as exc:
            # A gr00t-server newer than this client (its info carries a modality config field this version does not
            # know) failed every call here, ping aside: the reference wire, which every server answers, still works.
            self._server_is_ours = False
            if self._wire == "auto":
                self._wire = "reference"
            logger.warning("server at %s answered get_server_info with what this client cannot read (%s): a newer "
                           "gr00t-server? Using the reference wire (no multipart, no size check before sending); "
                           "install the gr00t-client of the server's version", self.address, exc)
            return None
        capabilities = info.get("capabilities", []) if isinstance(info, dict) else []
        self._server_is_ours = isinstance(info, dict) and info.get("server") == "gr00t-server"
        if not self._server_is_ours:
            self._probe_wire_generation(deadline)
        if self._wire == "auto" and "multipart" not in capabilities:
            self._wire = "reference"
        limit = info.get("max_message_bytes") if self._server_is_ours else None
        # Older gr00t-servers do not report it; then, as with a reference server, nothing is checked here.
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.server_max_message_bytes = limit
        return info

    def _probe_wire_generation(self, deadline: Optional[float]) -> None:
        """Learn a reference server's wire generation before any array is sent to it.

        Its get_modality_config reply says it: an np.save-era server writes only `__ModalityConfig_class__`
        (seen in _round_trip). Without this, the first get_action would hand such a server's policy
        msgpack-numpy maps instead of arrays. The configs are kept, so get_modality_config() costs nothing later.
        A probe that timed out discarded the socket, and with it what was learnt: the next call asks again.
        """
        if self.speaks_npsave:
            return
        envelope = self._envelope("get_modality_config", None, requires_input=False)
        try:
            configs = self._round_trip(envelope, "get_modality_config", multipart=False, deadline=deadline)
        except PolicyServerError as exc:  # a policy without configs: nothing to learn, the current format it is
            logger.debug("server at %s gave no modality config to probe its wire (%s)", self.address, exc)
            return
        except codec.WireDecodeError as exc:
            # Configs this client cannot read (a newer upstream field): the reply's markers still told the wire
            # (_round_trip), and the caller's own request should not fail for a question it did not ask.
            logger.warning("server at %s sent modality configs this client cannot read (%s); strict validation "
                           "will fail, but calls go on", self.address, exc)
            return
        if isinstance(configs, dict) and configs:
            self._modality_config = configs

    def _envelope(self, endpoint: str, data: Any, requires_input: bool) -> Dict[str, Any]:
        envelope: Dict[str, Any] = {"endpoint": endpoint}
        if requires_input:
            envelope["data"] = data
        if self.api_token:
            envelope["api_token"] = self.api_token
        envelope["session_id"] = self.session_id
        if self._session_served:
            envelope[SESSION_CONTINUES_FIELD] = True
        return envelope

    def _deadline(self) -> float:
        """The end of this call's budget, taken once the lock is held (time spent waiting for another thread's call
        is not charged): inside a get_action, the budget its first question started (one budget for all of it)."""
        call = self._call
        if not getattr(call, "active", False):
            return time.monotonic() + self.timeout_ms / 1000.0
        if call.deadline is None:
            call.deadline = time.monotonic() + self.timeout_ms / 1000.0
        return call.deadline

    def _adopt_after_fork(self) -> None:
        """In a child forked from the process that made this client, start afresh: ZeroMQ objects do not survive a
        fork (the child's first call spun at full CPU for ever, whatever timeout_ms), and a lock a parent thread held
        at that moment stays held. The parent's objects are left alone (pyzmq never closes them from another process),
        so the parent's connection is unaffected; what was learned about the server still holds. The child gets a
        session of its own unless the client was given its session_id."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        closed, closing = self._context is None, self._closing.is_set()
        self._socket, self._handshake = None, None
        self._lock, self._lock_owner, self._awaiting = threading.RLock(), None, None
        self._closing, self._call = threading.Event(), threading.local()
        if closing:
            self._closing.set()
        self._context = None if closed else _PROCESS_CONTEXT.get()
        if not self._session_given:
            # A session of its own: with the parent's id, a stateful server (a replay) kept one cursor for every forked
            # worker, and each worker's reset moved the others' (a worker replayed another's episode, without a word).
            self.session_id, self._session_served = uuid.uuid4().hex, False
        logger.debug("PolicyClient for %s in forked process %d: new ZeroMQ context and socket", self.address, self._pid)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the client's lock for one call; a close() asked for meanwhile from this thread is done on the way out."""
        self._adopt_after_fork()
        with self._lock:
            outer = self._lock_owner
            self._lock_owner = threading.get_ident()
            try:
                yield
            finally:
                self._lock_owner = outer
                if outer is None and self._closing.is_set():  # close() from this thread mid-call left the rest to us
                    self._close_now()

    def _notice_reconnection(self) -> None:
        """Forget the server's facts when the socket has reconnected since they were learned (the server restarted
        while this client was idle, maybe with another model, limit or wire): checked before a call uses them, not
        only after a reply, since a request refused here for stale facts would otherwise never learn the new ones."""
        if self._socket is not None and self._handshake is not None and self._handshake.reconnected():
            logger.info("reconnected to %s; asking the server for its facts again", self.address)
            self._forget_server()
            self.server_changes += 1

    @property
    def new_server_check(self) -> Optional[Callable[["PolicyClient"], None]]:
        """The check on_new_server set (None: none)."""
        return self._new_server_check

    def on_new_server(self, check: Optional[Callable[["PolicyClient"], None]]) -> None:
        """Run `check(client)` after the first reset or get_action answered since the connection was made anew or
        given up (server_changes moved: a restart, maybe with another model behind the same address); what it raises
        is raised from that call, before its reply is used. An answer that is an error reply counts too: what the
        check raises replaces the error (the new server may refuse because it serves another model), and it passing
        lets the error through. gr00t-eval stops a run there when the server now serves another checkpoint. None
        removes the check."""
        with self._locked():
            self._new_server_check = check
            self._checked_server_changes = self.server_changes

    def _check_new_server(self) -> None:
        check = self._new_server_check
        changes = self.server_changes
        if check is None or changes == self._checked_server_changes:
            return
        # With a budget of its own (timeout_ms), not the remains of the get_action it follows: after a reconnection
        # that call already paid for a handshake and a get_server_info, and on a slow link a check in the same budget
        # timed out, replaced the socket and so made the next call check (and time out) again, for ever.
        call = self._call
        active, deadline = getattr(call, "active", False), getattr(call, "deadline", None)
        own = getattr(call, "own_deadline", None), getattr(call, "budget_ms", None)
        call.active, call.deadline, call.own_deadline, call.budget_ms = False, None, None, None
        try:
            check(self)  # raises to the caller; asked again after the next call until it passes
        finally:
            call.active, call.deadline = active, deadline
            call.own_deadline, call.budget_ms = own
        self._checked_server_changes = self.server_changes  # its own reconnection, if any, was checked by it

    def call_endpoint(self, endpoint: str, data: Optional[Dict[str, Any]] = None, requires_input: bool = True,
                      timeout_ms: Optional[int] = None) -> Any:
        """Call any endpoint (within `timeout_ms` when given, else self.timeout_ms, which is left as it is);
        raises PolicyTimeoutError, PolicyServerError or ConnectionError."""
        if timeout_ms is not None:
            return self._call_within(check_timeout_ms(timeout_ms), endpoint, data, requires_input)
        watched = endpoint in ("reset", "get_action")
        try:
            with self._locked():
                self._notice_reconnection()
                deadline = getattr(self._call, "own_deadline", None) or self._deadline()  # one budget, negotiation included
                if self._server_is_ours is None and endpoint not in ("ping", "kill"):
                    asked = self._negotiate(deadline)
                    if endpoint == "get_server_info" and not requires_input and asked is not None:
                        # The negotiation was this very question: its answer, not a second one (a reference server
                        # logs a traceback for each get_server_info it does not know).
                        if isinstance(asked, PolicyServerError):
                            raise asked
                        return asked
                multipart = bool(self._server_is_ours) and self._wire in ("auto", "multipart")
                envelope = self._envelope(endpoint, data, requires_input)
                reply = self._round_trip(envelope, endpoint, multipart=multipart, deadline=deadline)
                if watched:
                    self._session_served = True
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
        with self._locked():
            call = self._call  # read once the lock is held: a first call after a fork gets the child's call state
            saved = getattr(call, "own_deadline", None), getattr(call, "budget_ms", None)
            call.own_deadline, call.budget_ms = time.monotonic() + budget_ms / 1000.0, budget_ms
            try:
                return self.call_endpoint(endpoint, data, requires_input)
            finally:
                call.own_deadline, call.budget_ms = saved

    def _check_new_server_after(self, failure: Exception) -> None:
        """The new-server check after a reset or get_action that a server answered with an error (or with a reply
        this client cannot read): a server restarted with another model refuses what the old one took (an episode
        index past its dataset's, a session it never saw), and that refusal must not pass for the caller's mistake.
        What the check raises is raised instead of `failure`, a server that cannot be asked included (a timeout or
        lost connection: whether it serves the same model is unknown, and the check stays due)."""
        try:
            self._check_new_server()
        except BaseException as check_failed:
            raise check_failed from failure

    # --- policy API -----------------------------------------------------------------------------

    def ping(self, timeout_ms: Optional[int] = None) -> bool:
        """True when the server answers within `timeout_ms` (default: self.timeout_ms); False when it is down or
        unreachable."""
        try:
            self.call_endpoint("ping", requires_input=False, timeout_ms=timeout_ms)
            return True
        except (PolicyTimeoutError, ConnectionError):
            return False

    def get_server_info(self) -> Dict[str, Any]:
        """Server, protocol and model facts (gr00t-server only)."""
        return self.call_endpoint("get_server_info", requires_input=False)

    def kill_server(self) -> None:
        """Ask the server to shut down: allowed from loopback on a server without a token, from any peer with the
        server's token (loopback too needs it there), or from anyone on a server started with --allow-remote-kill."""
        self.call_endpoint("kill", requires_input=False)

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        """The server policy's modality configs (cached after the first call)."""
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
        # The flat form (`video.<k>`, `state.<k>`) is what a sim-wrapper server takes; it reports its wrapped
        # policy's nested configs, which hold either form.
        validate = validate_flat_observation if is_flat_observation(observation) else validate_observation
        try:
            validate(observation, self.get_modality_config())
        except ObservationError:
            if not cached:
                raise
            # Refused by configs learned earlier: the server may serve another model now (its restart not yet seen
            # by the socket). Ask once more before refusing, so a fixed server is not refused for ever.
            with self._locked():
                self._modality_config = None
            validate(observation, self.get_modality_config())

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
            raise ActionError(f"Action key '{key}' from the server at {self.address} has non-finite values (NaN or "
                              f"inf){where}; the action was not used")

    def get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """BasePolicy.get_action within one timeout_ms budget: a first call's questions to the server (its kind, and
        for a strict client its modality config) come out of the same budget as the call itself."""
        call = self._call
        if getattr(call, "active", False):  # nested (a subclass calling back in): the outer budget
            return super().get_action(observation, options)
        call.active, call.deadline = True, None
        try:
            return super().get_action(observation, options)
        finally:
            call.active, call.deadline = False, None

    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a dict or None; got {type(options).__name__} {options!r:.60}")
        if self.return_server_timing and self._serves_timing():
            options = {TIMING_OPTION: True, **(options or {})}
        reply = self.call_endpoint("get_action", {"observation": observation, "options": options})
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
        return reply[0], reply[1]

    def _serves_timing(self) -> bool:
        # Only our server understands the option; a reference policy would receive it as an unknown option.
        if self._server_is_ours is None:
            with self._locked():
                if self._server_is_ours is None:
                    self._negotiate(self._deadline())
        return bool(self._server_is_ours)

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket and context without waiting for undelivered messages; safe from any thread, at any
        moment: a call in flight in another thread stops waiting (ConnectionError) within CLOSE_POLL_MS."""
        if getattr(self, "_closing", None) is None:  # __init__ failed before the lock existed
            return
        self._adopt_after_fork()  # a forked child closes its own objects, never the parent's
        self._closing.set()
        with self._lock:  # reentrant: on the thread in a call (a signal handler) it is ours at once
            if self._lock_owner == threading.get_ident():
                # A call on this thread was interrupted mid-way: it sees _closing within CLOSE_POLL_MS and closes
                # on its way out (closing the socket under it here would break it mid-operation).
                return
            self._close_now()

    def _close_now(self) -> None:
        """Close the socket (holding the lock) and let go of the process's shared context; safe to re-enter from a
        signal handler."""
        self._discard_socket()
        self._context = None

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
