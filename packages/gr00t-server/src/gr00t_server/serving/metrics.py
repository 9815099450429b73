"""Prometheus metrics of one PolicyServer (the optional `metrics` extra: prometheus_client).

Each server has its own CollectorRegistry and HTTP endpoint, so several servers in one process never share or
clash. Without a metrics port the server uses NullMetrics, whose methods do nothing.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import weakref
from typing import Any, Callable, Collection, Dict, Optional, Tuple

from gr00t_client.client import endpoint_host

from ..threads import stop_signals_blocked
from .endpoints import RateLimitedLog
from .messages import UNDECODED_ENDPOINT

logger = logging.getLogger("gr00t_server.serving")

METRICS_CONNECTION_TIMEOUT_S = 10.0  # per read of a metrics connection; an idle one is closed after it
METRICS_CONNECTION_DEADLINE_S = 30.0  # a whole connection, however it trickles bytes in (a scrape takes milliseconds)
METRICS_MAX_CONNECTIONS = 32  # open at once; more are closed as they come, so peers cannot hold a thread each
METRICS_CLOSE_WAIT_S = 1.0  # close() waits this long in all for the threads of the connections it shut down

# Stages of a request that server_timing reports (ms); the histograms take them in seconds.
STAGES = ("decode", "queue_wait", "policy", "preprocess", "model", "postprocess", "encode")
_STAGE_KEYS = tuple((stage, f"{stage}_ms") for stage in STAGES)  # (stage, its server_timing key)
OTHER_ENDPOINT = "other"  # label of endpoints the server does not know (their names come from clients)
# Labels no registered endpoint may take: its counts would merge with unknown names' or unreadable requests'
RESERVED_ENDPOINT_LABELS = (OTHER_ENDPOINT, UNDECODED_ENDPOINT)
_STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def reachable_host(host: str) -> str:
    """A host a URL can name for a server bound to `host`: loopback for the wildcards ('*', 0.0.0.0, ::), which no
    client can open ("http://*:9100" is no URL)."""
    return {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)


class NullMetrics:
    """The metrics of a server started without a metrics port: every call does nothing."""

    port: Optional[int] = None

    def request_done(self, endpoint: Optional[str], outcome: str) -> None:
        """A request was answered with `outcome`: ok, late, undelivered, error, refused, expired or internal_error;
        `endpoint` None when no name could be read from it."""

    def observe_stages(self, timing: Dict[str, Any]) -> None:
        """One get_action's stage times, as server_timing names them ({stage}_ms)."""

    def observe_batch(self, size: int) -> None:
        """One policy call that served `size` requests."""

    def close(self) -> None:
        """Stop serving the metrics endpoint."""


def require_prometheus() -> Any:
    """The prometheus_client module; ImportError naming the `metrics` extra when it is not installed."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the metrics endpoint needs prometheus_client: pip install 'gr00t-server[metrics]'"
        ) from exc
    return prometheus_client


class ServerMetrics(NullMetrics):
    """Counters, gauges and histograms of one server in its own registry, served over HTTP at /metrics.

    `endpoints` are the endpoint names used as labels (any other name counts as "other", so clients cannot
    grow the label set, and a request whose name could not be read as "undecoded"); `queue_depth`, `sessions` and
    `active_clients` are read when scraped.
    """

    def __init__(
        self,
        endpoints: Callable[[], Collection[str]],
        queue_depth: Callable[[], float],
        sessions: Callable[[], float],
        active_clients: Callable[[], float],
    ) -> None:
        prometheus = require_prometheus()
        self.registry = prometheus.CollectorRegistry()
        self._endpoints = endpoints
        self._requests = prometheus.Counter(
            "gr00t_requests", "Requests answered, by endpoint and outcome (ok, late: served after the client's deadline "
            "(a few ms of grace), undelivered: its client's connection was gone or not reading, error, refused, expired, internal_error)",
            ["endpoint", "outcome"], registry=self.registry,
        )
        self._stages = prometheus.Histogram(
            "gr00t_request_stage_seconds",
            "Time a get_action request spent in each stage (decode, with the server's checks of its limits; "
            "queue_wait, policy, the policy's own preprocess, model and postprocess when it reports them, encode)",
            ["stage"], buckets=_STAGE_BUCKETS_S, registry=self.registry,
        )
        self._batches = prometheus.Histogram(
            "gr00t_batch_size", "Requests served per policy call", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        for name, documentation, read in (
            ("gr00t_queue_depth", "Requests received and not yet answered (waiting for or in the policy)", queue_depth),
            ("gr00t_sessions", "Client sessions a stateful policy holds", sessions),
            ("gr00t_active_clients", "Clients that sent get_action within the last second", active_clients),
        ):
            prometheus.Gauge(name, documentation, registry=self.registry).set_function(read)
        # Labelled children as labels() gave them, made on first use as labels() makes them (a series shows on
        # /metrics from its first count): labels() takes the metric's lock and builds a key each time, per request
        self._request_counts: Dict[Tuple[str, str], Any] = {}
        self._stage_times: Dict[str, Any] = {}
        self._http: Any = None
        self._thread: Any = None
        self._guard: Optional[_ConnectionGuard] = None
        self.port: Optional[int] = None

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 picks a free port); returns the port. OSError when it cannot bind."""
        prometheus = require_prometheus()
        with stop_signals_blocked():  # its thread, and the threads it starts per scrape, leave stop signals to main
            self._http, self._thread = prometheus.start_http_server(port, addr=host, registry=self.registry)
        # A connection that sends nothing held a thread for ever (400 idle connections: 406 threads): each
        # connection now gets METRICS_CONNECTION_TIMEOUT_S per read, as a scrape needs milliseconds.
        handler = self._http.RequestHandlerClass
        self._http.RequestHandlerClass = type("TimedMetricsHandler", (handler,), {"timeout": METRICS_CONNECTION_TIMEOUT_S})
        with stop_signals_blocked():
            self._guard = _ConnectionGuard(self._http)
        self.port = int(self._http.server_address[1])
        logger.info("metrics at http://%s:%d/metrics", endpoint_host(reachable_host(host)), self.port)
        return self.port

    def request_done(self, endpoint: Optional[str], outcome: str) -> None:
        """Count an answered request under its endpoint (or "other", for names the server does not know, and
        "undecoded", for None: requests answered before a name could be read) and outcome."""
        if endpoint is None:
            label = UNDECODED_ENDPOINT
        else:
            label = endpoint if endpoint in self._endpoints() else OTHER_ENDPOINT
        counter = self._request_counts.get((label, outcome))
        if counter is None:
            counter = self._request_counts[(label, outcome)] = self._requests.labels(endpoint=label, outcome=outcome)
        counter.inc()

    def observe_stages(self, timing: Dict[str, Any]) -> None:
        """One get_action's stage times ({stage}_ms, as server_timing names them) into the per-stage histograms."""
        for stage, key in _STAGE_KEYS:
            value = timing.get(key)
            if isinstance(value, (int, float)):
                histogram = self._stage_times.get(stage)
                if histogram is None:
                    histogram = self._stage_times[stage] = self._stages.labels(stage=stage)
                histogram.observe(max(0.0, float(value)) / 1000.0)

    def observe_batch(self, size: int) -> None:
        """The number of requests one policy call served."""
        self._batches.observe(size)

    def close(self) -> None:
        """Stop serving /metrics, free its port and end its open connections (their threads too)."""
        if self._http is not None:
            # shutdown() waits for serve_forever's next look at its flag, up to its 0.5 s poll interval after the
            # last connection: a connection of our own wakes it at once (every stop paid ~0.45 s).
            stopper = threading.Thread(target=self._http.shutdown, name="gr00t-metrics-stop", daemon=True)
            stopper.start()
            while stopper.is_alive():
                _wake(self._http.server_address)
                stopper.join(0.05)
            self._http.server_close()
            self._http = None
            if self._thread is not None:
                self._thread.join(5)
        if self._guard is not None:  # after the listener: no connection is accepted behind its back
            self._guard.stop()
            self._guard.join(METRICS_CLOSE_WAIT_S)
            self._guard = None


