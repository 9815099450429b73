"""Job execution for PolicyServer: what the policy worker does with a job (and the socket thread with a built-in
endpoint): drop expired requests (and those too near their deadline for a call), evict idle sessions, call
endpoints alone or as one batch; ReplyFrames (reply_frames) encodes the replies."""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from gr00t_client.chunking_envs import observation_batch_size
from gr00t_client.client_errors import NOT_RERUN_FOR_DEADLINE  # DeadlineNotRunError on the client: same words
from gr00t_client.policy import BasePolicy, NonFiniteActionError, ObservationError, rows_checked

from . import batching, limits as work_limits
from .batching import GatherWindow
from .endpoints import Endpoint, RateLimitedLog, _safe_text, log_text, named_session
from .messages import CONNECTION_SESSION_PREFIX, Request, RequestError, unknown_endpoint
from .reply_frames import ReplyFrames
from .sessions import SESSION_ENDPOINTS, SessionTable, session_dropper
from .transport import HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS
from .worker import InlineCallAbandoned, InlineGate, Job, Reply, in_job_order, only_get_action
from .wrappers import policy_chain

if TYPE_CHECKING:
    from .server import PolicyServer

logger = logging.getLogger("gr00t_server.serving.server")  # PolicyServer's log: the split renamed no logger

WARNED_SESSIONS_KEPT = 4096  # connection-keyed sessions warned of as started without a reset (their warning is once)
POLICY_STAGE_KEYS = ("preprocess_ms", "model_ms", "postprocess_ms")  # a policy's last_timing keys server_timing carries


def policy_stages(policy: Any) -> Dict[str, float]:
    """The policy's own stage times of the call this thread just made (Gr00tPolicy's `last_timing`, read through
    wrappers' `.policy`); {} for a policy that reports none."""
    for link in policy_chain(policy):
        stages = getattr(link, "last_timing", None)
        if isinstance(stages, dict):
            return {k: float(v) for k, v in stages.items() if k in POLICY_STAGE_KEYS and isinstance(v, (int, float))}
    return {}


def call_rows(request: Request, result: Any = None) -> int:
    """The rows of a get_action's call: its action's leading axis once it returned one (a replay serves the rows its
    session or options ask for, whatever the observation), else the observation's: counted on arrival when gathered,
    else its batch size (at least 1)."""
    rows = action_rows(result)
    if rows > 0:
        return rows
    if request.batch_shape is not None:
        return request.rows
    observation = request.data.get("observation") if isinstance(request.data, dict) else None
    return max(1, observation_batch_size(observation))


def call_cost(request: Request) -> batching.CallCost:
    """The cost signature of a get_action's call (batching.cost_signature), worked out once per request."""
    if request.call_cost is None:
        request.call_cost = batching.cost_signature(request.data, request.batch_shape)
    return request.call_cost


def action_rows(result: Any) -> int:
    """The leading axis of the first array of a get_action result's action ([action, info] or (action, info)); -1
    without one."""
    action = result[0] if isinstance(result, (list, tuple)) and result else None
    return observation_batch_size(action) if isinstance(action, dict) else -1


