"""PolicyServer: lifecycle and public API of the GR00T ZeroMQ endpoint table, hard to break, with sessions,
batching, per-request limits, deadlines, and a socket loop the policy cannot block."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from gr00t_client import codec
from gr00t_client.client import ERROR_MARKER, PROTOCOL_VERSION, normalize_host
from gr00t_client.policy import BasePolicy

from . import batching, limits as work_limits
from .endpoints import (
    INLINE_ENDPOINTS,
    Endpoint,
    RateLimitedLog,
    error_text,
    is_loopback_host,
    is_loopback_peer,
)
from .limits import ServerLimits
from .metrics import NullMetrics, ServerMetrics
from .messages import (
    WIRE_MULTIPART,
    WIRE_NPSAVE,
    Request,
    adopt_n15_get_action,
    RequestError,
    check_envelope,
    deadline_of,
    decode_payload,
    encode_reply,
    encode_timed_reply,
    peer_address,
    session_of,
    split_routing,
)
from .sessions import SessionTable, session_dropper
from .stats import ServerStats
from ..curve import CurveServerConfig
from .transport import Transport
from .worker import Job, PolicyWorker, Reply

logger = logging.getLogger(__name__)
_refusals = RateLimitedLog(logger)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Bytes one connection may have waiting for the policy beyond its first request (which is always admitted): a REQ
# client has one request outstanding, so only pipelining (DEALER) peers ever meet this.
DEFAULT_CLIENT_QUEUED_BYTES = 16 * 1024 * 1024
CLOSE_WAIT_S = 30.0  # how long close() waits for a run() in another thread to stop and close the socket
SESSION_OPTION = "_session_id"
ACTIVE_CLIENT_WINDOW_S = 1.0  # a client that sent get_action this recently is expected to send again
TIMING_OPTION = "return_server_timing"
POLICY_STAGE_KEYS = ("preprocess_ms", "model_ms", "postprocess_ms")  # a policy's last_timing keys server_timing carries
RECEIVE_BURST = 64  # messages taken off the socket per loop turn before replies and dispatch get a turn

_is_loopback = is_loopback_peer  # kept for callers of the pre-split module

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "Endpoint", "PolicyServer", "RequestError", "ServerLimits", "is_loopback_host"]


class PolicyServer:
    """Serves a BasePolicy over ZeroMQ to any number of REQ clients, ours or the reference's.

    Endpoints: ping, kill, get_action, reset, get_modality_config, get_server_info, plus registered ones. The
    socket thread (run()) only moves messages and answers ping, kill, get_server_info and get_modality_config
    itself; the policy runs on a worker thread. Any bad request gets a bounded error reply and the server goes on
    serving. `limits` bound the work one request may ask for. close() is safe at any moment and from any thread.
    With `curve_secret_key` (and `authorized_keys`) the socket is a CURVE server (gr00t_server.curve); the token,
    if set, is checked on top.
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
        batch_timeout_ms: float = batching.DEFAULT_BATCH_TIMEOUT_MS,
        embodiment_tag: Optional[str] = None,
        poll_interval_ms: int = 100,
        limits: Optional[ServerLimits] = None,
        shutdown_timeout_s: float = 30.0,
        curve_secret_key: Optional[Any] = None,
        authorized_keys: Optional[Any] = None,
        metrics_port: Optional[int] = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {batch_timeout_ms}")
        self.policy = policy
        self._sessions_of: Optional[Tuple[Any, bool]] = None  # (policy, whether its chain keeps sessions)
        self.host = normalize_host(host)
        self.port = int(port)
        self.api_token = api_token or None
        if authorized_keys is not None and curve_secret_key is None:
            raise ValueError("authorized_keys needs curve_secret_key: client keys are checked in the CURVE handshake")
        # CURVE (gr00t_server.curve): the server's key pair from a NAME.key_secret file or z85 secret, and optionally
        # a directory of client NAME.key files allowed to connect; None serves plaintext.
        self.curve: Optional[CurveServerConfig] = (
            CurveServerConfig.load(curve_secret_key, authorized_keys) if curve_secret_key is not None else None
        )
        self.allow_remote_kill = allow_remote_kill
        self.max_message_bytes = int(max_message_bytes)
        self.max_batch_size = int(max_batch_size)
        self.batch_timeout_ms = float(batch_timeout_ms)
        # Gathering waits for expected clients at most batch_timeout_ms, less as arrivals show (batching.GatherWindow)
        self._window = batching.GatherWindow(self.batch_timeout_ms)
        self._cut_round: Optional[Tuple[float, Set[str]]] = None  # (first arrival, clients missing) of a round cut short
        self.embodiment_tag = embodiment_tag
        self.poll_interval_ms = poll_interval_ms
        self.limits = limits or ServerLimits()
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self.stats = ServerStats()
        # Prometheus /metrics on metrics_port (0: a free port, see metrics_port after start()), bound to `host`.
        self.metrics_port = None if metrics_port is None else int(metrics_port)
        self._metrics: NullMetrics = NullMetrics()
        self.sessions = SessionTable(self.limits.max_sessions, self.limits.session_idle_s)
        self._endpoints: Dict[str, Endpoint] = {}
        self._transport: Optional[Transport] = None
        self._worker: Optional[PolicyWorker] = None
        self._running = False
        self._stop_requested = threading.Event()
        self._run_done = threading.Event()
        self._run_done.set()
        # start(), run()'s entry and exit, and close() change who owns the socket only under this lock.
        self._lifecycle = threading.Lock()
        self._closed = False
        self._serving_thread: Optional[int] = None  # ident of the thread inside run(); it alone uses the socket
        self.bound_endpoint: Optional[str] = None
        self._local = threading.local()  # the request each thread is serving (socket thread, worker)
        self._pending: List[Request] = []  # batchable get_action requests gathered, not yet handed to the worker
        self._queued_bytes: Dict[bytes, int] = {}  # per connection: bytes of requests not yet answered
        self._queued_requests = 0
        self._active_clients: Dict[str, float] = {}  # session -> when its last get_action was gathered
        self.register_endpoint("ping", self._ping, requires_input=False)
        self.register_endpoint("kill", self._kill, requires_input=False)
        self.register_endpoint("get_action", self._get_action)
        self.register_endpoint("reset", self._reset)
        self.register_endpoint("get_modality_config", self._get_modality_config, requires_input=False)
        self.register_endpoint("get_server_info", self._get_server_info, requires_input=False)

    @staticmethod
    def start_server(policy: BasePolicy, port: int, api_token: Optional[str] = None, **kwargs: Any) -> None:
        """Serve `policy` on `port` until kill, Ctrl-C or SIGTERM, then free the port (the reference's entry point).

        Binds 127.0.0.1 unless `host=` says otherwise (the reference binds every interface); other keyword
        arguments go to PolicyServer.
        """
        with PolicyServer(policy, port=port, api_token=api_token, **kwargs) as server:
            server.run()

    # --- endpoint table -------------------------------------------------------------------------

    def register_endpoint(self, name: str, handler: Callable[..., Any], requires_input: bool = True) -> None:
        """Add or replace an endpoint; `requires_input` handlers get the request's data as keyword arguments.

        Registered endpoints run on the policy worker, in arrival order with get_action and reset.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"endpoint name must be a non-empty str, got {name!r}")
        self._endpoints[name] = Endpoint(name, handler, requires_input)

    @property
    def endpoints(self) -> List[str]:
        return sorted(self._endpoints)

    @property
    def _current(self) -> Optional[Request]:
        """The request this thread is serving (handlers read the peer and session from it)."""
        return getattr(self._local, "request", None)

    @_current.setter
    def _current(self, request: Optional[Request]) -> None:
        self._local.request = request

    @property
    def _socket(self) -> Any:
        return self._transport.socket if self._transport is not None else None

    @property
    def _context(self) -> Any:
        return self._transport.context if self._transport is not None else None

    @property
    def batching_enabled(self) -> bool:
        # A merged call has no single session to pass, so per-session policies are never batched.
        supported = bool(getattr(self.policy, "supports_batching", False)) and not self._policy_uses_sessions
        return self.max_batch_size > 1 and supported

    @property
    def _policy_uses_sessions(self) -> bool:
        # Asked 2-3 times per request: the wrapper chain is walked once per policy object (re-walked if replaced).
        cached = self._sessions_of
        if cached is not None and cached[0] is self.policy:
            return cached[1]
        uses = self._walk_for_sessions()
        self._sessions_of = (self.policy, uses)
        return uses

    def _walk_for_sessions(self) -> bool:
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

    # --- built-in endpoints ---------------------------------------------------------------------

    def _ping(self) -> Dict[str, str]:
        return {"status": "ok", "message": "Server is running"}

    def _kill(self) -> None:
        request = self._current
        authenticated = self.api_token is not None  # the token was already checked for every request
        if not (authenticated or self.allow_remote_kill or is_loopback_peer(request.peer if request else None)):
            raise RequestError(
                "kill refused: only a loopback peer or a client with the API token may stop this server "
                "(start it with allow_remote_kill=True to allow remote kills)"
            )
        logger.info("kill requested by %s; shutting down", request.peer if request else "local")
        self._running = False

    def _get_action(self, observation: Any = None, options: Any = None) -> List[Any]:
        request = self._current
        assert request is not None
        action, info = self.policy.get_action(observation, self._with_session(options, request))
        request.timing = self._policy_stages()
        work_limits.check_finite_action(action, observation)
        return [action, info]

    def _policy_stages(self) -> Dict[str, float]:
        """The policy's own stage times of the call this thread just made (Gr00tPolicy's `last_timing`, read
        through wrappers' `.policy`); {} for a policy that reports none."""
        policy: Any = self.policy
        seen = set()
        while policy is not None and id(policy) not in seen:
            stages = getattr(policy, "last_timing", None)
            if isinstance(stages, dict):
                return {k: float(v) for k, v in stages.items() if k in POLICY_STAGE_KEYS and isinstance(v, (int, float))}
            seen.add(id(policy))
            policy = getattr(policy, "policy", None)
        return {}

    def _reset(self, options: Any = None) -> Any:
        request = self._current
        assert request is not None
        return self.policy.reset(self._with_session(options, request))

    def _get_modality_config(self) -> Any:
        getter = getattr(self.policy, "get_modality_config", None)
        return getter() if getter else {}

    def _get_server_info(self) -> Dict[str, Any]:
        from .. import __version__ as server_version
        from gr00t_client import __version__ as client_version

        try:
            modality = self._get_modality_config()
        except Exception as exc:  # info must answer even when the policy cannot
            modality = {"error": error_text("get_modality_config", exc)[0]}
        return {
            "server": "gr00t-server",
            "protocol_version": PROTOCOL_VERSION,
            "versions": {"gr00t-server": server_version, "gr00t-client": client_version},
            "policy_class": type(self.policy).__name__,
            "embodiment_tag": self.embodiment_tag,
            "modality_configs": modality,
            "capabilities": ["multipart", "sessions", "server_timing", "deadlines"]
            + (["batching"] if self.batching_enabled else []),
            "endpoints": self.endpoints,
            "max_batch_size": self.max_batch_size if self.batching_enabled else 1,
            "max_message_bytes": self.max_message_bytes,
            "batch_timeout_ms": self.batch_timeout_ms,
            "limits": work_limits.per_row_summary(self.limits),
            "auth": self.api_token is not None,
            "encryption": "curve" if self.curve is not None else None,
            "policy_busy": bool(self._worker is not None and self._worker.busy),
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
        if self._transport is not None:
            return
        self._transport = Transport(self.host, self.port, self.max_message_bytes, self.curve)
        self.bound_endpoint = self._transport.endpoint
        self.port = self._transport.port
        if self.metrics_port is not None:
            try:
                self._metrics = self._start_metrics(self.metrics_port)
            except BaseException:
                self._release()
                raise
            self.metrics_port = self._metrics.port
        logger.info("policy server bound to %s (messages up to %d bytes)", self.bound_endpoint, self.max_message_bytes)

    def _start_metrics(self, port: int) -> ServerMetrics:
        """This server's Prometheus endpoint on its host (ImportError naming the extra without prometheus_client)."""
        metrics = ServerMetrics(
            endpoints=lambda: self._endpoints,
            queue_depth=lambda: self._queued_requests,
            sessions=lambda: len(self.sessions),
            active_clients=lambda: len(self._active_clients),
        )
        try:
            metrics.serve(self.host, port)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {self.host}:{port}: {exc}") from exc
        return metrics

    def _release(self) -> None:
        """Close the socket and context (the caller holds the lock and no run() is using them)."""
        self._metrics.close()
        self._metrics = NullMetrics()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def stop(self) -> None:
        """Ask a running server to stop (thread-safe); `run()` returns within one poll interval after any running
        policy call. A stop() that arrives before `run()` has started its loop is honoured: that run returns at once.
        """
        self._stop_requested.set()
        transport = self._transport
        if transport is not None:
            transport.wake()

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
            self.stop()
        worker = self._worker
        if serving == threading.get_ident() or (worker is not None and worker.is_current_thread()):
            return  # called from inside run() or by a handler on the worker: run() closes on its way out
        if not self._run_done.wait(timeout=CLOSE_WAIT_S):
            logger.warning("run() did not stop within %.0f s; it will close the socket when it does", CLOSE_WAIT_S)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def run(self) -> None:
        """Serve until kill, stop(), close(), SIGINT or SIGTERM; then close the socket.

        Binds first if start() was not called. After close() it returns at once without binding; while another
        thread is serving it raises RuntimeError. On the way out, a policy call in progress may finish (up to
        shutdown_timeout_s; its reply is sent) and requests still waiting for the policy are answered with an error.
        """
        with self._lifecycle:
            if self._closed:
                logger.info("run() called on a closed PolicyServer; not serving")
                return
            if self._serving_thread is not None:
                raise RuntimeError("this PolicyServer is already serving in another thread")
            self._bind()
            assert self._transport is not None
            transport = self._transport
            self._serving_thread = threading.get_ident()
            self._running = True
            self._run_done.clear()
        restore: Callable[[], None] = lambda: None
        worker = PolicyWorker(self._execute, transport.wake)
        self._worker = worker
        try:
            worker.start()
            restore = self._install_signal_handlers()
            security = transport.security
            suffix = f" ({security.banner()})" if security is not None else ""
            print(f"Server is ready and listening on {self.bound_endpoint}{suffix}", flush=True)
            while self._running and not self._stop_requested.is_set():
                inbound, woken = transport.poll(self._poll_timeout_ms())
                if woken:
                    self._send_replies()
                if inbound:
                    self._receive_burst()
                self._dispatch_pending()
        finally:
            restore()
            self._shut_down_worker(worker)
            with self._lifecycle:
                self._running = False
                self._worker = None
                self._release()
                self._serving_thread = None
                self._stop_requested.clear()  # cleared here, not at start, so an early stop() is never lost
                self._run_done.set()

    def _shut_down_worker(self, worker: PolicyWorker) -> None:
        """Answer the requests that never reached the policy, let a running call finish, send what is done."""
        waiting = [request for job in worker.take_queued() for request in job] + self._pending
        self._pending = []
        for request in waiting:
            self._reply_error(request, RequestError(f"server is shutting down; '{request.endpoint}' was not run"))
        if not worker.stop(self.shutdown_timeout_s):
            logger.warning("a policy call is still running after %.0f s; shutting down without it", self.shutdown_timeout_s)
        self._send_replies()

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

    # --- socket thread: receive, route, gather, send ----------------------------------------------

    def _poll_timeout_ms(self) -> int:
        if not self._pending:
            return self.poll_interval_ms
        wait_s = self._pending[0].received_at + self._window.seconds() - time.monotonic()
        return max(1, min(self.poll_interval_ms, int(wait_s * 1000.0) + 1))

    def _receive_burst(self) -> None:
        assert self._transport is not None
        for _ in range(RECEIVE_BURST):
            if not self._running:  # a kill in this burst
                return
            frames = self._transport.receive()
            if frames is None:
                return
            request = self._parse(frames)
            if request is not None:
                self._route(request)

    def _parse(self, frames: List[Any]) -> Optional[Request]:
        received_at = time.monotonic()
        routing, payload = split_routing(frames)
        identity = frames[0].bytes if frames else b""
        request = Request(routing, False, "?", None, identity.hex() or "unknown", peer_address(payload), received_at, 0.0)
        request.identity = identity
        self.stats.add("requests")
        try:
            request.nbytes = sum(len(frame) for frame in payload)
            request.multipart = codec.is_multipart(payload)  # so that even a refused message is answered in kind
            envelope, request.wire_format = decode_payload(payload, self.max_message_bytes)
            request.multipart = request.wire_format == WIRE_MULTIPART
            envelope = check_envelope(envelope, self.api_token)
            request.decode_ms = (time.monotonic() - received_at) * 1000.0
            request.endpoint = envelope.get("endpoint", "get_action")
            request.data = envelope.get("data", {}) if "data" in envelope else {}
            adopt_n15_get_action(request)
            request.session = session_of(envelope, self.limits.max_session_id_chars) or request.session
            request.deadline = deadline_of(envelope, received_at)
            return request
        except Exception as exc:
            self._reply_error(request, exc)
            return None

    def _route(self, request: Request) -> None:
        """Answer a built-in endpoint now, or queue the request for the worker (gathering batches)."""
        if request.endpoint in INLINE_ENDPOINTS and request.endpoint in self._endpoints:
            self._reply_now(request)
            return
        try:
            if request.endpoint not in self._endpoints:
                raise RequestError(f"Unknown endpoint: {request.endpoint} (known endpoints: {', '.join(self.endpoints)})")
            if request.endpoint == "get_action" and isinstance(request.data, dict):
                work_limits.check_observation(request.data.get("observation"), self.limits)
            self._admit(request)
        except Exception as exc:
            self._reply_error(request, exc)
            return
        if request.endpoint == "get_action" and self.batching_enabled and batching.is_batchable(request.data):
            self._note_straggler(request)
            self._pending.append(request)
            return
        if any(pending.session == request.session for pending in self._pending):
            self._dispatch_pending(force=True)  # keep one session's requests in arrival order
        self._submit([request])

    def _admit(self, request: Request) -> None:
        """Count the request against its connection's byte budget and the queue; refuse it when over."""
        budget = self.limits.max_client_queued_bytes or min(self.max_message_bytes, DEFAULT_CLIENT_QUEUED_BYTES)
        queued = self._queued_bytes.get(request.identity, 0)
        if queued and queued + request.nbytes > budget:
            self.stats.add("refused")
            request.outcome = "refused"
            raise RequestError(
                f"this connection already has {queued} bytes of requests waiting; a further {request.nbytes} bytes "
                f"would exceed its budget of {budget} bytes (wait for the replies)"
            )
        if self._queued_requests >= self.limits.max_queued_requests:
            self.stats.add("refused")
            request.outcome = "refused"
            raise RequestError(f"server busy: {self._queued_requests} requests are waiting for the policy; try again")
        self._queued_bytes[request.identity] = queued + request.nbytes
        self._queued_requests += 1
        request.admitted = True

    def _release_admission(self, request: Request) -> None:
        if not request.admitted:
            return
        request.admitted = False
        self._queued_requests -= 1
        left = self._queued_bytes.get(request.identity, 0) - request.nbytes
        if left > 0:
            self._queued_bytes[request.identity] = left
        else:
            self._queued_bytes.pop(request.identity, None)

    def _submit(self, job: Job) -> None:
        assert self._worker is not None
        self._worker.submit(job)

    def _dispatch_pending(self, force: bool = False) -> None:
        """Hand gathered get_action requests to the worker once a batch is full, or the worker is free and every
        recently active client is already waiting or the oldest has waited the gather window."""
        if not self._pending:
            return
        full = batching.total_rows(r.data for r in self._pending) >= self.max_batch_size
        everyone_waiting = False
        if not (force or full or self._stop_requested.is_set()):
            if self._worker is not None and self._worker.busy:
                return  # the worker is busy: gather more for free
            known = self._recent_clients()
            everyone_waiting = bool(known) and {r.session for r in self._pending} >= known
            waited = time.monotonic() >= self._pending[0].received_at + self._window.seconds()
            if not (everyone_waiting or waited):
                return
            if not everyone_waiting:  # cut short: whoever of `known` comes late tells how wide rounds really are
                self._cut_round = (self._pending[0].received_at, known - {r.session for r in self._pending})
        pending, self._pending = self._pending, []
        if everyone_waiting:  # a whole round: its arrival spread is what the window must cover
            self._window.observe_spread(pending[-1].received_at - pending[0].received_at)
        now = time.monotonic()
        self._active_clients.update((r.session, now) for r in pending)
        for group in batching.group_compatible(pending, self.max_batch_size, key=lambda r: r.data):
            self._submit(group)

    def _note_straggler(self, request: Request) -> None:
        """A request from a client missing from a round cut short: that round's spread reached its arrival."""
        if self._cut_round is None:
            return
        first_arrival, missing = self._cut_round
        if request.session in missing:
            missing.discard(request.session)
            if request.received_at - first_arrival <= self._window.cap_s:
                self._window.observe_spread(request.received_at - first_arrival)
        if not missing or request.received_at - first_arrival > self._window.cap_s:
            self._cut_round = None

    def _recent_clients(self) -> Set[str]:
        """Sessions whose get_action was batched recently (and forget the ones gone quiet)."""
        cutoff = time.monotonic() - max(ACTIVE_CLIENT_WINDOW_S, 10 * self.batch_timeout_ms / 1000.0)
        self._active_clients = {s: t for s, t in self._active_clients.items() if t >= cutoff}
        return set(self._active_clients)

    def _reply_now(self, request: Request) -> None:
        """Serve a built-in endpoint on the socket thread (never touches the policy's compute)."""
        reply = self._serve_one(request)
        if reply is not None:
            self._send(*reply)

    def _send_replies(self) -> None:
        assert self._worker is not None
        while self._worker.outbox:
            request, frames = self._worker.outbox.popleft()
            self._send(request, frames)

    def _send(self, request: Request, frames: List[Any]) -> None:
        self._release_admission(request)
        self._metrics.request_done(request.endpoint, request.outcome)
        if self._transport is not None:
            self._transport.send(request.routing, frames, request.peer)

    def _reply_error(self, request: Request, exc: BaseException) -> None:
        self._send(request, self._error_frames(request, exc))

    # --- worker thread: run the policy ------------------------------------------------------------

    def _execute(self, job: Job) -> List[Reply]:
        """Run one job on the worker: drop expired requests, evict idle sessions, call the policy, encode."""
        replies: List[Reply] = []
        live: List[Request] = []
        now = time.monotonic()
        for request in job:
            if request.expired(now):
                self.stats.add("expired")
                request.outcome = "expired"
                logger.debug("dropped '%s' from %s: its client's deadline passed before it ran", request.endpoint, request.peer)
                replies.append((request, self._error_frames(request, RequestError(
                    f"'{request.endpoint}' was not run: the client's deadline passed while it waited"), log=False)))
            else:
                live.append(request)
        if self._policy_uses_sessions:
            for request in live:
                self._evict_sessions(self.sessions.touch(request.session))
        if len(live) == 1:
            reply = self._serve_one(live[0])
            replies.extend([reply] if reply is not None else [])
        elif live:
            replies.extend(self._run_group(live))
        return replies

    def _evict_sessions(self, evicted: List[str]) -> None:
        drop = session_dropper(self.policy)
        for session in evicted:
            self.stats.add("sessions_evicted")
            if drop is not None:
                try:
                    drop(session)
                except Exception:
                    logger.exception("could not drop evicted session %s", session[:40])

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

    def _serve_one(self, request: Request) -> Optional[Reply]:
        """Call the request's endpoint and encode its reply (or its error)."""
        started = time.monotonic()
        try:
            result = self._call(request)
        except Exception as exc:
            return request, self._error_frames(request, exc)
        policy_ms = (time.monotonic() - started) * 1000.0
        if request.endpoint == "get_action":
            self._window.observe_call(policy_ms / 1000.0)
        return self._result_frames(request, result, policy_ms, 1, policy_started=started)

    def _run_group(self, group: List[Request]) -> List[Reply]:
        replies: List[Reply] = []
        valid: List[Request] = []
        for request in group:  # validate each client alone so a bad observation fails only its sender
            try:
                observation = request.data.get("observation")
                if getattr(self.policy, "strict", False):
                    self.policy.check_observation(observation)
                valid.append(request)
            except Exception as exc:
                replies.append((request, self._error_frames(request, exc)))
        if len(valid) <= 1:
            return replies + [reply for reply in map(self._serve_one, valid) if reply is not None]
        started = time.monotonic()
        try:
            merged, rows = batching.merge_observations([r.data["observation"] for r in valid])
            action, info = self.policy.get_action(merged, None)
            stages = self._policy_stages()
            parts = batching.split_result(action, info, rows, batching.declared_per_row_info_keys(self.policy))
        except Exception as exc:
            logger.warning("batched get_action of %d requests failed (%s); serving them one by one", len(valid), type(exc).__name__)
            return replies + [reply for reply in map(self._serve_one, valid) if reply is not None]
        policy_ms = (time.monotonic() - started) * 1000.0
        self._window.observe_call(policy_ms / 1000.0)
        self.stats.record_batch(len(valid))
        self._metrics.observe_batch(len(valid))
        for request, (part_action, part_info) in zip(valid, parts):
            request.timing = stages
            try:
                work_limits.check_finite_action(part_action, request.data.get("observation"))
            except RequestError as exc:
                replies.append((request, self._error_frames(request, exc)))
                continue
            replies.append(self._result_frames(request, [part_action, part_info], policy_ms, len(valid), policy_started=started))
        return replies

    # --- replies (either thread) -------------------------------------------------------------------

    def _result_frames(
        self, request: Request, result: Any, policy_ms: float, batch_size: int, policy_started: Optional[float] = None
    ) -> Reply:
        timing: Optional[Dict[str, Any]] = None  # every get_action's stages (metrics); in the reply when asked for
        wants_timing = False
        if request.endpoint == "get_action" and isinstance(result, list) and len(result) == 2:
            if batch_size == 1:
                self.stats.record_batch(1)
                self._metrics.observe_batch(1)
            if policy_started is None:
                policy_started = time.monotonic() - policy_ms / 1000.0
            queue_ms = (policy_started - request.received_at) * 1000.0 - request.decode_ms
            timing = {
                "queue_wait_ms": max(0.0, queue_ms),
                "decode_ms": request.decode_ms,
                "policy_ms": policy_ms,
                "batch_size": batch_size,
                **request.timing,
            }
            options = request.data.get("options") if isinstance(request.data, dict) else None
            wants_timing = isinstance(options, dict) and bool(options.get(TIMING_OPTION)) and isinstance(result[1], dict)
        started = time.monotonic()
        try:
            if not wants_timing:
                frames = encode_reply(request, result, ok=True)
            elif request.wire_format == WIRE_NPSAVE:  # np.save-era peers get the timing in info, packed plainly
                info = dict(result[1], server_timing=dict(timing or {}, encode_ms=0.0))
                frames = encode_reply(request, [result[0], info], ok=True)
            else:
                frames = encode_timed_reply(request, result[0], result[1], timing or {}, started)
        except Exception as exc:
            return request, self._error_frames(request, RequestError(f"could not encode the result of '{request.endpoint}': {exc}"))
        # Multipart frames view the policy's own arrays; the socket thread sends them later, by when a policy that
        # reuses its output buffer (ONNX/TensorRT bindings) may have overwritten them. Own the bytes now.
        frames = [bytes(frame) if isinstance(frame, memoryview) else frame for frame in frames]
        encode_ms = (time.monotonic() - started) * 1000.0
        self.stats.add("encode_ms_total", encode_ms)
        if timing is not None:
            self._metrics.observe_stages(dict(timing, encode_ms=encode_ms))
        return request, frames

    def _error_frames(self, request: Request, exc: BaseException, log: bool = True) -> List[Any]:
        self.stats.add("errors")
        message, internal = error_text(request.endpoint, exc)
        if request.outcome == "ok":
            request.outcome = "internal_error" if internal else "error"
        if internal:
            self.stats.add("internal_errors")
            logger.error("internal error in '%s' from %s", request.endpoint, request.peer or "local", exc_info=exc)
        elif log:
            _refusals.warning("request '%s' from %s refused: %s", request.endpoint, request.peer or "local", message[:300])
        try:
            return encode_reply(request, message, ok=False)
        except Exception:  # the message itself cannot fail to encode, but never let a reply path raise
            return [codec.encode({"error": "internal error", ERROR_MARKER: True})]