def _wake(address: Any) -> None:
    """Connect to the metrics server's own listening address (a wildcard one through loopback) and hang up."""
    host, port = address[0], address[1]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        pass  # the server is stopping or the address unreachable: shutdown() still ends within its poll interval


class _ConnectionGuard:
    """Bounds what peers of the metrics endpoint can hold: at most METRICS_MAX_CONNECTIONS connections at once (more
    are closed at once), each closed after METRICS_CONNECTION_DEADLINE_S however slowly it sends (the per-read
    timeout alone let a byte every few seconds hold a thread for ever: 200 such peers, 206 threads); and the ends a
    connection is expected to meet (the timeout, a peer gone) stay out of the log, which got a 17-line traceback on
    stderr for each (socketserver's handle_error). Other errors are logged, rate-limited."""

    def __init__(self, http: Any) -> None:
        self._open: Dict[Any, float] = {}  # connection -> when it was accepted
        self._handlers: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()  # threads serving a connection
        self._lock = threading.Lock()
        self._log = RateLimitedLog(logger, per_window=5, window_s=60.0)
        self._stopped = threading.Event()
        process_request, process_request_thread = http.process_request, http.process_request_thread

        def admit(request: Any, client_address: Any) -> None:
            with self._lock:
                full = len(self._open) >= METRICS_MAX_CONNECTIONS
                if not full:
                    self._open[request] = time.monotonic()
            if full:
                self._log.warning("metrics: %d connections are open already; closed a new one from %s",
                                  METRICS_MAX_CONNECTIONS, client_address[0], kind="full")
                http.shutdown_request(request)
                return
            try:
                process_request(request, client_address)  # starts a thread running serve_one
            except BaseException:
                self._forget(request)
                raise

        def serve_one(request: Any, client_address: Any) -> None:
            with self._lock:
                self._handlers.add(threading.current_thread())
            try:
                process_request_thread(request, client_address)
            finally:
                self._forget(request)

        http.process_request, http.process_request_thread = admit, serve_one
        http.handle_error = self._handle_error
        threading.Thread(target=self._close_overdue, name="gr00t-metrics-deadline", daemon=True).start()

    def _forget(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)

    def _handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) or self._stopped.is_set():
            return  # an idle, closed or cut connection (timeouts and resets are OSErrors): expected, no line
        self._log.warning("metrics: error serving a scrape from %s: %s: %s", client_address[0],
                          type(error).__name__, error, kind=type(error).__name__)

    def _close_overdue(self) -> None:
        while not self._stopped.wait(1.0):
            now = time.monotonic()
            with self._lock:
                overdue = [request for request, accepted in self._open.items()
                           if now - accepted > METRICS_CONNECTION_DEADLINE_S]
            for request in overdue:
                _shut(request)

    def stop(self) -> None:
        """End the deadline's watch and shut down every open connection: their threads' reads end, and they with it."""
        self._stopped.set()
        with self._lock:
            for request in self._open:
                _shut(request)

    def join(self, timeout_s: float) -> None:
        """Wait up to timeout_s in all for the threads serving connections to end."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))


def _shut(request: socket.socket) -> None:
    """Shut a connection down both ways (a peer that closed it first makes this a no-op)."""
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