class JobRunner(ReplyFrames):
    """Runs a PolicyServer's jobs: calls each request's endpoint (get_action batches as one merged call) and turns
    the result, or the failure, into reply frames. It reads the server's policy, endpoints and counters live."""

    def __init__(self, server: "PolicyServer", window: GatherWindow, gate: InlineGate) -> None:
        super().__init__(server)
        self._window = window  # batching's gather window learns how long policy calls take
        self._gate = gate  # learns how long get_action jobs take, to let cheap ones run on the socket thread
        self._local = threading.local()  # the request each thread is serving (socket thread, worker)
        # Once per such session (it is held after its first call), and at most a few a minute for a farm of them
        self._fresh_connection_sessions = RateLimitedLog(logger, per_window=5, window_s=60.0)
        # the sessions warned of (the table holds a session only once a call of it succeeded): the last few thousand
        self._warned_sessions: "OrderedDict[str, None]" = OrderedDict()

    def flush_logs(self) -> None:  # overrides ReplyFrames.flush_logs
        """Report the warnings counted but not logged: refusals, internal errors, fresh connection sessions."""
        super().flush_logs()
        self._fresh_connection_sessions.flush()

    @property
    def current(self) -> Optional[Request]:
        """The request this thread is serving (handlers read the peer and session from it)."""
        return getattr(self._local, "request", None)

    @current.setter
    def current(self, request: Optional[Request]) -> None:
        self._local.request = request

    def execute(self, job: Job) -> List[Reply]:
        """Run one job (on the worker, or a cheap get_action on the socket thread): drop expired requests, evict idle
        sessions, call the policy, encode. Every request of the job gets exactly one reply, whatever fails: a policy's
        SystemExit, KeyboardInterrupt or CancelledError too (answered as an internal error; the server goes on). The
        replies come in the job's order, each connection's in the order it sent its requests (in_job_order)."""
        started = time.monotonic()
        replies: List[Reply] = []
        try:
            self._execute(job, started, replies)
        except InlineCallAbandoned:  # the socket loop answers the job itself and ends run()
            raise
        except BaseException as exc:
            answered = {id(request) for request, _ in replies}
            replies.extend((request, self.error_frames(request, exc)) for request in job if id(request) not in answered)
        finally:
            for request in job:
                self.release_session(request)
        if only_get_action(job) and self._server.is_built_in("get_action"):  # a replaced one never runs inline
            self._gate.observe(time.monotonic() - started, served=any(request.outcome == "ok" for request in job))
        return in_job_order(job, replies)

    def release_session(self, request: Request) -> None:
        """Count `request` answered in its session's requests waiting or running (SessionTable.arrived): its session
        idles from now once none is left. Every path that answers a counted request calls it (execute, shut_down)."""
        if request.session_in_flight:
            request.session_in_flight = False
            self._server.sessions.answered(request.session)

    def _execute(self, job: Job, now: float, replies: List[Reply]) -> None:
        live = self._in_time(job, now, replies)
        sessions = self._server._policy_uses_sessions
        if sessions:
            live = self._admit_sessions(live, replies)
        if len(live) > 1 and self._merge_holds(live):
            self._run_group(live, replies)
        else:  # one request, or gathered ones that may no longer share a call: each alone, in job order
            for request in live:
                replies.append(self.serve_one(request))
        if sessions:
            self._take_in_sessions(live)

    def _merge_holds(self, requests: List[Request]) -> bool:
        """Whether requests gathered for a merged call may still share one: batching holds for the policy served now
        (batching_enabled: built-in get_action, no sessions) and it is the policy they were gathered for. A policy
        swapped in or a get_action replaced while they waited serves each alone (serve_one), as a request arriving
        now would be: a merged call of a replay has no session to pass, and a merged call would skip a replacement."""
        policy = self._server.policy
        return self._server.batching_enabled and all(request.batched_for is policy for request in requests)

    def _in_time(self, requests: List[Request], now: float, replies: List[Reply]) -> List[Request]:
        """The requests whose reply can still reach their client; the others are answered as expired: their deadline
        has passed or, for a get_action, is nearer than the least a call of the rows still to run can take by the
        policy's recent calls of its cost signature (GatherWindow.least_call_seconds, call_cost: another client's
        16-step calls say nothing of a 1-step one), so their call would end after the client gave up (in
        a timeout storm 85% of calls were so). The least, not the average: an average of batches of 8 and of 1 would
        refuse a lone request that had time, and a refused request costs its robot an action where a computed one
        costs a call (then counted `late`). Never when nothing is known nor for a request without a deadline."""
        rows = sum(call_rows(request) for request in requests if not request.expired(now))
        live: List[Request] = []
        for request in requests:
            least = self._least_call_seconds(request, rows, now)
            if request.expired(now, least):
                replies.append(self._expired_reply(request, rows, now, least))
                if request.whole_timeout_s is not None and request.whole_timeout_s < least:
                    # its client's whole timeout is shorter than recent calls: only a call can tell whether calls still
                    # take that long (a cold start's did once), so a later get_action runs as a probe
                    self._window.note_refused()
            else:
                live.append(request)
        return live

    def _least_call_seconds(self, request: Request, rows: int, now: float) -> float:
        if request.endpoint != "get_action":
            return 0.0
        return self._window.least_call_seconds(rows, now, request.whole_timeout_s, call_cost(request))

    def expired_reply(self, request: Request, now: float) -> Reply:
        """The answer to a request not yet started whose client's deadline has passed, found while it waited (gathered
        or queued): as when its turn comes (counted as expired)."""
        return self._expired_reply(request, call_rows(request), now, 0.0)

    def _expired_reply(self, request: Request, rows: int, now: float, least_call_s: float) -> Reply:
        """The answer to a request whose client's deadline passed, or was too near, when its turn came (counted as
        expired); or came again after a merged call that ran and failed: then an error of that call, which ran (its
        policy stage that call's), not `expired`, which says "not run"."""
        reason = "the client's deadline passed while it waited"
        if not request.expired(now):
            assert request.deadline is not None
            reason = (f"the client's deadline was {(request.deadline - now) * 1000.0:.0f} ms away when its turn came, "
                      f"too close for a policy call (by recent calls, one of {rows} row(s) takes at least "
                      f"{least_call_s * 1000.0:.0f} ms; calls of its kind: "
                      f"{batching.describe_cost(self._window.kind_of(call_cost(request)))})")
        logger.debug("dropped %s from %s: %s", log_text(request.endpoint), request.peer, reason)
        if request.failed_call is not None:
            started, policy_ms = request.failed_call
            error = RequestError(f"'{request.endpoint}' ran in a batched policy call that failed (on its own input or "
                                 f"another request's) and {NOT_RERUN_FOR_DEADLINE}: {reason}")
            return request, self.error_frames(request, error, log=False, policy_started=started, policy_ms=policy_ms)
        self._server.stats.add("expired")
        request.outcome = "expired"
        return request, self.error_frames(request, RequestError(f"'{request.endpoint}' was not run: {reason}"), log=False)

    def _admit_sessions(self, live: List[Request], replies: List[Reply]) -> List[Request]:
        """Forget the idle sessions first (so that the policy drops them before it makes room for a new one); answer
        a `get_action` of a session the server dropped with an error telling its client to reset, instead of serving
        it from a fresh start it did not ask for (a replay would jump back to episode 0 with no error). A use of a
        session counts only once its request succeeded (_take_in_sessions), as the policy's own table counts it:
        counted before the call, a refused request moved its session ahead in the server's table only, and the two
        tables then evicted different sessions for one newcomer. Returns the requests still to run."""
        sessions = self._server.session_table()
        self._evict_sessions(sessions.forget_idle())
        admitted: List[Request] = []
        for request in live:
            if request.endpoint == "get_action" and request.continues_session and not sessions.knows(request.session):
                # Our client's session, served before, that this server does not know: dropped longer ago than its
                # memory of dropped sessions reaches, its policy was replaced, or the server restarted. Not a new
                # session to start afresh (and not taken into the table, where it would evict another).
                reason: Optional[str] = ("this server no longer knows it: dropped longer ago than it remembers "
                                         "dropped sessions, its policy was replaced, or the server restarted")
            else:
                reason = sessions.dropped_reason(request.session) if request.endpoint == "get_action" else None
            request.takes_session = reason is None and request.endpoint in SESSION_ENDPOINTS
            if reason is None:
                self._warn_fresh_connection_session(request, sessions)
                admitted.append(request)
                continue
            replies.append((request, self.error_frames(request, RequestError(
                f"{named_session(request.session)} was dropped by the server ({reason}), and with it this "
                "client's place in the policy's state (a replay's episode and step); call reset to start it again"))))
        return admitted

    def _warn_fresh_connection_session(self, request: Request, sessions: SessionTable) -> None:
        """Log that a get_action starts a session keyed by its connection without a reset (a client without
        session_id, new or reconnected): the policy serves it from its initial state, so a robot that had a place
        (paused beyond the heartbeat, whose connection the server closed and libzmq reopened) silently loses it."""
        if (request.endpoint != "get_action" or not request.session.startswith(CONNECTION_SESSION_PREFIX)
                or sessions.knows(request.session) or request.session in self._warned_sessions):
            return
        self._warned_sessions[request.session] = None  # once per session, also while its calls keep failing
        if len(self._warned_sessions) > WARNED_SESSIONS_KEPT:
            self._warned_sessions.popitem(last=False)
        heartbeat_s = (HEARTBEAT_IVL_MS + HEARTBEAT_TIMEOUT_MS) / 1000.0
        self._fresh_connection_sessions.warning(
            "a get_action from %s without session_id and without a reset starts a new session of this connection: "
            "the policy serves it from its initial state (a replay: episode 0, step 0). A client without session_id "
            "that reconnected (its connection closed by a network blip, or by the server's heartbeat after it was "
            "stopped or paused in a debugger for about %g s) loses its place so; it should send a session_id, or "
            "reset after a reconnection", request.peer or "local", heartbeat_s)

    def _take_in_sessions(self, served: List[Request]) -> None:
        """Count a use of the session of each get_action or reset that succeeded (a reset takes a dropped session
        back), evicting the least recently used as needed."""
        sessions = self._server.sessions
        for request in served:
            if request.takes_session and request.outcome == "ok":
                self._evict_sessions(sessions.use(request.session, restart=request.endpoint == "reset"))

    def _evict_sessions(self, evicted: List[str]) -> None:
        drop = session_dropper(self._server.policy)
        for session in evicted:
            self._server.stats.add("sessions_evicted")
            if drop is not None:
                try:
                    drop(session)
                except Exception:
                    logger.exception("could not drop evicted session %s", log_text(session, 40))

    def _call(self, request: Request) -> Any:
        endpoint = self._server._endpoints.get(request.endpoint)
        if endpoint is None:
            raise unknown_endpoint(request.endpoint, self._server.endpoints)
        self.current = request
        try:
            if not endpoint.requires_input:
                return endpoint.handler()
            data = request.data
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise RequestError(f"'data' for '{request.endpoint}' must be a map of named arguments, got {type(data).__name__}")
            bad_keys = [key for key in data if not isinstance(key, str)]
            if bad_keys:
                raise RequestError(
                    f"'data' for '{request.endpoint}' must be a map of named arguments (str keys); got the "
                    f"{type(bad_keys[0]).__name__} key {bad_keys[0]!r:.40}"
                )
            if self._passes_options(request, endpoint):
                data = dict(data, options=self._server._with_session(data.get("options"), request))
            try:
                return endpoint.handler(**data)
            except TypeError as exc:
                if "argument" in str(exc) and exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                    # "PolicyServer._reset() got ...": the handler's Python name means nothing to a client
                    reason = re.sub(r"^[\w.<>]+\(\) ", "", str(exc))
                    try:
                        takes = ", ".join(inspect.signature(endpoint.handler).parameters) or "no arguments"
                    except (TypeError, ValueError):
                        takes = "?"
                    raise RequestError(f"bad arguments for '{request.endpoint}': {reason} (it takes: {takes})") from exc
                raise
        finally:
            self.current = None

    def _passes_options(self, request: Request, endpoint: Endpoint) -> bool:
        """True for a get_action or reset registered in place of the built-in one and taking options: they reach it
        as the built-in one passes them to the policy (_with_session), so that a handler forwarding them gets no
        return_server_timing (the server's option, which a strict policy refuses) and, while the policy keeps
        sessions, the client's session, to serve each client from its own state, not from one shared by all."""
        return (request.endpoint in SESSION_ENDPOINTS and endpoint.takes_options
                and not self._server.is_built_in(request.endpoint))

    def count_failed_call(self, exc: BaseException, requests: int, rows: int) -> bool:
        """Count a policy call that raised `exc`: it ran, whatever failed inside (a client's input found bad by the
        model's processing too), unless the policy's own input checks refused it before anything was computed
        (BasePolicy marks that error `refused_before_call`). True when counted."""
        if getattr(exc, "refused_before_call", False):
            return False
        self.count_call(requests, rows)
        return True

    def count_call(self, requests: int, rows: int) -> None:
        """Count one policy call (policy_calls, batch sizes, rows): the model ran, whatever became of its output."""
        self._server.stats.record_batch(requests, rows)
        self._server._metrics.observe_batch(requests)

    def serve_one(self, request: Request) -> Reply:
        """Call the request's endpoint and encode its reply (or its error)."""
        started = time.monotonic()
        try:
            if request.endpoint == "get_action" and not self._server.is_built_in("get_action"):
                result = self._call_replaced_action(request)
            else:
                result = self._call(request)
        except InlineCallAbandoned:
            raise
        except BaseException as exc:  # a policy's SystemExit or KeyboardInterrupt too: answered, the server goes on
            return request, self.error_frames(request, exc, policy_started=started if request.call_ran else None)
        policy_ms = (time.monotonic() - started) * 1000.0
        rows = 1
        if request.endpoint == "get_action":
            rows = call_rows(request, result)
            self._window.observe_call(policy_ms / 1000.0, rows, call_cost(request))
        return self.result_frames(request, result, policy_ms, 1, rows, policy_started=started)

    def _call_replaced_action(self, request: Request) -> Any:
        """Call a get_action registered in place of the built-in one, counted as the built-in one is: one policy call
        of its rows, returned or failed inside, with the policy's own stages when it reports new ones (a handler that
        did not call the policy leaves this thread's earlier call's)."""
        policy = self._server.policy  # read once: a policy swapped in meanwhile must not lend the call its stages
        earlier = policy_stages(policy)
        try:
            result = self._call(request)
        except RequestError:  # the server refused its arguments: the handler never ran
            raise
        except BaseException as exc:
            request.call_ran = self.count_failed_call(exc, 1, call_rows(request))
            raise
        self.count_call(1, call_rows(request, result))
        request.call_ran = True
        stages = policy_stages(policy)
        request.timing = stages if stages != earlier else {}
        return _checked_replaced_action(result, request)

    def _run_group(self, group: List[Request], replies: List[Reply]) -> None:
        """Serve get_action requests as one merged policy call, appending each request's reply to `replies` as it is
        made (so that a failure part-way leaves execute() knowing who is still unanswered)."""
        policy = self._server.policy
        checked = bool(getattr(policy, "strict", False))
        valid: List[Request] = []
        for request in group:  # validate each client alone so a bad observation fails only its sender
            try:
                observation = request.data.get("observation")
                if checked:
                    policy.check_observation(observation)
                valid.append(request)
            except InlineCallAbandoned:
                raise
            except BaseException as exc:  # a policy's SystemExit in its check too: its sender's alone, not the batch's
                replies.append((request, self.error_frames(request, exc)))
        # A merged call failed by one client is not re-run one request at a time (each batch-mate then waited batch
        # size + 1 calls): a NaN row's requests are refused and the rest re-run once; a client's other input error is
        # bisected, so one bad request among K costs about 2 log2(K) calls (halves run in turn: a clean one is
        # answered early). An internal failure (a batching bug every merged call would hit) runs each request alone.
        groups, first = [valid], True
        while groups:
            requests = groups.pop(0) if first else self._still_waiting(groups.pop(0), replies)
            first = False
            if len(requests) == 1:
                with _checked_rows(requests[0].data.get("observation"), policy, checked):
                    replies.append(self.serve_one(requests[0]))
            elif requests:
                groups.extend(self._run_merged(requests, replies, checked))

    def _still_waiting(self, requests: List[Request], replies: List[Reply]) -> List[Request]:
        """The requests whose client still waits; the others (gave up during a failed merged call, or are about to)
        are answered that their call failed and could not run again in time (_expired_reply), not served again."""
        return self._in_time(requests, time.monotonic(), replies)

    def _run_merged(self, valid: List[Request], replies: List[Reply], checked: bool) -> List[List[Request]]:
        """One merged policy call for `valid` (two or more requests; `checked`: each passed the policy's
        check_observation), answering them; returns the groups still to run when it failed (the two halves, or a NaN
        row's batch-mates)."""
        policy = self._server.policy
        started = time.monotonic()
        ran = False
        try:
            merged, rows = batching.merge_observations([r.data["observation"] for r in valid], [r.rows for r in valid])
            try:
                with _checked_rows(merged, policy, checked):
                    raw = policy.get_action(merged, None)
            except BaseException as exc:  # a merged call that ran counts, whatever failed it (a sys.exit() too)
                ran = self.count_failed_call(exc, len(valid), sum(rows))
                if not isinstance(exc, NonFiniteActionError):
                    raise
                rerun = self._non_finite_rows(valid, rows, exc, started, replies)  # a strict policy's output check
                if rerun is not None:
                    _note_failed_call(rerun, started)
                    return [rerun] if rerun else []
                raise
            self.count_call(len(valid), sum(rows))
            ran = True
            action, info = work_limits.action_and_info(raw)
            stages = policy_stages(policy)
            parts = batching.split_result(action, info, rows, batching.declared_per_row_info_keys(policy))
        except InlineCallAbandoned:
            raise
        except BaseException as exc:
            if ran:  # its requests run again, unless their deadline comes first: then this call answers them
                _note_failed_call(valid, started)
            # a batching bug every merged call would hit, or one client's input steering the policy into sys.exit()
            if not isinstance(exc, (ObservationError, RequestError)):
                self._internal_errors.warning(
                    "batched get_action of %d requests failed (%s: %s); serving them one by one", len(valid),
                    type(exc).__name__, _safe_text(exc)[:300],
                    kind=("batched get_action", type(exc).__name__))
                return [[request] for request in valid]
            logger.debug("batched get_action of %d requests (from %s) refused one's input (%s: %s); isolating it by "
                         "bisection", len(valid), ", ".join(sorted({str(r.peer or "local") for r in valid})),
                         type(exc).__name__, log_text(_safe_text(exc), 300, quoted=False))
            half = len(valid) // 2  # one client's input: bisection finds it
            return [valid[:half], valid[half:]]
        policy_ms = (time.monotonic() - started) * 1000.0
        self._window.observe_call(policy_ms / 1000.0, sum(rows), call_cost(valid[0]))  # one signature, no options
        # One walk of the merged action instead of one per request: its parts are slices of its arrays, so when it is
        # all finite so is every part. Otherwise each part is checked, so that only its bad rows' senders are refused.
        finite = work_limits.all_finite_action(action)
        for request, (part_action, part_info) in zip(valid, parts):
            request.timing = stages
            try:
                if not finite:
                    work_limits.check_finite_action(part_action, request.data.get("observation"))
            except Exception as exc:  # the check's own failure is this request's, never the batch's
                replies.append((request, self.error_frames(request, exc, policy_started=started, policy_ms=policy_ms)))
                continue
            replies.append(self.result_frames(request, [part_action, part_info], policy_ms, len(valid), sum(rows),
                                              policy_started=started))
        return []

    def _non_finite_rows(self, valid: List[Request], rows: List[int], exc: NonFiniteActionError, started: float,
                         replies: List[Reply]) -> Optional[List[Request]]:
        """Answer the requests whose rows of a merged call came out non-finite with the error (in their own row
        numbering), and the others from `exc.action` where it and its info are known; returns the clean requests
        still to run as one merged call, or None when the bad rows are not known (bisect instead)."""
        policy = self._server.policy
        observations = [request.data.get("observation") for request in valid]
        if exc.action is None:  # found in the model's raw output: exc.rows name the merged rows
            total, starts = sum(rows), [0, *[int(b) for b in np.cumsum(rows)[:-1]]]
            if not exc.rows or not all(0 <= row < total for row in exc.rows):
                return None
            clean = []
            for request, observation, first, count in zip(valid, observations, starts, rows):
                own = [row - first for row in exc.rows if first <= row < first + count]
                if not own:
                    clean.append(request)
                    continue
                # the unbatched call's words (server._get_action), its rows counted from the request's first
                message = re.sub(r"\brows \[[\d, ]*\]", f"rows {own}", str(exc), count=1)
                error = RequestError(message + work_limits.degenerate_states(observation, own, exc.key))
                replies.append((request, self.error_frames(request, error, policy_started=started)))
            return clean
        # The error's action is what the policy returns only when the served object's own BasePolicy.get_action
        # raised it: a wrapper's inner policy, a subclass whose get_action post-processes (clips, scales) or a policy
        # composed of another would return something else: computed again.
        known_info = (exc.info is not None and getattr(exc, "policy", None) is policy
                      and type(policy).get_action is BasePolicy.get_action)
        try:
            parts = (batching.split_result(exc.action, exc.info, rows, batching.declared_per_row_info_keys(policy))
                     if known_info else batching.split_result(exc.action, {}, rows, None))
        except Exception:
            return None
        policy_ms = (time.monotonic() - started) * 1000.0
        stages = policy_stages(policy)
        clean = []
        for request, observation, (part_action, part_info) in zip(valid, observations, parts):
            try:  # as unbatched: the server's words (key, rows, likely cause) for a NaN row
                work_limits.check_finite_action(part_action, observation)
            except Exception as error:
                replies.append((request, self.error_frames(request, error, policy_started=started,
                                                           policy_ms=policy_ms)))
                continue
            if not known_info:  # no info to answer with: its action is computed again
                clean.append(request)
                continue
            request.timing = stages
            try:  # the policy's checks of the keys after the NaN one, which its merged call never reached
                getattr(policy, "check_action", lambda action: None)(part_action)
            except Exception as error:
                replies.append((request, self.error_frames(request, error, policy_started=started,
                                                           policy_ms=policy_ms)))
                continue
            replies.append(self.result_frames(request, [part_action, part_info], policy_ms, len(valid), sum(rows),
                                              policy_started=started))
        return clean


