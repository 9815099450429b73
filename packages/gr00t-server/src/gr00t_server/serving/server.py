"""PolicyServer: lifecycle and public API of the GR00T ZeroMQ endpoint table, hard to break, with sessions,
batching, per-request limits, deadlines, and a socket loop the policy cannot block."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import signal
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from gr00t_client.client import endpoint_host
from gr00t_client.client_options import MAX_REPLY_BYTES_LIMIT, check_flag, check_host
from gr00t_client.policy import BasePolicy
from gr00t_client.stdout_guard import print_if_writable

from . import batching
from .batching import MAX_BATCH_SIZE
from .builtin_endpoints import BuiltinEndpoints
from .endpoints import Endpoint, endpoint_address, is_loopback_host, is_loopback_peer
# POLICY_STAGE_KEYS, ACTIVE_CLIENT_WINDOW_S, DEFAULT_CLIENT_QUEUED_BYTES, RECEIVE_BURST moved with their code and stay
# importable from here, as before the split.
from .execution import POLICY_STAGE_KEYS, JobRunner  # noqa: F401
from .limits import ServerLimits
from .loop import (  # noqa: F401
    ACTIVE_CLIENT_WINDOW_S,
    DEFAULT_CLIENT_QUEUED_BYTES,
    RECEIVE_BURST,
    InlineCallAbandoned,
    RequestLoop,
)
from .messages import Request, RequestError, token_shape_problem
from .metrics import RESERVED_ENDPOINT_LABELS, NullMetrics, ServerMetrics, reachable_host
from .relay import UpstreamFacts
from .sessions import SessionTable, check_no_shared_replay_session, policy_session_limit
from .stall_clock import StallClock
from .stats import ServerStats
from ..curve import CurveServerConfig
from ..threads import handled_stop_signals
from .transport import Transport
from .worker import DEFAULT_INLINE_BELOW_MS, InlineGate, PolicyWorker
from .wrappers import served_embodiment_tag

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_MESSAGE_BYTES_CAP = MAX_REPLY_BYTES_LIMIT  # ZeroMQ's MAXMSGSIZE is a signed 64-bit count, as the client's cap
CLOSE_WAIT_S = 30.0  # how long close() waits for a run() in another thread to stop and close the socket
INLINE_RELEASE_GRACE_S = 0.5  # beyond shutdown_timeout_s, before close() takes the socket from a call on run()'s thread

_is_loopback = is_loopback_peer  # kept for callers of the pre-split module

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Endpoint",
    "MAX_BATCH_SIZE",
    "PolicyServer",
    "RequestError",
    "ServerLimits",
    "check_server_settings",
    "is_loopback_host",
]

# PolicyServer's numeric settings: (whole number, lowest, highest, what a wrong value is told it must be). A NaN or
# infinite float passes no `lowest <= v <= highest` test: an infinite gather window once crashed the socket loop
# (int(inf)), a poll interval of 0 spins a core, a max_message_bytes of 0 or below makes ZeroMQ drop every request
# unanswered (or, at -1, lifts the cap), an infinite shutdown timeout overflows the stop timer.
_SETTINGS: Dict[str, Tuple[bool, float, float, str]] = {
    "port": (True, 0, 65535, "a port number from 0 (any free port) to 65535"),
    "metrics_port": (True, 0, 65535, "a port number from 0 (any free port) to 65535"),
    "max_message_bytes": (True, 1, MAX_MESSAGE_BYTES_CAP, "a whole number of bytes >= 1"),
    "max_batch_size": (True, 1, MAX_BATCH_SIZE, f"a whole number of rows from 1 (batching off) to {MAX_BATCH_SIZE}"),
    "poll_interval_ms": (True, 1, 3_600_000, "a whole number of milliseconds from 1 to 3600000"),
    "batch_timeout_ms": (False, 0, 3_600_000, "a finite number of milliseconds from 0 to 3600000"),
    "inline_below_ms": (False, 0, 3_600_000, "a finite number of milliseconds from 0 (off) to 3600000"),
    "shutdown_timeout_s": (False, 0, 86_400, "a finite number of seconds from 0 to 86400"),
}


def check_server_settings(spell: Callable[[str], str] = str, **values: Any) -> None:
    """Refuse a PolicyServer setting outside what the server can run with: ValueError naming it (as `spell(name)`
    gives it: the CLI passes its flag names), the value and what it must be. None is allowed for metrics_port."""
    for name, value in values.items():
        whole, lowest, highest, expected = _SETTINGS[name]
        if value is None and name == "metrics_port":
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy numbers too
        if whole:
            number = number and (isinstance(value, numbers.Integral) or (math.isfinite(value) and value == int(value)))
        if not (number and lowest <= value <= highest):
            if name == "metrics_port":  # None (no endpoint) is spelled as the API has it; a flag is simply left out
                expected += ", or None" if spell is str else " (leave the flag out for none)"
            raise ValueError(f"{spell(name)} must be {expected}, got {value!r}")


class PolicyServer(BuiltinEndpoints):
    """Serves a BasePolicy over ZeroMQ to any number of REQ clients, ours or the reference's.

    Endpoints: ping, kill, get_action, reset, get_modality_config, get_server_info, plus registered ones. The
    socket thread (run(); each turn is a loop.RequestLoop's) only moves messages and answers ping, kill,
    get_server_info and get_modality_config itself; the policy runs on a worker thread (execution.JobRunner), except
    that a get_action of a policy whose recent calls all took under `inline_below_ms` runs on the socket thread when
    the worker is idle and no other request waits (worker.InlineGate: the hand-off would cost as much as the call; 0
    turns this off). Any bad request gets a bounded error reply and the server goes on serving. `limits` bound the
    work one request may ask for. close() is safe at any moment and from any thread. With `curve_secret_key` (and
    `authorized_keys`) the socket is a CURVE server (gr00t_server.curve); the token, if set, is checked on top.
    get_server_info reports the policy's embodiment tag (wrappers.served_embodiment_tag); an `embodiment_tag` naming
    another is refused (ValueError), and one is reported as given only for a policy that names none.
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
        inline_below_ms: float = DEFAULT_INLINE_BELOW_MS,
    ) -> None:
        # A class, None or an address would start and fail every request (or answer {} for the modality config). A
        # stateless policy object without reset (or get_modality_config) is served: those requests get an error reply.
        if isinstance(policy, type) or not callable(getattr(policy, "get_action", None)):
            got = (f"the class {policy.__name__} (pass an instance: {policy.__name__}(...))" if isinstance(policy, type)
                   else type(policy).__name__)
            raise TypeError(f"policy must be a BasePolicy (an object with a get_action method), got {got}")
        # bool("false") is True: any peer could stop the server
        allow_remote_kill = check_flag("allow_remote_kill", allow_remote_kill)
        check_server_settings(
            port=port, metrics_port=metrics_port, max_message_bytes=max_message_bytes, max_batch_size=max_batch_size,
            poll_interval_ms=poll_interval_ms, batch_timeout_ms=batch_timeout_ms, inline_below_ms=inline_below_ms,
            shutdown_timeout_s=shutdown_timeout_s,
        )
        if metrics_port is not None and metrics_port != 0 and metrics_port == port:
            raise ValueError(f"metrics_port {metrics_port} is also port: the metrics endpoint needs a port of its own "
                             "(pass another, or 0 for any free one)")
        self.policy = policy  # checked (the property's setter)
        # Facts about the policy's wrapper chain (_policy_fact), learnt once per policy object: [policy, {fact: value}]
        self._policy_facts: List[Any] = [None, {}]
        # A relay's (relay.py): its upstream's facts and modality configs as last learnt off the socket thread, and the
        # server_changes at which the upstream was last checked for a session-keeping policy
        self._relay_facts: Optional[UpstreamFacts] = None
        self._relay_checked_changes: Optional[int] = None
        self._relay_informed: Dict[str, None] = {}  # connections (Request.connection) told facts asked since they came
        # The client's check ('*', every interface, passes as serve's --host does): None, '' or a 'host:port' bound
        # tcp://None:0 and failed in start() with "No such device"
        self.host = check_host(host)
        self.port = int(port)
        if api_token == "":
            raise ValueError("api_token is empty (an unset $GR00T_API_TOKEN?): pass a token, or None to serve without "
                             "a token")
        self.api_token = api_token
        if self.api_token is not None:
            try:  # a token from a Latin-1 shell or a binary file: every request would fail with UnicodeEncodeError
                self.api_token.encode("utf-8")
            except (UnicodeEncodeError, AttributeError):
                raise ValueError("api_token must be UTF-8 text (a token from $GR00T_API_TOKEN or a file with bytes "
                                 "that are not UTF-8?)") from None
            problem = token_shape_problem(self.api_token, "api_token")
            if problem is not None:
                raise ValueError(problem)
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
        self.embodiment_tag = served_embodiment_tag(policy, embodiment_tag)  # ValueError: not the policy's
        self.poll_interval_ms = int(poll_interval_ms)
        self._given_limits = limits or ServerLimits()  # the user's: a policy swapped in cuts them to its own
        self.limits = _sessions_as_policy_keeps(policy, self._given_limits)
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self.stats = ServerStats()
        # Prometheus /metrics on metrics_port (0: a free port, see metrics_port after start()), bound to `host`.
        self.metrics_port = None if metrics_port is None else int(metrics_port)
        self._metrics: NullMetrics = NullMetrics()
        # sessions' idle time leaves out the server's stalls (a SIGSTOP, `docker pause`), watched while run() serves
        self.idle_clock = StallClock()
        self.sessions = self._new_session_table()
        self._sessions_policy: Any = policy  # the policy that holds the sessions in self.sessions (a swap empties it)
        self._session_table_lock = threading.Lock()
        self._endpoints: Dict[str, Endpoint] = {}
        self._transport: Optional[Transport] = None
        self._worker: Optional[PolicyWorker] = None
        # After run(): True when it stopped without a policy call that is still running on the worker thread (in C
        # code a stop cannot interrupt); an interpreter exiting under it may abort, so serve ends with os._exit.
        self.left_policy_call_running = False
        self._running = False
        self._stop_requested = threading.Event()
        self._run_done = threading.Event()
        self._run_done.set()
        # start(), run()'s entry and exit, and close() change who owns the socket only under this lock.
        self._lifecycle = threading.Lock()
        self._closed = False
        self._serving_thread: Optional[int] = None  # ident of the thread inside run(); it alone uses the socket
        self.bound_endpoint: Optional[str] = None
        # A get_action whose recent calls all took under inline_below_ms runs on the socket thread (0: never)
        self.inline_below_ms = float(inline_below_ms)
        self._inline = InlineGate(self.inline_below_ms)
        self._runner = JobRunner(self, self._window, self._inline)  # runs jobs on the worker (built-in endpoints inline)
        self._loop = RequestLoop(self, self._runner, self._window, self._inline)  # the socket thread's receive/route/send
        self.register_endpoint("ping", self._ping, requires_input=False)
        self.register_endpoint("kill", self._kill, requires_input=False)
        self.register_endpoint("get_action", self._get_action)
        self.register_endpoint("reset", self._reset)
        self.register_endpoint("get_modality_config", self._modality_config_endpoint, requires_input=False)
        self.register_endpoint("get_server_info", self._get_server_info, requires_input=False)
        self._identity_text_logged = False
        self._info_errors_logged: set = set()  # (policy id, field) whose get_server_info failure was logged
        self._learning_info = False  # run() asking the policy's info facts on the main thread (_learn_policy_info)
        self._built_in = dict(self._endpoints)  # a name registered again (register_endpoint) is the caller's handler

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

        Registered endpoints run on the policy worker beside get_action and reset: in arrival order within one
        connection, connections taking turns (a replacement of a built-in endpoint too: ping, kill, get_server_info
        and get_modality_config are answered on the socket thread only while they are the built-in ones). A replaced
        get_action is served alone, never in a merged batch (the merged call would skip it; requests gathered before
        it was registered are served alone by it too), counted as one policy call per request, and its action is held
        to the same NaN/inf check as the built-in one's. A replaced get_action or reset that takes `options` gets them
        as the built-in ones pass them to the policy: without return_server_timing and, for a policy that keeps
        sessions, with the client's session in
        options["_session_id"]; any handler can read it as `current_session`.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"endpoint name must be a non-empty str, got {name!r}")
        if name in RESERVED_ENDPOINT_LABELS:
            raise ValueError(f"endpoint name {name!r} is reserved: the metrics count unknown endpoints and unreadable "
                             f"requests under {' and '.join(map(repr, RESERVED_ENDPOINT_LABELS))}; choose another name")
        self._endpoints[name] = Endpoint(name, handler, requires_input)

    @property
    def endpoints(self) -> List[str]:
        """The names of the endpoints served, sorted (built-in and registered ones)."""
        return sorted(self._endpoints)

    @property
    def _current(self) -> Optional[Request]:
        """The request this thread is serving (handlers read the peer and session from it)."""
        return self._runner.current

    @_current.setter
    def _current(self, request: Optional[Request]) -> None:
        self._runner.current = request

    @property
    def current_session(self) -> Optional[str]:
        """The session of the request this thread is serving: a registered handler's way to learn whose request it
        runs (None outside a handler; for a request without session_id, its connection's key, starting with "\x00")."""
        request = self._runner.current
        return request.session if request is not None else None

    @property
    def _socket(self) -> Any:
        return self._transport.socket if self._transport is not None else None

    @property
    def _context(self) -> Any:
        return self._transport.context if self._transport is not None else None

    def is_built_in(self, endpoint: str) -> bool:
        """Whether `endpoint` is served by this server's own handler (not one register_endpoint put in its place)."""
        return self._endpoints.get(endpoint) is self._built_in.get(endpoint, False)

    @property
    def batching_enabled(self) -> bool:
        """True when get_action requests of several clients may be merged into one policy call."""
        # A merged call has no single session to pass, so per-session policies are never batched; a replaced
        # get_action (a clamp, a transform) would be skipped by the merged call, which asks the policy itself.
        return (self.max_batch_size > 1 and self._policy_batches and not self._policy_uses_sessions
                and self.is_built_in("get_action"))

    # --- lifetime -------------------------------------------------------------------------------

    @property
    def policy(self) -> BasePolicy:
        """The policy served; another may be assigned while serving (session_table then starts afresh, and requests
        gathered for a merged call of the old one are served alone)."""
        return self._policy

    @policy.setter
    def policy(self, policy: BasePolicy) -> None:
        # a chain whose one PolicyClient session of a replay server every client would share is refused, whether given
        # at construction or swapped in while serving
        check_no_shared_replay_session(policy)
        self._policy = policy

    def session_table(self) -> SessionTable:
        """The sessions of the policy served now. A policy swapped in while serving (`server.policy = ...`) holds none
        of the old one's: as after a restart, a fresh table, sized by the limits given cut to its own max_sessions,
        so that a continuing client is told to reset rather than replayed from episode 0."""
        with self._session_table_lock:
            if self._sessions_policy is not self.policy:
                self.limits = _sessions_as_policy_keeps(self.policy, self._given_limits)
                self.sessions = self._new_session_table()
                self._sessions_policy = self.policy
            return self.sessions

    def _new_session_table(self) -> SessionTable:
        return SessionTable(self.limits.max_sessions, self.limits.session_idle_s, clock=self.idle_clock)

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
        self._transport = Transport(self.host, self.port, self.max_message_bytes, self.curve,
                                    self.limits.max_client_queued_requests)
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
        # By the address bound: a name (127.1, the machine's own name in /etc/hosts) may bind loopback only
        loopback = is_loopback_host(endpoint_address(self.bound_endpoint))
        if not loopback and self.metrics_port is not None:  # neither the token nor CURVE covers it
            logger.warning("serving metrics on %s port %d without authentication: anyone who can reach that port can "
                           "read them (serve on a private interface or firewall the port)", self.host, self.metrics_port)
        if not loopback and not self.api_token and (self.curve is None or self.curve.authorized_keys is None):
            logger.warning("listening on %s without an API token%s: anyone who can reach this port can use the policy "
                           "(set an API token: --api-token or GR00T_API_TOKEN, api_token= in Python; or CURVE with "
                           "authorized client keys)", self.host, " or authorized client keys" if self.curve is not None else "")

    def _start_metrics(self, port: int) -> ServerMetrics:
        """This server's Prometheus endpoint on its host (ImportError naming the extra without prometheus_client)."""
        metrics = ServerMetrics(
            endpoints=lambda: self._endpoints,
            queue_depth=lambda: self._loop.queued_requests,
            sessions=lambda: self.session_table().live_count(),
            active_clients=lambda: self._loop.active_client_count(),
        )
        try:
            metrics.serve(self.host, port)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {endpoint_host(self.host)}:{port}: {exc}") from exc
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
        policy call, which it waits for up to shutdown_timeout_s. A stop() that arrives before `run()` has started
        its loop is honoured: that run returns at once.

        A call of a cheap policy may be running on run()'s own thread (see inline_below_ms): where that is the main
        thread it is interrupted after shutdown_timeout_s, as on Ctrl-C (with SIGTERM where the process ignores
        SIGINT; not at all where it ignores every stop signal, as the log then says); on another thread run() returns
        when the call does, and close() frees the port meanwhile.
        """
        first = not self._stop_requested.is_set()
        self._stop_requested.set()
        transport = self._transport
        if transport is not None:
            transport.wake()
        if first and self._running and self._serving_thread == threading.main_thread().ident \
                and threading.get_ident() != self._serving_thread:
            self._loop.abandon_inline_after(self.shutdown_timeout_s)  # its signal reaches our handler there

    def close(self) -> None:
        """Stop serving for good and free the port; safe at any moment, from any thread, any number of times.

        A run() in another thread owns the socket, so close() stops it and waits (up to CLOSE_WAIT_S) for it to
        close the socket; a run() that has not started yet returns at once without binding. Should that thread be
        held in a policy call of its own (see stop()) for shutdown_timeout_s, close() closes the socket itself: the
        port is free, the call's clients get no reply, and run() returns when the call does.
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
        waited_s = min(CLOSE_WAIT_S, self.shutdown_timeout_s + INLINE_RELEASE_GRACE_S)
        if self._run_done.wait(timeout=waited_s):
            return
        if self._loop.release_socket_of_stuck_inline_call():
            logger.warning("a policy call running on the serving thread outlived the stop by %g s: its socket is "
                           "closed and the port free; run() returns when the call does", waited_s)
            return
        if not self._run_done.wait(timeout=CLOSE_WAIT_S - waited_s):
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
            # A second Ctrl-C of an earlier run() of this server gave up on its call; this run waits as usual.
            self._loop.stop_waiting = self._loop.abandoning_inline = False
        restore: Callable[[], None] = lambda: None
        worker = PolicyWorker(self._runner.execute, transport.wake, self._runner.error_frames)
        self._worker = worker
        try:
            self.idle_clock.start_watching()
            worker.start()
            # before our handlers: a slow policy property is waited for once, here, and Ctrl-C still stops it
            self._learn_policy_info()
            restore = _install_signal_handlers(self)
            security = transport.security
            suffix = f" ({security.banner()})" if security is not None else ""
            # a host's stdout that cannot be written (a reader gone, closed) loses these lines; the server still serves
            if self.metrics_port is not None:  # port 0 picked one: said before the ready line others wait for
                metrics_host = endpoint_host(reachable_host(self.host))
                print_if_writable(f"Metrics: http://{metrics_host}:{self.metrics_port}/metrics")
            print_if_writable(f"Server is ready and listening on {self.bound_endpoint}{suffix}")
            while self._running and not self._stop_requested.is_set():
                self._loop.turn()
        except InlineCallAbandoned:  # its requests were answered; the stop that gave up on it ends the run
            pass
        finally:
            # Our handlers stay until run() is over. Through the wait a second Ctrl-C ends it (Python's default raised
            # out of it, and the interpreter then exited under the worker's torch call: an abort); after it, one that
            # came before the totals were logged and the socket released raised out of this block, skipping both.
            try:
                self._loop.shut_down(worker)
                self.left_policy_call_running = worker.alive and worker.running_a_call  # abandoned: see serve's exit
                self._runner.flush_logs()
                totals = self.stats.snapshot()
                logger.info("stopped after %d requests: %d errors (%d internal; %d over queue or connection limits; "
                            "%d expired), %d late, %d undelivered, %d policy calls",
                            totals["requests"], totals["errors"], totals["internal_errors"], totals["refused"],
                            totals["expired"], totals["late"], totals["undelivered"], totals["policy_calls"])
                with self._lifecycle:
                    self.idle_clock.stop_watching()  # joined before _run_done: close() leaves no watchdog behind
                    self._running = False
                    self._worker = None
                    self._release()
                    self._serving_thread = None
                    self._stop_requested.clear()  # cleared here, not at start, so an early stop() is never lost
                    self._run_done.set()
            finally:
                self.idle_clock.stop_watching()  # (done already, unless the shut-down above failed)
                restore()


