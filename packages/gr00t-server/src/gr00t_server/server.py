"""PolicyServer: the GR00T ZeroMQ endpoint table behind a ROUTER socket, hard to break, with sessions and batching."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import zmq

from gr00t_client import codec
from gr00t_client.client import ERROR_MARKER, PROTOCOL_VERSION, endpoint_host, is_ipv6_literal, normalize_host
from gr00t_client.policy import BasePolicy

from . import batching
from .messages import (
    Request,
    RequestError,
    check_envelope,
    decode_payload,
    encode_reply,
    encode_timed_reply,
    peer_address,
    split_routing,
)
from .stats import ServerStats

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CLOSE_WAIT_S = 30.0  # how long close() waits for a run() in another thread to stop and close the socket
SESSION_OPTION = "_session_id"
ACTIVE_CLIENT_WINDOW_S = 1.0  # a client that sent get_action this recently is expected to send again
TIMING_OPTION = "return_server_timing"


@dataclass
class Endpoint:
    """A named handler; `requires_input` handlers are called with the request's `data` as keyword arguments."""

    name: str
    handler: Callable[..., Any]
    requires_input: bool = True


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback addresses: 127.0.0.0/8, ::1 (bracketed or not), ::ffff:127.x.x.x."""
    host = normalize_host(host)
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone such as "%eth0"
    except ValueError:  # another host name: we cannot know without resolving it
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _is_loopback(peer: Optional[str]) -> bool:
    return peer is None or is_loopback_host(peer)


class PolicyServer:
    """Serves a BasePolicy over ZeroMQ to any number of REQ clients, ours or the reference's.

    Endpoints: ping, kill, get_action, reset, get_modality_config, get_server_info, plus registered ones.
    Any bad request gets an error reply and the server goes on serving. `host` may be an IPv6 literal ("::1",
    "[::1]"). close() is safe at any moment and from any thread; a closed server never binds again.
    """

    def __init__(
        self,
        policy: BasePolicy,
        host: str = "127.0.0.1",
        port: int = 5555,
        api_token: Optional[str] = None,
        *,
        allow_remote_kill: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_size: int = 1,
        batch_timeout_ms: float = 0.0,
        embodiment_tag: Optional[str] = None,
        poll_interval_ms: int = 100,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {batch_timeout_ms}")
        self.policy = policy
        self.host = normalize_host(host)
        self.port = int(port)
        self.api_token = api_token or None
        self.allow_remote_kill = allow_remote_kill
        self.max_message_bytes = int(max_message_bytes)
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout_ms = float(batch_timeout_ms)
        self.embodiment_tag = embodiment_tag
        self.poll_interval_ms = poll_interval_ms
        self.stats = ServerStats()
        self._endpoints: Dict[str, Endpoint] = {}
        self._context: Optional[zmq.Context] = None
        self._socket: Optional[zmq.Socket] = None
        self._running = False
        self._stop_requested = threading.Event()
        self._run_done = threading.Event()
        self._run_done.set()
        # start(), run()'s entry and exit, and close() change who owns the socket only under this lock.
        self._lifecycle = threading.Lock()
        self._closed = False
        self._serving_thread: Optional[int] = None  # ident of the thread inside run(); it alone uses the socket
        self.bound_endpoint: Optional[str] = None
        self.register_endpoint("ping", self._ping, requires_input=False)
        self.register_endpoint("kill", self._kill, requires_input=False)
        self.register_endpoint("get_action", self._get_action)
        self.register_endpoint("reset", self._reset)
        self.register_endpoint("get_modality_config", self._get_modality_config, requires_input=False)
        self.register_endpoint("get_server_info", self._get_server_info, requires_input=False)
        self._current: Optional[Request] = None
        self._active_clients: Dict[str, float] = {}  # session -> when its last get_action was gathered

    # --- endpoint table -------------------------------------------------------------------------

    def register_endpoint(self, name: str, handler: Callable[..., Any], requires_input: bool = True) -> None:
        """Add or replace an endpoint; `requires_input` handlers get the request's data as keyword arguments."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"endpoint name must be a non-empty str, got {name!r}")
        self._endpoints[name] = Endpoint(name, handler, requires_input)

    @property
    def endpoints(self) -> List[str]:
        return sorted(self._endpoints)

    @property
    def batching_enabled(self) -> bool:
        # A merged call has no single session to pass, so per-session policies are never batched.
        supported = bool(getattr(self.policy, "supports_batching", False)) and not self._policy_uses_sessions
        return self.max_batch_size > 1 and supported

    @property
    def _policy_uses_sessions(self) -> bool:
        policy: Any = self.policy
        seen = set()
        while policy is not None and id(policy) not in seen:  # wrappers chain through `.policy`
            if getattr(policy, "stateful_sessions", False):
                return True
            seen.add(id(policy))
            policy = getattr(policy, "policy", None)
        return False

    def _with_session(self, options: Any, request: Request) -> Any:
        if options is not None and not isinstance(options, dict):
            raise RequestError(f"'options' must be a map or nil, got {type(options).__name__}")
        options = dict(options) if options else {}
        options.pop(TIMING_OPTION, None)
        if self._policy_uses_sessions:
            options[SESSION_OPTION] = request.session
        return options or None

    def _ping(self) -> Dict[str, str]:
        return {"status": "ok", "message": "Server is running"}

    def _kill(self) -> None:
        request = self._current
        authenticated = self.api_token is not None  # the token was already checked for every request
        if not (authenticated or self.allow_remote_kill or _is_loopback(request.peer if request else None)):
            raise RequestError(
                "kill refused: only a loopback peer or a client with the API token may stop this server "
                "(start it with allow_remote_kill=True to allow remote kills)"
            )
        logger.info("kill requested by %s; shutting down", request.peer if request else "local")
        self._running = False

    def _get_action(self, observation: Any = None, options: Any = None) -> List[Any]:
        assert self._current is not None
        action, info = self.policy.get_action(observation, self._with_session(options, self._current))
        return [action, info]

    def _reset(self, options: Any = None) -> Any:
        assert self._current is not None
        return self.policy.reset(self._with_session(options, self._current))

    def _get_modality_config(self) -> Any:
        getter = getattr(self.policy, "get_modality_config", None)
        return getter() if getter else {}

    def _get_server_info(self) -> Dict[str, Any]:
        from . import __version__ as server_version
        from gr00t_client import __version__ as client_version

        try:
            modality = self._get_modality_config()
        except Exception as exc:  # info must answer even when the policy cannot
            modality = {"error": str(exc)}
        return {
            "server": "gr00t-server",
            "protocol_version": PROTOCOL_VERSION,
            "versions": {"gr00t-server": server_version, "gr00t-client": client_version},
            "policy_class": type(self.policy).__name__,
            "embodiment_tag": self.embodiment_tag,
            "modality_configs": modality,
            "capabilities": ["multipart", "sessions", "server_timing"] + (["batching"] if self.batching_enabled else []),
            "endpoints": self.endpoints,
            "max_batch_size": self.max_batch_size if self.batching_enabled else 1,
            "max_message_bytes": self.max_message_bytes,
            "batch_timeout_ms": self.batch_timeout_ms,
            "auth": self.api_token is not None,
            "stats": self.stats.snapshot(),
        }

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> "PolicyServer":
        """Bind the socket (port 0 picks a free port); `run()` serves. RuntimeError once the server is closed."""
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("this PolicyServer is closed; create a new one to serve again")
            self._bind()
        return self

    def _bind(self) -> None:
        if self._socket is not None:
            return
        self._context = zmq.Context()
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)  # let the last replies (e.g. kill's ack) flush
        # A frame over the cap makes ZeroMQ close that peer's connection without a reply or any event that tells it
        # from an ordinary disconnect, so it cannot be logged here; our client checks the size before sending.
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.IPV6, int(is_ipv6_literal(self.host)))
        sock.copy_threshold = codec.ZERO_COPY_MIN_BYTES
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        address = f"tcp://{endpoint_host(self.host)}"
        try:
            if self.port == 0:
                sock.bind_to_random_port(address)
            else:
                sock.bind(f"{address}:{self.port}")
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._context.term()
            self._context = None
            raise OSError(f"cannot bind {address}:{self.port}: {exc}") from exc
        self._socket = sock
        self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.bound_endpoint.rsplit(":", 1)[1])
        logger.info("policy server bound to %s (messages up to %d bytes)", self.bound_endpoint, self.max_message_bytes)

    def _release(self) -> None:
        """Close the socket and context (the caller holds the lock and no run() is using them)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def stop(self) -> None:
        """Ask a running server to stop (thread-safe); `run()` returns within one poll interval.

        A stop() that arrives before `run()` has started its loop is honoured: that run returns at once.
        """
        self._stop_requested.set()

    def close(self) -> None:
        """Stop serving for good and free the port; safe at any moment, from any thread, any number of times.

        A run() in another thread owns the socket, so close() stops it and waits (up to CLOSE_WAIT_S) for it to
        close the socket; a run() that has not started yet returns at once without binding.
        """
        with self._lifecycle:
            self._closed = True
            serving = self._serving_thread
            if serving is None:
                self._release()
                return
            self._stop_requested.set()
        if serving == threading.get_ident():  # called from inside run() (e.g. by a handler): it closes on its way out
            return
        if not self._run_done.wait(timeout=CLOSE_WAIT_S):
            logger.warning("run() did not stop within %.0f s; it will close the socket when it does", CLOSE_WAIT_S)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def run(self) -> None:
        """Serve until kill, stop(), close(), SIGINT or SIGTERM; then close the socket.

        Binds first if start() was not called. After close() it returns at once without binding; while another
        thread is serving it raises RuntimeError.
        """
        with self._lifecycle:
            if self._closed:
                logger.info("run() called on a closed PolicyServer; not serving")
                return
            if self._serving_thread is not None:
                raise RuntimeError("this PolicyServer is already serving in another thread")
            self._bind()
            assert self._socket is not None
            sock = self._socket
            self._serving_thread = threading.get_ident()
            self._running = True
            self._run_done.clear()
        restore: Callable[[], None] = lambda: None
        try:
            restore = self._install_signal_handlers()
            print(f"Server is ready and listening on {self.bound_endpoint}", flush=True)
            while self._running and not self._stop_requested.is_set():
                if sock.poll(self.poll_interval_ms, zmq.POLLIN):
                    self._serve_ready()
        finally:
            restore()
            with self._lifecycle:
                self._running = False
                self._release()
                self._serving_thread = None
                self._stop_requested.clear()  # cleared here, not at start, so an early stop() is never lost
                self._run_done.set()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, _frame: Any) -> None:
            logger.info("received %s; shutting down", signal.Signals(signum).name)
            self._running = False

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in previous.items():
                # None means a handler installed from C, which Python cannot reinstall; the default is closest.
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

        return restore

    # --- request handling -----------------------------------------------------------------------

    def _receive_available(self, limit: int) -> List[Request]:
        assert self._socket is not None
        requests: List[Request] = []
        while len(requests) < limit:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            request = self._parse(frames)
            if request is not None:
                requests.append(request)
        return requests

    def _serve_ready(self) -> None:
        requests = self._receive_available(limit=max(64, self.max_batch_size * 4))
        if not self.batching_enabled:
            for request in requests:
                self._handle(request)
            return
        pending = self._handle_non_batchable(requests)
        if not pending:
            return
        # Gather more get_action requests until their rows fill a batch, the oldest has waited long enough, or
        # every recently active client is already waiting (a REQ client sends nothing until it is answered).
        # A first request from an unknown client says nothing about who else is coming, so it waits the timeout.
        known = self._recent_clients()
        deadline = pending[0].received_at + self.batch_timeout_ms / 1000.0
        while (
            self._running
            and not self._stop_requested.is_set()
            and batching.total_rows(r.data for r in pending) < self.max_batch_size
            and not (known and {r.session for r in pending} == known)
        ):
            remaining_ms = (deadline - time.monotonic()) * 1000.0
            if remaining_ms <= 0 or not self._socket.poll(max(1, int(remaining_ms)), zmq.POLLIN):
                break
            more = self._receive_available(limit=self.max_batch_size - len(pending))
            pending.extend(self._handle_non_batchable(more))
        now = time.monotonic()
        self._active_clients.update((r.session, now) for r in pending)
        self._run_batch(pending)

    def _recent_clients(self) -> Set[str]:
        """Sessions whose get_action was batched recently (and forget the ones gone quiet)."""
        cutoff = time.monotonic() - max(ACTIVE_CLIENT_WINDOW_S, 10 * self.batch_timeout_ms / 1000.0)
        self._active_clients = {s: t for s, t in self._active_clients.items() if t >= cutoff}
        return set(self._active_clients)

    def _handle_non_batchable(self, requests: Sequence[Request]) -> List[Request]:
        batchable: List[Request] = []
        for request in requests:
            if request.endpoint == "get_action" and batching.is_batchable(request.data):
                batchable.append(request)
            else:
                self._handle(request)
        return batchable

    def _parse(self, frames: List[zmq.Frame]) -> Optional[Request]:
        received_at = time.monotonic()
        routing, payload = split_routing(frames)
        identity = frames[0].bytes.hex() if frames else "unknown"
        request = Request(routing, False, "?", None, identity, peer_address(payload), received_at, 0.0)
        self.stats.requests += 1
        try:
            request.multipart = codec.is_multipart(payload)  # so that even a refused message is answered in kind
            envelope, request.multipart = decode_payload(payload, self.max_message_bytes)
            envelope = check_envelope(envelope, self.api_token)
            request.decode_ms = (time.monotonic() - received_at) * 1000.0
            request.endpoint = envelope.get("endpoint", "get_action")
            request.data = envelope.get("data", {}) if "data" in envelope else {}
            session = envelope.get("session_id")
            if isinstance(session, str) and session:
                request.session = session
            return request
        except Exception as exc:
            self._reply_error(request, exc)
            return None

    def _call(self, request: Request) -> Any:
        endpoint = self._endpoints.get(request.endpoint)
        if endpoint is None:
            raise RequestError(f"Unknown endpoint: {request.endpoint} (known endpoints: {', '.join(self.endpoints)})")
        self._current = request
        try:
            if not endpoint.requires_input:
                return endpoint.handler()
            data = request.data
            if data is None:
                data = {}
            if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
                raise RequestError(f"'data' for '{request.endpoint}' must be a map of named arguments, got {type(data).__name__}")
            try:
                return endpoint.handler(**data)
            except TypeError as exc:
                if "argument" in str(exc) and exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                    raise RequestError(f"bad arguments for '{request.endpoint}': {exc}") from exc
                raise
        finally:
            self._current = None

    def _handle(self, request: Request) -> None:
        started = time.monotonic()
        try:
            result = self._call(request)
        except Exception as exc:
            self._reply_error(request, exc)
            return
        policy_ms = (time.monotonic() - started) * 1000.0
        self._reply_result(request, result, policy_ms, 1, policy_started=started)

    def _run_batch(self, requests: List[Request]) -> None:
        for group in batching.group_compatible(requests, self.max_batch_size, key=lambda r: r.data):
            if len(group) == 1:
                self._handle(group[0])
                continue
            self._run_group(group)

    def _run_group(self, group: List[Request]) -> None:
        valid: List[Request] = []
        for request in group:  # validate each client alone so a bad observation fails only its sender
            try:
                observation = request.data.get("observation")
                if getattr(self.policy, "strict", False):
                    self.policy.check_observation(observation)
                valid.append(request)
            except Exception as exc:
                self._reply_error(request, exc)
        if len(valid) <= 1:
            for request in valid:
                self._handle(request)
            return
        started = time.monotonic()
        try:
            merged, rows = batching.merge_observations([r.data["observation"] for r in valid])
            action, info = self.policy.get_action(merged, None)
            parts = batching.split_result(action, info, rows, batching.declared_per_row_info_keys(self.policy))
        except Exception as exc:
            logger.warning("batched get_action of %d requests failed (%s); serving them one by one", len(valid), exc)
            for request in valid:
                self._handle(request)
            return
        policy_ms = (time.monotonic() - started) * 1000.0
        self.stats.record_batch(len(valid))
        for request, (part_action, part_info) in zip(valid, parts):
            self._reply_result(request, [part_action, part_info], policy_ms, len(valid), policy_started=started)

    def _reply_result(
        self, request: Request, result: Any, policy_ms: float, batch_size: int, policy_started: Optional[float] = None
    ) -> None:
        timing: Optional[Dict[str, Any]] = None
        if request.endpoint == "get_action" and isinstance(result, list) and len(result) == 2:
            if batch_size == 1:
                self.stats.record_batch(1)
            options = request.data.get("options") if isinstance(request.data, dict) else None
            if isinstance(options, dict) and options.get(TIMING_OPTION) and isinstance(result[1], dict):
                if policy_started is None:
                    policy_started = time.monotonic() - policy_ms / 1000.0
                queue_ms = (policy_started - request.received_at) * 1000.0 - request.decode_ms
                timing = {
                    "queue_wait_ms": max(0.0, queue_ms),
                    "decode_ms": request.decode_ms,
                    "policy_ms": policy_ms,
                    "batch_size": batch_size,
                }
        started = time.monotonic()
        try:
            if timing is None:
                frames = encode_reply(request, result, ok=True)
            else:
                frames = encode_timed_reply(request, result[0], result[1], timing, started)
        except Exception as exc:
            self._reply_error(request, RequestError(f"could not encode the result of '{request.endpoint}': {exc}"))
            return
        self.stats.encode_ms_total += (time.monotonic() - started) * 1000.0
        self._send(request, frames)

    def _reply_error(self, request: Request, exc: BaseException) -> None:
        self.stats.errors += 1
        try:
            message = str(exc) if isinstance(exc, RequestError) else f"{type(exc).__name__}: {exc}"
        except Exception:  # a policy's exception whose __str__ raises must not stop the loop
            message = f"{type(exc).__name__}: <its message could not be formatted>"
        logger.warning("request '%s' from %s failed: %s", request.endpoint, request.peer or "local", message[:500])
        try:
            frames = encode_reply(request, message, ok=False)
        except Exception:  # the message itself cannot fail to encode, but never let a reply path raise
            frames = [codec.encode({"error": "internal error", ERROR_MARKER: True})]
        self._send(request, frames)

    def _send(self, request: Request, frames: List[Any]) -> None:
        assert self._socket is not None
        try:
            # Copy (no copy=False): multipart frames view the policy's own arrays, and a policy that reuses its
            # output buffer would overwrite them before ZeroMQ's I/O thread has sent them.
            self._socket.send_multipart(list(request.routing) + frames)
        except zmq.ZMQError as exc:  # the peer went away; nothing to answer
            logger.warning("could not send reply to %s: %s", request.peer or "local", exc)