def _note_failed_call(requests: List[Request], started: float) -> None:
    """Mark `requests` as having run in the merged call that started at `started` and failed just now."""
    failed_call = (started, (time.monotonic() - started) * 1000.0)
    for request in requests:
        request.failed_call = failed_call


def _checked_rows(observation: Any, policy: Any, checked: bool) -> Any:
    """rows_checked(observation, policy) when each of its rows passed `policy`'s check_observation, else no marker."""
    return rows_checked(observation, policy) if checked else contextlib.nullcontext()


def _checked_replaced_action(result: Any, request: Request) -> Any:
    """A get_action handler registered in place of the built-in one is held to its NaN/inf check: an action (the
    first of [action, info], or the whole result when it is no such pair) with a non-finite value is never sent. Its
    pair, a list or a tuple (what BasePolicy.get_action returns) with a map or None info, comes back as the built-in
    one's [action, info], info {} for None, so that server_timing can be added to it; any other result is marked as
    the action itself (request.result_is_action), which an N1/N1.5 client is sent whole."""
    is_pair = isinstance(result, (list, tuple)) and len(result) == 2 and isinstance(result[1], (dict, type(None)))
    observation = request.data.get("observation") if isinstance(request.data, dict) else None
    work_limits.check_finite_action(result[0] if is_pair else result, observation)
    request.result_is_action = not is_pair
    return [result[0], {} if result[1] is None else result[1]] if is_pair else result

