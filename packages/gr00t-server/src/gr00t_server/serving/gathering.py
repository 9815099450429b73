"""Gathering get_action requests into batches for the worker: which go next (turns per connection) and when a round
goes, waiting for the recently active clients at most the gather window, sooner for a client's deadline."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, AbstractSet, Callable, Dict, List, Optional, Set, Tuple

from . import batching
from .batching import GatherWindow
from .messages import Request
from .worker import Job

if TYPE_CHECKING:
    from .server import PolicyServer

ACTIVE_CLIENT_WINDOW_S = 1.0  # a client that sent get_action this recently is expected to send again
DEADLINE_SHARE_KEPT = 0.25  # a gathered request goes before its deadline minus a call, minus this share of its budget


def _batch_shape_of(request: Request) -> batching.BatchShape:
    assert request.batch_shape is not None  # set when it was gathered
    return request.batch_shape


def _connection_of(request: Request) -> bytes:
    return request.identity


class Gathering:
    """The get_action requests RequestLoop has gathered and when they go to the worker: batches filled in turns,
    rounds cut at the gather window or a deadline, the clients a round waits for."""

    _server: "PolicyServer"  # the loop's: its max_batch_size, batch_timeout_ms, worker and stop are read live
    _submit: Callable[[Job], None]  # the loop's: runs a batch inline or hands it to the worker
    _answer_expired: Callable[[List[Request], float], None]  # the loop's: answers requests not run, out of time

    def __init__(self, window: GatherWindow) -> None:
        self._window = window  # gathering waits for expected clients at most batch_timeout_ms, less as arrivals show
        self.pending: List[Request] = []  # batchable get_action requests gathered, not yet handed to the worker
        self._gathered_deadline = math.inf  # no gathered request's deadline is earlier (it may be later)
        self._turns = batching.Turns(_connection_of)  # connections with requests gathered take turns to join a batch
        self.active_clients: Dict[str, float] = {}  # session -> when its last get_action was gathered
        # session -> when its last get_action was decoded, refused, batched or not (the gr00t_active_clients gauge; no
        # round waits on it: gathering waits for active_clients, so a refused client holds up no batch)
        self.clients_seen: Dict[str, float] = {}
        self._clients_seen_prune_at = 256
        self._cut_round: Optional[Tuple[float, Set[str]]] = None  # (round start, clients missing) of a round cut short
        # Clients a round was cut without and that have not sent since: the next rounds do not wait for them again
        # (a stalled or departed client would otherwise cost every round the whole gather window until forgotten).
        self._absent: Set[str] = set()
        self._served_at = 0.0  # when the worker's last replies were sent: the clients they answer start back then

    def _gathered_before(self, request: Request) -> List[Request]:
        """The gathered requests that must run before `request`: those of its connection or session, and the earlier
        ones of theirs, in arrival order."""
        connections, sessions = {request.identity}, {request.session}
        ahead: List[Request] = []
        for gathered in reversed(self.pending):
            if gathered.identity in connections or gathered.session in sessions:
                ahead.append(gathered)
                connections.add(gathered.identity)
                sessions.add(gathered.session)
        return ahead[::-1]

    def dispatch_pending(self, force: bool = False) -> None:
        """Hand gathered get_action requests to the worker once a batch is full, or the worker is free and every
        recently active client is already waiting or the oldest has waited the gather window.

        Batches are filled one request per connection per turn (batching.Turns), and at most one waits at the
        worker behind the running call: a busy worker gets a full batch only when nothing else waits for it, and
        the requests left out stay here for the next one. Batches formed all at once put a request that came later
        behind all of them (one peer pipelining 64 requests kept 8 batches ahead of every robot). `force` (and a
        stop) hands everything over now."""
        if self.pending and time.monotonic() > self._gathered_deadline:
            self._drop_expired_gathered()
        if not self.pending:
            return
        server = self._server
        worker = server._worker
        busy = worker is not None and worker.busy
        force = force or server._stop_requested.is_set()
        full = sum(r.rows for r in self.pending) >= server.max_batch_size
        start = self._round_start()
        everyone_waiting = False
        if not force:
            if busy and (not full or (worker is not None and worker.queued)):
                return  # the worker is busy: gather more for free (a full batch goes only to be next in line)
            if not busy and not full:
                known = self._recent_clients() - self._absent
                waiting = {r.session for r in self.pending}
                everyone_waiting = bool(known) and waiting >= known
                waited = time.monotonic() >= self._dispatch_by()
                if not (everyone_waiting or waited):
                    return
                if not everyone_waiting:  # cut short: whoever of `known` comes late tells how wide rounds really are
                    missing = known - waiting
                    self._cut_round = (start, missing)
                    self._absent |= missing
        if everyone_waiting:  # a whole round: its arrival spread is what the window must cover
            self._window.observe_spread(self.pending[-1].received_at - start)
        now = time.monotonic()
        self.active_clients.update((r.session, now) for r in self.pending)
        self._hand_over(self.pending, len(self.pending) if force else 1 if busy else 2)

    def _gather(self, request: Request) -> None:
        """Gather a batchable get_action request for the next batches."""
        self.pending.append(request)
        if request.deadline is not None and request.deadline < self._gathered_deadline:
            self._gathered_deadline = request.deadline

    def _drop_expired_gathered(self) -> None:
        """Answer the gathered requests whose client's deadline has passed as not run (expired), so that none takes a
        row of a batch or makes one full: a dead request pushed a live batch mate into a call of its own."""
        now = time.monotonic()
        expired = [request for request in self.pending if request.expired(now)]
        if expired:
            dropped = {id(request) for request in expired}
            self.pending = [request for request in self.pending if id(request) not in dropped]
        self._gathered_deadline = min((r.deadline for r in self.pending if r.deadline is not None), default=math.inf)
        if expired:
            self._answer_expired(expired, now)

    def _hand_over(self, requests: List[Request], max_jobs: int) -> None:
        """Submit up to `max_jobs` batches of the gathered `requests`, filled in turn order (batching.Turns); the rest
        stay gathered."""
        ordered = self._turns.order(requests)
        jobs: List[Job] = []
        limit = batching.policy_call_rows(self._server.policy)
        call_rows = (lambda request: limit(request.data["observation"])) if limit is not None else None
        while ordered and len(jobs) < max_jobs:
            jobs.append(batching.next_batch(ordered, self._server.max_batch_size, _batch_shape_of, _connection_of,
                                            call_rows))
            taken = {id(r) for r in jobs[-1]}
            ordered = [r for r in ordered if id(r) not in taken]
        handed = {id(r) for job in jobs for r in job}
        self.pending = [r for r in self.pending if id(r) not in handed]
        if not self.pending:
            self._gathered_deadline = math.inf
        self._turns.served(jobs, self.pending)
        for job in jobs:
            self._submit(job)

    def _dispatch_by(self) -> float:
        """When the gathered round goes without its stragglers: the gather window's end, or sooner when a waiting
        client's deadline would pass before a policy call started then could finish (a client with a short timeout
        was held past it while the server idled)."""
        by = self._round_start() + self._window.seconds()
        call_s = self._window.call_seconds()
        for request in self.pending:  # asked twice a turn: one pass, without a call per request
            deadline = request.deadline
            if deadline is not None:  # a quarter of its budget is left for the reply's way back
                latest = deadline - call_s - DEADLINE_SHARE_KEPT * (deadline - request.received_at)
                if latest < by:
                    by = latest
        return by

    def _round_start(self) -> float:
        """When the gathered round began: its first arrival, or, when that came while the worker was busy, the moment
        the worker's replies went out (the clients those replies answer could not have sent theirs sooner). Counting
        from the first arrival would close the window the moment the worker frees and split the clients into two
        cohorts that alternate, each batch half full (measured: batches of 7 and 9 for 16 clients)."""
        return max(self.pending[0].received_at, self._served_at)

    def _note_straggler(self, request: Request) -> None:
        """A request from a client missing from a round cut short: that round's spread reached its arrival."""
        self._absent.discard(request.session)  # back: rounds wait for it again
        if self._cut_round is None:
            return
        round_start, missing = self._cut_round
        if request.session in missing:
            missing.discard(request.session)
            if request.received_at - round_start <= self._window.cap_s:
                self._window.observe_spread(request.received_at - round_start)
        if not missing or request.received_at - round_start > self._window.cap_s:
            self._cut_round = None

    def _active_cutoff(self) -> float:
        """The time.monotonic() before which a client's last gathered get_action no longer makes it active."""
        return time.monotonic() - max(ACTIVE_CLIENT_WINDOW_S, 10 * self._server.batch_timeout_ms / 1000.0)

    def _note_client(self, request: Request) -> None:
        """Remember when this client last sent get_action; the table is pruned of quiet clients as it grows."""
        self.clients_seen[request.session] = request.received_at
        if len(self.clients_seen) > self._clients_seen_prune_at:
            cutoff = time.monotonic() - ACTIVE_CLIENT_WINDOW_S
            self.clients_seen = {s: t for s, t in self.clients_seen.items() if t >= cutoff}
            self._clients_seen_prune_at = max(256, 2 * len(self.clients_seen))

    def active_client_count(self) -> int:
        """Clients that sent get_action within the last ACTIVE_CLIENT_WINDOW_S, refused, batched or not (read from
        another thread by the metrics gauge)."""
        cutoff = time.monotonic() - ACTIVE_CLIENT_WINDOW_S
        return sum(1 for last in list(self.clients_seen.values()) if last >= cutoff)

    def _recent_clients(self) -> AbstractSet[str]:
        """Sessions whose get_action was batched recently (and forget the ones gone quiet)."""
        cutoff = self._active_cutoff()
        if self.active_clients and min(self.active_clients.values()) < cutoff:  # asked every turn: rebuilt only then
            self.active_clients = {s: t for s, t in self.active_clients.items() if t >= cutoff}
            self._absent.intersection_update(self.active_clients)  # forgotten clients need no exception
        return self.active_clients.keys()