def _sessions_as_policy_keeps(policy: BasePolicy, limits: ServerLimits) -> ServerLimits:
    """`limits` with the server's session table no larger than the policy's own (ReplayPolicy(max_sessions=)), so
    that the two tables evict the same sessions; a warning names both when the server's was larger."""
    policy_sessions = policy_session_limit(policy)
    if policy_sessions is None or policy_sessions >= limits.max_sessions:
        return limits
    logger.warning("the policy keeps at most %d sessions (its max_sessions) and the server's limits allow %d "
                   "(ServerLimits.max_sessions, --max-sessions): the server keeps %d, so that both evict the same "
                   "sessions", policy_sessions, limits.max_sessions, policy_sessions)
    return dataclasses.replace(limits, max_sessions=policy_sessions)


def _install_signal_handlers(server: PolicyServer) -> Callable[[], None]:
    """On the main thread, make SIGINT, SIGTERM and SIGHUP (while it has its default action: see handled_stop_signals)
    stop `server`'s run(); returns what puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, _frame: Any) -> None:
        if server._loop.abandoning_inline:  # sent by abandon_inline_after: end the call that outlived the stop
            server._loop.abandoning_inline = False
            if server._loop.inline_running:  # (this thread is inside it; it may have just finished)
                raise InlineCallAbandoned(f"a policy call outlived the stop by {server.shutdown_timeout_s:g} s")
            return
        if stop_signals[0]:  # a second Ctrl-C or SIGTERM: stop waiting for the running call, if any
            logger.warning("received %s again; not waiting for a running policy call", signal.Signals(signum).name)
            server._loop.stop_waiting = True
            if server._loop.inline_running:  # this thread is inside it
                raise InlineCallAbandoned("a second stop signal")
            return
        stop_signals[0] += 1
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        server._running = False
        server._loop.abandon_inline_after(server.shutdown_timeout_s)

    stop_signals = [0]

    previous = {sig: signal.signal(sig, on_signal) for sig in handled_stop_signals()}
    # A SIGINT this process ignores (a script's `cmd &`) stays ignored, and the kernel discards one sent to it; one
    # this thread blocks (a mask inherited from a launcher's thread) stays pending: abandon_inline_after interrupts
    # with a signal handled here and deliverable (SIGTERM then), or says that it cannot
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, []) if hasattr(signal, "pthread_sigmask") else set()
    server._loop.interrupt_signal = next((sig for sig in previous if sig not in blocked), None)

    def restore() -> None:
        server._loop.interrupt_signal = None
        for sig, handler in previous.items():
            # None means a handler installed from C, which Python cannot reinstall; the default is closest.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    return restore
