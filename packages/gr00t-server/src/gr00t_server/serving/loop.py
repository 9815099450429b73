"""The socket thread's request loop for PolicyServer: receive a burst, parse within limits, route, admit against
queue budgets, run cheap get_action calls inline or hand work to the worker in the batches gathering.Gathering
forms, and send the replies it finishes."""

from __future__ import annotations

import _thread
import contextlib
import logging
import math
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from gr00t_client import codec
from gr00t_client.client import SHUTTING_DOWN  # ServerStoppingError on the client: keep the words in step

from ..threads import block_stop_signals
from . import batching, limits as work_limits
from .batching import GatherWindow
from .endpoints import INLINE_ENDPOINTS
from .execution import JobRunner
from .gathering import ACTIVE_CLIENT_WINDOW_S, Gathering
from .messages import (
    UNDECODED_ENDPOINT,
    WIRE_MULTIPART,
    Request,
    RequestError,
    adopt_n15_get_action,
    asks_upstream,
    check_envelope,
    check_token,
    client_of,
    client_reads_number_keys,
    connection_user_id,
    continues_session,
    deadline_of,
    decode_payload,
    peek_endpoint,
    peer_address,
    refuse_reset_timing,
    session_of,
    split_routing,
    timing_requested,
    unknown_endpoint,
)
from .relay import NOT_RUN_AT_STOP
from .sessions import SESSION_ENDPOINTS
from .transport import MAX_MESSAGE_FRAMES, OverlongMessage
from .worker import InlineCallAbandoned, InlineGate, Job, PolicyWorker, only_get_action

if TYPE_CHECKING:
    from .server import PolicyServer

__all__ = ["ACTIVE_CLIENT_WINDOW_S", "DEFAULT_CLIENT_QUEUED_BYTES", "PRECHECK_MIN_BYTES", "RECEIVE_BURST",
           "RECEIVE_BURST_S", "InlineCallAbandoned", "RequestLoop"]

logger = logging.getLogger("gr00t_server.serving.server")  # PolicyServer's log: the split renamed no logger

# Bytes one connection may have waiting for the policy, its first request's included (a first request is always
# admitted, however large): a REQ client has one request outstanding, so only pipelining (DEALER) peers ever meet this.
DEFAULT_CLIENT_QUEUED_BYTES = 16 * 1024 * 1024
RECEIVE_BURST = 64  # messages taken off the socket per loop turn before replies and dispatch get a turn
# ... or fewer: a burst takes no further message once it has run this long, since a message's decode may take 0.1 s
# (a map of many keys) and dispatch waits for the burst's end. Cheap messages still go 64 at a time.
RECEIVE_BURST_S = 0.005
# Messages from this size are held to the byte budgets before they are decoded (smaller ones, pings among them, after)
PRECHECK_MIN_BYTES = 1024 * 1024
# A reply sent this soon after its request's deadline still reaches a waiting client: ours sends its timeout cut to
# whole ms and polls in whole ms rounded up (up to 1 ms each), so it takes a reply a little past the deadline the
# server worked out. Only a reply delivered later than this, or than half the client's whole timeout if less (a 1 ms
# client takes nothing 5 ms late), is counted `late`; one that found its client gone is late from the deadline on.
LATE_GRACE_S = 0.005
# After a stop's last replies, how long the socket stays open to answer "server is shutting down" to the next requests
# of the clients those replies answered: a control loop sends again about 1 ms after its reply, and the socket closed
# under that request left it to time out (15 s) or lost (ReplyLostError). It ends as soon as each of them has sent.
STOP_GRACE_S = 0.2
RELAY_STOP_WAIT_S = 3.0  # a stopping relay's upstream call in flight is ended after this (shutdown_timeout_s if less)


class RequestLoop(Gathering):
    """What PolicyServer's socket thread does each turn (the ZeroMQ guide's ROUTER-to-worker pattern): move messages,
    answer built-in endpoints inline, hand policy work to the worker; it never waits for the policy, and runs only
    the get_action calls of a policy measured cheap itself (worker.InlineGate)."""

    def __init__(self, server: "PolicyServer", runner: JobRunner, window: GatherWindow, gate: InlineGate) -> None:
        self._server = server  # its settings, endpoints, counters, transport and worker are read live
        self._runner = runner
        self._gate = gate  # says when a get_action job is cheap enough to run here rather than on the worker
        super().__init__(window)
        self.queued_bytes: Dict[bytes, int] = {}  # per connection: bytes of requests not yet answered
        self.queued_counts: Dict[bytes, int] = {}  # per connection: requests not yet answered
        self.queued_requests = 0
        self.queued_bytes_total = 0  # bytes of all requests not yet answered
        self._queued_deadline = math.inf  # no request waiting (gathered or queued) has an earlier deadline
        self._inline_job = 0  # number of the job now running on this thread (0: none), for abandon_inline_after
        self._inline_jobs = 0
        self._arrived_during_inline = False  # a request came while the last inline job ran: another client waits
        # Held to leave an inline job and to take the socket from one (release_socket_of_stuck_inline_call): once a
        # job has left, the socket is never taken; once taken, the job's thread never touches it again.
        self._inline_lock = threading.Lock()
        self.socket_taken = False
        self.abandoning_inline = False  # set when a stop gave up on the inline job: the signal handler raises
        # The stop signal whose handler is the server's while run() serves on the main thread (the first of SIGINT,
        # SIGTERM, SIGHUP this process does not ignore), sent to interrupt the inline job; None: none is handled
        self.interrupt_signal: Optional[int] = None
        self.stop_waiting = False  # set by a second stop signal: shut_down gives up on a running call at once
        # Replies sent after a stop came, per connection, less the requests of it refused since: their clients are about
        # to send again (a count: the robots behind one proxy share its connection, as a DEALER's requests do)
        self._answered_in_stop: Dict[bytes, int] = {}

    def turn(self) -> None:
        """Wait for a message or a finished job (at most until the gather window closes), then serve what came."""
        transport = self._server._transport
        assert transport is not None
        inbound, woken = transport.poll(self._poll_timeout_ms())
        if woken:
            self.send_replies()
        if inbound:
            self._receive_burst()
        self.dispatch_pending()

    def _poll_timeout_ms(self) -> int:
        poll_interval_ms = self._server.poll_interval_ms
        worker = self._server._worker
        if not self.pending or (worker is not None and worker.busy):
            # Gathered requests wait for a busy worker whatever the window says (dispatch_pending), and the worker's
            # finish wakes this poll: polling each millisecond meanwhile spun ~600 times a second for nothing.
            return poll_interval_ms
        wait_s = self._dispatch_by() - time.monotonic()
        return max(1, min(poll_interval_ms, int(wait_s * 1000.0) + 1))

    def _receive_burst(self) -> None:
        transport = self._server._transport
        worker = self._server._worker
        assert transport is not None
        ends_at = time.monotonic() + RECEIVE_BURST_S
        for turn in range(RECEIVE_BURST):
            if self.stopping:  # a kill or stop() in this burst: the rest are answered "shutting down" (shut_down)
                return
            if turn and time.monotonic() >= ends_at:
                return
            if worker is not None and worker.outbox:  # a reply finished meanwhile goes now, not after the burst's
                self.send_replies()  # decodes (two unauthenticated peers' refusals kept a burst going for seconds)
            frames = transport.receive(waiting=turn == 0)  # the first: the poll that called this saw it waiting
            if frames is None:
                return
            request = self._parse(frames)
            if request is not None:
                self._route(request)

    def _arrival(self, frames: List[Any]) -> Tuple[Request, List[Any]]:
        """A Request for received `frames`, not yet decoded, and the frames of its payload."""
        routing, payload = split_routing(frames)
        request = Request(routing, False, UNDECODED_ENDPOINT, None, client_of(routing), peer_address(payload),
                          time.monotonic(), 0.0, name_read=False)
        request.identity = frames[0].bytes if frames else b""
        self._server.stats.add("requests")
        return request, payload

    def _parse(self, frames: List[Any]) -> Optional[Request]:
        server = self._server
        request, payload = self._arrival(frames)
        received_at = request.received_at
        try:
            request.multipart = codec.is_multipart(payload)  # so that even a refused message is answered in kind
            if type(frames) is OverlongMessage:  # its first frames were kept: the magic frame among them
                raise RequestError(f"message has {frames.total} frames; this server reads at most {MAX_MESSAGE_FRAMES} "
                                   "(one per array, and an observation has tens); it was not decoded")
            request.nbytes = sum(len(frame) for frame in payload)
            self._refuse_removed_key(frames)  # before the decode: a revoked robot's requests cost no more
            if request.nbytes >= PRECHECK_MIN_BYTES:
                self._check_byte_budgets(request)  # refused undecoded: a flood's decode copies cost as much again
            envelope, request.wire_format = decode_payload(payload, server.max_message_bytes, request.nbytes)
            request.multipart = request.wire_format == WIRE_MULTIPART
            envelope = check_envelope(envelope)
            request.endpoint = envelope.get("endpoint", "get_action")  # a refusal below names it (logs, metrics)
            request.name_read = True
            check_token(envelope, server.api_token)
            request.data = envelope.get("data", {}) if "data" in envelope else {}
            adopt_n15_get_action(request)
            try:
                request.session = session_of(envelope, server.limits.max_session_id_chars) or request.session
            finally:  # refused by a field below or not, its client asks: by its connection when session_id is bad
                if request.endpoint == "get_action":
                    self._note_client(request)
            request.continues_session = continues_session(envelope)
            request.asks_upstream = asks_upstream(envelope)
            request.deadline = deadline_of(envelope, received_at)
            request.reads_number_keys = client_reads_number_keys(envelope, request.multipart)
            return request
        except Exception as exc:
            peeked = None if request.name_read else peek_endpoint(payload)
            if peeked is not None:  # refused undecoded: its logs and metrics name it if they can
                request.endpoint, request.name_read = peeked, True
            self.reply_error(request, exc)
            return None

    def _refuse_removed_key(self, frames: List[Any]) -> None:
        """RequestError for a request whose connection's CURVE key was removed from the authorized keys since its
        handshake (which alone checked it before): revoking a robot no longer waits for it to reconnect."""
        transport = self._server._transport
        security = transport.security if transport is not None else None
        if security is not None and security.authorized is not None:
            problem = security.authorized.removed_key_problem(connection_user_id(frames))
            if problem is not None:
                raise RequestError(problem)

    def _route(self, request: Request) -> None:
        """Answer a built-in endpoint now, or queue the request for the worker (gathering batches)."""
        server = self._server
        if request.endpoint in INLINE_ENDPOINTS and server.is_built_in(request.endpoint) and server.answers_now(
                request.endpoint, request.connection, request.asks_upstream):
            self._reply_now(request)
            return
        try:
            if request.endpoint not in server._endpoints:
                raise unknown_endpoint(request.endpoint, server.endpoints)
            if request.endpoint == "get_action" and isinstance(request.data, dict):
                work_limits.check_observation(
                    request.data.get("observation"), server.limits, server.flat_language_keys,
                    server.token_counter,
                )
                request.wants_timing = timing_requested(request.data)  # refused here unless bool-like
            elif request.endpoint == "reset" and server.is_built_in("reset"):
                refuse_reset_timing(request.data)
            request.decode_ms = (time.monotonic() - request.received_at) * 1000.0  # the decode and these checks
            self._admit(request)
        except InlineCallAbandoned:
            raise
        except BaseException as exc:  # a policy's SystemExit in its token counter too: answered, serving goes on
            self.reply_error(request, exc)
            return
        if request.endpoint in SESSION_ENDPOINTS and server._policy_uses_sessions:
            # its wait in the queue is no idleness of its client (answered in JobRunner.execute)
            request.session_in_flight = server.sessions.arrived(request.session)
        shape = batching.batch_shape(request.data) if request.endpoint == "get_action" and server.batching_enabled else None
        if shape is not None:
            self._note_straggler(request)
            # Worked out once, on arrival: a round's dispatch groups by it, its merge and every turn count its rows.
            request.batch_shape = shape
            request.rows = max(shape[1], 1)
            request.batched_for = server.policy
            self._gather(request)
            return
        ahead = self._gathered_before(request)
        if ahead:  # keep one connection's (and one session's) requests in arrival order
            self._hand_over(ahead, len(ahead))
        self._submit([request])

    def _check_byte_budgets(self, request: Request, make_room: bool = False) -> None:
        """RequestError (counted as refused) when the request's bytes would pass its connection's budget or the
        queue's; the first request of an idle connection and queue always fits. A connection with nothing waiting
        that meets the queue's budget is let through, `make_room` (after its decode) by refusing others' requests
        (_room_made)."""
        server = self._server
        budget = server.limits.max_client_queued_bytes or min(server.max_message_bytes, DEFAULT_CLIENT_QUEUED_BYTES)
        max_bytes = server.limits.max_queued_bytes
        queued = self.queued_bytes.get(request.identity, 0)
        if ((queued and queued + request.nbytes > budget)
                or (self.queued_bytes_total and self.queued_bytes_total + request.nbytes > max_bytes)):
            self._free_expired_places()
            queued = self.queued_bytes.get(request.identity, 0)
        if queued and queued + request.nbytes > budget:
            server.stats.add("refused")
            request.outcome = "refused"
            raise RequestError(
                f"this connection already has {queued} bytes of requests waiting; a further {request.nbytes} bytes "
                f"would exceed its budget of {budget} bytes (--max-client-queued-mb; wait for the replies)"
            )
        if self.queued_bytes_total and self.queued_bytes_total + request.nbytes > max_bytes:
            if not queued and self._room_made(
                self.queued_bytes, request.nbytes, self.queued_bytes_total + request.nbytes - max_bytes,
                lambda evicted: evicted.nbytes,
                lambda: f"server busy: {self.queued_bytes_total} bytes of requests are waiting for the policy and a "
                        f"further {request.nbytes} came from a connection with none, over the {max_bytes} in all "
                        "(--max-queued-mb)", make_room,
            ):
                return
            server.stats.add("refused")
            request.outcome = "refused"
            raise RequestError(f"server busy: {self.queued_bytes_total} bytes of requests are waiting for the policy; a "
                               f"further {request.nbytes} bytes would exceed its budget of {server.limits.max_queued_bytes} "
                               "bytes (--max-queued-mb); try again")

    def _admit(self, request: Request) -> None:
        """Count the request against its connection's budgets (bytes and requests) and the queue; refuse it when
        over any."""
        server = self._server
        self._check_byte_budgets(request, make_room=True)
        if (self.queued_counts.get(request.identity, 0) >= server.limits.max_client_queued_requests
                or self.queued_requests >= server.limits.max_queued_requests):
            self._free_expired_places()
        queued = self.queued_bytes.get(request.identity, 0)
        waiting = self.queued_counts.get(request.identity, 0)
        if waiting >= server.limits.max_client_queued_requests:
            server.stats.add("refused")
            request.outcome = "refused"
            raise RequestError(
                f"this connection already has {waiting} requests waiting for their replies; this server queues at most "
                f"{server.limits.max_client_queued_requests} per connection (--max-client-queued-requests; wait for "
                "the replies)"
            )
        max_requests = server.limits.max_queued_requests
        if self.queued_requests >= max_requests and not (waiting == 0 and self._room_made(
            self.queued_counts, 1, self.queued_requests + 1 - max_requests, lambda evicted: 1,
            lambda: f"server busy: {self.queued_requests} requests are waiting for the policy, at most {max_requests} "
                    "in all (ServerLimits.max_queued_requests)", True,
        )):
            server.stats.add("refused")
            request.outcome = "refused"
            raise RequestError(f"server busy: {self.queued_requests} requests are waiting for the policy; this server "
                               f"queues at most {max_requests} in all (ServerLimits.max_queued_requests); try again")
        self.queued_bytes_total += request.nbytes
        self.queued_bytes[request.identity] = queued + request.nbytes
        self.queued_counts[request.identity] = waiting + 1
        self.queued_requests += 1
        request.admitted = True
        if request.deadline is not None and request.deadline < self._queued_deadline:
            self._queued_deadline = request.deadline

    def _free_expired_places(self) -> None:
        """At a cap, before a newcomer is refused or others' requests are refused to make room for it: answer the
        requests not yet started (gathered or queued) whose client's deadline has passed as not run (expired), which
        frees their places. They are looked for only once the earliest deadline waiting has passed."""
        now = time.monotonic()
        if now <= self._queued_deadline:
            return
        worker = self._server._worker
        with worker.paused() if worker is not None else contextlib.nullcontext():  # no job starts between look and take
            waiting = self.pending + (worker.waiting_requests() if worker is not None else [])
            expired = {id(request) for request in waiting if request.expired(now)}
            self._queued_deadline = min(
                (r.deadline for r in waiting if r.deadline is not None and id(r) not in expired), default=math.inf)
            if not expired:
                return
            taken = [request for request in self.pending if id(request) in expired]
            self.pending = [request for request in self.pending if id(request) not in expired]
            if worker is not None:
                taken += worker.take_where(lambda request: id(request) in expired)
        self._answer_expired(taken, now)

    def _answer_expired(self, requests: List[Request], now: float) -> None:
        """Answer requests not yet started whose client's deadline passed as they waited: not run (expired)."""
        for request in requests:
            self._send(*self._runner.expired_reply(request, now))
            self._runner.release_session(request)  # never reached execute: its session idles again

    def _room_made(self, held: Dict[bytes, int], newcomer: int, needed: int, size: Callable[[Request], int],
                   busy: Callable[[], str], evict: bool) -> bool:
        """True when a request from a connection with nothing waiting may be admitted past a queue-wide cap:
        connections take turns, so a full queue is made room in by refusing the newest requests not yet started of the
        connection holding the most (`held`: requests or bytes, `size` of each), while that holds more than the
        newcomer would (`newcomer`), until `needed` is freed. Each is answered `busy` (the cap's words) and "try again".
        When that cannot free `needed`, none is refused (they were lost for a newcomer refused all the same). `evict`
        False: whether room could be made, evicting nothing (a large message, before its decode)."""
        worker = self._server._worker
        with worker.paused() if worker is not None else contextlib.nullcontext():  # no job starts between plan and take
            evicted = self._room_plan(held, newcomer, needed, size)
            if evicted is None or not evict:
                return evicted is not None
            gathered = {id(request) for request in self.pending}
            refused = {id(request) for request in evicted}
            self.pending = [request for request in self.pending if id(request) not in refused]
            for request in evicted:
                if id(request) not in gathered:
                    assert worker is not None
                    taken = worker.take_newest_of(request.identity)
                    assert taken is request  # the plan took each holder's newest first, and no job started meanwhile
        # worded once, before a reply releases its bytes: every request refused for this newcomer is told the same
        message = (f"{busy()}; this connection had the most waiting, and its newest request made room for one from a "
                   "connection with none; try again")
        for request in evicted:
            self._server.stats.add("refused")
            request.outcome = "refused"
            self.reply_error(request, RequestError(message))
            self._runner.release_session(request)  # never reached execute: its session idles again
        return True

    def _room_plan(self, held: Dict[bytes, int], newcomer: int, needed: int,
                   size: Callable[[Request], int]) -> Optional[List[Request]]:
        """The requests _room_made would refuse to free `needed`, in that order; None when they cannot free it."""
        left = dict(held)
        waiting: Dict[bytes, List[Request]] = {}  # each holder's requests that may be refused, newest first
        plan: List[Request] = []
        while needed > 0:
            candidates = [identity for identity, amount in left.items()
                          if amount > newcomer and waiting.get(identity) != []]
            if not candidates:
                return None
            holder = max(candidates, key=left.__getitem__)
            if holder not in waiting:
                waiting[holder] = self._waiting_newest_first(holder)
                continue
            request = waiting[holder].pop(0)
            plan.append(request)
            left[holder] -= size(request)
            needed -= size(request)
        return plan

    def _waiting_newest_first(self, identity: bytes) -> List[Request]:
        """The requests of connection `identity` that have not started and may be refused, newest first: the gathered
        ones, then those in the worker's queue (a batch with other connections' requests is never split)."""
        worker = self._server._worker
        gathered = [request for request in reversed(self.pending) if request.identity == identity]
        return gathered + (worker.newest_waiting_of(identity) if worker is not None else [])

    def _release_admission(self, request: Request) -> None:
        if not request.admitted:
            return
        request.admitted = False
        self.queued_requests -= 1
        self.queued_bytes_total -= request.nbytes
        left = self.queued_bytes.get(request.identity, 0) - request.nbytes
        if left > 0:
            self.queued_bytes[request.identity] = left
        else:
            self.queued_bytes.pop(request.identity, None)
        waiting = self.queued_counts.get(request.identity, 0) - 1
        if waiting > 0:
            self.queued_counts[request.identity] = waiting
        else:
            self.queued_counts.pop(request.identity, None)

    def _submit(self, job: Job) -> None:
        """Hand a job to the worker, or run it here when it is a get_action, recent ones were cheap (InlineGate), the
        worker is idle and no other request waits: then the two thread hand-offs would cost as much as the call."""
        worker = self._server._worker
        assert worker is not None
        # A get_action registered in place of the built-in one runs on the worker, as every registered handler does.
        # Never once a stop came: nothing could interrupt a call here where run() is not on the main thread.
        if (self._gate.open and not worker.busy and only_get_action(job) and self._server.is_built_in("get_action")
                and not self.stopping and self._socket_idle()):
            self._run_inline(job)
        else:
            worker.submit(job)

    def _socket_idle(self) -> bool:
        """True when no request waits unread, nor came while the last inline job ran (its client, answered next,
        sends again meanwhile): a call here would leave the other client's request unread, its wait in no stage."""
        arrived, self._arrived_during_inline = self._arrived_during_inline, False
        return not arrived and not self._input_waiting()

    def _input_waiting(self) -> bool:
        transport = self._server._transport
        return transport is not None and transport.has_input()

    def _run_inline(self, job: Job) -> None:
        self.send_replies()  # the worker's finished replies go first, in the order their requests came
        self._server.stats.add("inline_jobs")
        self._inline_jobs += 1
        self._inline_job = self._inline_jobs
        abandoned: Optional[InlineCallAbandoned] = None
        try:
            replies = self._runner.execute(job)
        except InlineCallAbandoned as exc:  # a stop gave up on it (abandon_inline_after): answer, then let run() end
            abandoned = exc
            replies = [(request, self._runner.error_frames(request, RequestError(self.not_finished_message(request))))
                       for request in job]
        except BaseException as exc:  # execute answers every failure itself (a policy's SystemExit too); should it
            # fail all the same, each request is still answered as an internal error, as the worker does
            replies = [(request, self._runner.error_frames(request, exc)) for request in job]
        finally:
            with self._inline_lock:
                self._inline_job = 0
                taken = self.socket_taken
        if taken:  # close() freed the port while the call ran: the socket is gone, and with it whom to answer
            raise InlineCallAbandoned("close() released the socket while a policy call ran on the serving thread")
        self._arrived_during_inline = self._input_waiting()
        for request, frames in replies:
            self._send(request, frames)
        self._served([request for request, _ in replies] if abandoned is None else [])  # those told "shutting down"
        if abandoned is not None:
            raise abandoned

    def release_socket_of_stuck_inline_call(self) -> bool:
        """For close(), from another thread, when a stop has waited shutdown_timeout_s for run() in vain: if the
        serving thread is inside a policy call (inline), close the socket and the metrics endpoint here, so the port
        is free, and True; that thread then never touches them again and its run() ends when the call returns."""
        with self._inline_lock:
            if not self._inline_job:
                return False
            self.socket_taken = True
            with self._server._lifecycle:
                self._server._release()
            return True

    def not_finished_message(self, request: Request) -> str:
        """The answer to a request whose policy call a stop gave up on."""
        if self.stop_waiting:
            return f"{SHUTTING_DOWN}; '{request.endpoint}' was still running at a second stop signal (not finished)"
        return (f"{SHUTTING_DOWN}; '{request.endpoint}' did not finish within "
                f"{self._server.shutdown_timeout_s:g} s")

    @property
    def stopping(self) -> bool:
        """True once a kill, stop signal or stop() has asked run() to end."""
        return not self._server._running or self._server._stop_requested.is_set()

    @property
    def inline_running(self) -> bool:
        """True while a job runs on the socket thread."""
        return self._inline_job != 0

    def abandon_inline_after(self, timeout_s: float) -> None:
        """At a stop signal (main thread, whose run() this is): if a job is running on this thread, give it
        `timeout_s` to finish, as a worker's call gets, then interrupt it with `interrupt_signal`, on which the
        handler raises InlineCallAbandoned (see `abandoning_inline`). A call stuck in C code that ignores signals stays
        stuck; so does any call where the process ignores every stop signal (no handler of ours to raise)."""
        job = self._inline_job
        if not job:
            return

        def interrupt() -> None:
            if self._inline_job != job:
                return
            signum = self.interrupt_signal
            if signum is None:  # a signal this process ignores is discarded by the kernel: nothing would raise
                logger.warning("a policy call is still running on the main thread after %g s and cannot be "
                               "interrupted: this process ignores (or its main thread blocks) SIGINT, SIGTERM and "
                               "SIGHUP, so no signal reaches the server's handler; run() returns when the call does "
                               "(close() from another thread frees the port meanwhile; SIGKILL ends the process)",
                               timeout_s)
                return
            logger.warning("a policy call is still running after %g s; shutting down without it", timeout_s)
            self.abandoning_inline = True
            if hasattr(signal, "pthread_kill"):  # a real signal also ends a blocking wait such as time.sleep
                signal.pthread_kill(threading.main_thread().ident, signum)
            else:  # Windows: the handler runs at the call's next Python instruction
                _thread.interrupt_main(signum)

        def wait_then_interrupt() -> None:
            block_stop_signals()  # a second Ctrl-C must reach the main thread, not this one
            time.sleep(timeout_s)
            interrupt()

        threading.Thread(target=wait_then_interrupt, name="gr00t-stop-timer", daemon=True).start()

    def _reply_now(self, request: Request) -> None:
        """Serve a built-in endpoint on the socket thread (never touches the policy's compute)."""
        reply = self._runner.serve_one(request)
        if reply is not None:
            self._send(*reply)

    def send_replies(self) -> None:
        """Send every reply the worker has finished."""
        worker = self._server._worker
        assert worker is not None
        sent: List[Request] = []
        while worker.outbox:
            request, frames = worker.outbox.popleft()
            self._send(request, frames)
            sent.append(request)
        if sent:
            self._served(sent)

    def _served(self, requests: List[Request]) -> None:
        """Note that the policy's replies to `requests` went out; after a stop, their clients are waited for
        (shut_down)."""
        self._served_at = time.monotonic()
        if self.stopping:
            for request in requests:
                self._answered_in_stop[request.identity] = self._answered_in_stop.get(request.identity, 0) + 1

    def _send(self, request: Request, frames: List[Any]) -> None:
        self._release_admission(request)
        transport = self._server._transport
        sent_at = time.monotonic()  # judged as it goes out: a slow send is no reason to call it late
        delivered = transport.send(request.routing, frames, request.peer) if transport is not None else True
        whole = request.whole_timeout_s
        grace = 0.0 if not delivered or whole is None else min(LATE_GRACE_S, whole / 2)
        if request.outcome == "ok" and request.expired(sent_at - grace):
            request.outcome = "late"  # its client had given up: the work was for nobody, not a success
            self._server.stats.add("late")
        elif request.outcome == "ok" and not delivered:
            request.outcome = "undelivered"  # its client had gone (no deadline said so: a reference client's timeout)
            self._server.stats.add("undelivered")
        self._server._metrics.request_done(request.endpoint if request.name_read else None, request.outcome)

    def reply_error(self, request: Request, exc: BaseException) -> None:
        """Answer `request` with a bounded error for `exc`."""
        self._send(request, self._runner.error_frames(request, exc))

    def shut_down(self, worker: PolicyWorker) -> None:
        """Answer the requests that never reached the policy, let a running call finish and send its reply; whatever
        arrives meanwhile, and for up to STOP_GRACE_S after the last replies, is answered "server is shutting down" at
        once rather than left to time out."""
        waiting = [request for job in worker.take_queued() for request in job] + self.pending
        self.pending = []
        for request in waiting:
            self.reply_error(request, RequestError(f"{SHUTTING_DOWN}; '{request.endpoint}' {NOT_RUN_AT_STOP}"))
            self._runner.release_session(request)  # never reached execute: its session idles again (a later run())
        worker.finish()
        timeout_s = self._server.shutdown_timeout_s
        deadline = time.monotonic() + timeout_s
        transport = self._server._transport
        # A relay's upstream call in flight gets RELAY_STOP_WAIT_S to be answered (as a policy call gets the whole
        # timeout), then ends, rather than waiting out its robot's budget on an upstream that is down
        interrupt_at = time.monotonic() + min(timeout_s, RELAY_STOP_WAIT_S)
        while worker.alive:
            if self.stop_waiting or time.monotonic() >= interrupt_at:  # again each turn: a call begun since too
                self._server.interrupt_upstream_calls()
            left_s = deadline - time.monotonic()
            given_up = self.stop_waiting and worker.running_a_call  # an idle worker is ending anyway: join it
            if left_s <= 0 or given_up:
                if given_up:
                    logger.warning("a second stop signal: shutting down without the policy call still running")
                else:
                    logger.warning("a policy call is still running after %g s; shutting down without it", timeout_s)
                self.send_replies()  # what the worker finished goes first; then the call it is stuck in is answered
                for request in worker.abandon_running() or []:
                    self.reply_error(request, RequestError(self.not_finished_message(request)))
                break
            if transport is None:
                until_interrupt_s = interrupt_at - time.monotonic()
                worker.join(max(0.0, min(left_s, until_interrupt_s) if until_interrupt_s > 0 else left_s))
                continue
            inbound, woken = transport.poll(min(self._server.poll_interval_ms, int(left_s * 1000.0) + 1))
            if woken:
                self.send_replies()
                worker.join(0.05)  # the worker ends right after its last job's replies
            if inbound:
                self._refuse_arrivals()
        self.send_replies()
        self._refuse_arrivals()
        self._refuse_answered_clients_next_requests()

    def _refuse_answered_clients_next_requests(self) -> None:
        """Keep answering arrivals "server is shutting down" until every client the policy answered since the stop
        has sent again (as many requests from a connection as it had replies), or STOP_GRACE_S has passed (one that
        closed or stopped sending holds it that long)."""
        owed, transport = self._answered_in_stop, self._server._transport
        ends_at = time.monotonic() + STOP_GRACE_S
        while owed and transport is not None:
            left_s = ends_at - time.monotonic()
            if left_s <= 0:
                break
            inbound, _ = transport.poll(int(left_s * 1000.0) + 1)
            if inbound:
                self._refuse_arrivals()
        owed.clear()  # a later run() starts with none

    def _refuse_arrivals(self) -> None:
        """Answer the requests waiting on the socket (a burst at most) with "server is shutting down"."""
        transport = self._server._transport
        if transport is None:
            return
        for _ in range(RECEIVE_BURST):  # bounded: a flood of requests must not hold the stop up
            frames = transport.receive()
            if frames is None:
                return
            # Refused undecoded, as a byte budget refuses (answered in kind, its endpoint peeked): decoding a request
            # of many small items took seconds, and a few of them queued held the stop up for as long, each decoded
            # only to be told this.
            request, payload = self._arrival(frames)
            request.multipart = codec.is_multipart(payload)
            peeked = peek_endpoint(payload)
            if peeked is not None:
                request.endpoint, request.name_read = peeked, True
            self.reply_error(request, RequestError(f"{SHUTTING_DOWN}; '{request.endpoint}' {NOT_RUN_AT_STOP}"))
            owed = self._answered_in_stop.get(request.identity, 0)
            if owed > 1:
                self._answered_in_stop[request.identity] = owed - 1
            else:
                self._answered_in_stop.pop(request.identity, None)
