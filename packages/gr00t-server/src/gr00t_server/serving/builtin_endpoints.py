"""The built-in endpoints PolicyServer serves (ping, kill, get_action, reset, get_modality_config, get_server_info)
and the facts about the served policy they ask per request; PolicyServer inherits them."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional

from gr00t_client.client import PROTOCOL_VERSION
from gr00t_client.client_errors import SHUTTING_DOWN, ClientClosedError
from gr00t_client.client_messages import OPTIONS_NOT_APPLIED_FIELD, UPSTREAM_CHANGES_FIELD
from gr00t_client.policy import NonFiniteActionError, as_modality_configs

from . import limits as work_limits
from .batching import TIMING_OPTION
from .endpoints import LOGGED_ERROR_CHARS, _safe_text, error_text, is_loopback_peer, log_text
from .execution import call_rows, policy_stages
from .identity import encodable_identity
from .messages import Request, RequestError
from .relay import (NOTHING_LEARNT, UpstreamFacts, UpstreamFailure, not_passed_at_stop, relayed_class,
                    relayed_limits, upstream_client, upstream_deadline, upstream_did_not_run, upstream_error,
                    upstream_failed_text, upstream_outcome)
from .sessions import FACTS_AT_START_TIMEOUT_MS, check_no_shared_replay_session, keeps_sessions, takes_session_lost
from .worker import InlineCallAbandoned
from .wrappers import policy_chain

logger = logging.getLogger("gr00t_server.serving.server")  # PolicyServer's log: the split renamed no logger

SESSION_OPTION = "_session_id"
# A reset's option, True for our client's session (served before) that this server does not know: it restarted, or
# dropped the session longer ago than it remembers. A replay then cannot keep the session's episodes: it asks for them.
# Sent only to a policy chain that says it takes it (sessions.takes_session_lost): a policy that checks its reset
# options' names refused every reset after a restart.
SESSION_LOST_OPTION = "_session_lost"
_UNDECLARED = object()  # _observation_format: a policy that has no observation_format at all
# Answered from facts learnt off the socket thread: a relay's upstream's, a policy's configs and identity (once per
# policy object); on the worker (which asks them) while none are known yet
POLICY_FACT_ENDPOINTS = frozenset({"get_modality_config", "get_server_info"})
_CONFIGS, _IDENTITY = "modality_configs", "identity"  # the _policy_fact keys of a policy's configs and identity
# A relay's connections whose get_server_info was answered from its upstream's facts asked again since they connected:
# the most it remembers (a connection it forgot is asked for again, one upstream ping on the worker)
RELAY_INFORMED_CONNECTIONS = 4096


class BuiltinEndpoints:
    """PolicyServer's own endpoint handlers and the policy facts they use; they read the server's policy, settings,
    stats and runner (see PolicyServer.__init__)."""

    def _policy_fact(self, learn: Callable[[Any], Any], key: Any = None) -> Any:
        """learn(policy), asked per request: the wrapper chain is walked once per policy object (again if replaced);
        kept under `key` (default: `learn` itself)."""
        policy, facts = self._policy_facts
        if policy is not self.policy:
            policy, facts = self.policy, {}
            self._policy_facts = [policy, facts]
        key = learn if key is None else key
        if key not in facts:
            facts[key] = learn(policy)
        return facts[key]

    def _policy_info_fact(self, name: str, learn: Callable[[Any], Any]) -> Any:
        """_policy_info_field(name, learn), learnt once per policy object (_policy_fact), its error too: a slow
        property or `work_limits()` on the socket thread costs once (run() asks before serving), not every info."""
        return self._policy_fact(lambda policy: self._policy_info_field(name, learn), key=("info", name))

    def _learn_policy_info(self) -> None:
        """Ask the policy's get_server_info facts now (run(), before serving), so no info request waits on them; a
        Ctrl-C meanwhile (on the main thread) stops the start."""
        self._learning_info = threading.current_thread() is threading.main_thread()
        try:
            self._policy_info_fact("observation_format", _observation_format)
            self._policy_info_fact("work_limits", work_limits.policy_work_limits)
            self._policy_info_fact("runtime", _policy_runtime)
            self._policy_info_fact("dims", _policy_dims)
            if self._upstream is not None:
                self._refresh_upstream_facts()
            else:
                self._policy_configs()
                self._policy_identity()
            if self.max_batch_size > 1:  # a supports_batching that raises fails the start, not the first get_action
                supported = self._policy_fact(_supports_batching)
                if isinstance(supported, Exception):
                    raise supported
        finally:
            self._learning_info = False

    @property
    def _policy_batches(self) -> bool:
        """The policy's `supports_batching`, read once per policy object (run() reads it before serving); one whose
        property raised is served unbatched (a policy swapped in while serving: a request must not stop the server)."""
        return self._policy_fact(_supports_batching) is True

    @property
    def _policy_uses_sessions(self) -> bool:
        return self._policy_fact(keeps_sessions)  # asked 2-3 times per request

    @property
    def flat_language_keys(self) -> FrozenSet[str]:
        """The flat observation keys the policy reads as language (limits.flat_language_keys)."""
        return self._policy_fact(work_limits.flat_language_keys)

    @property
    def token_counter(self) -> Optional[work_limits.TokenCounter]:
        """The policy's language token counter for --max-language-tokens (limits.token_counter), or None."""
        return self._policy_fact(work_limits.token_counter)

    @property
    def _upstream(self) -> Any:
        """The PolicyClient the served chain ends in (this server is a relay), or None."""
        return self._policy_fact(upstream_client)

    @property
    def _upstream_facts(self) -> Optional[UpstreamFacts]:
        """What this relay last learnt of its upstream through the served policy (None: nothing yet)."""
        facts = self._relay_facts
        return facts if facts is not None and facts.policy is self.policy else None

    def answers_now(self, endpoint: str, connection: str = "", asks_upstream: bool = False) -> bool:
        """Whether the socket thread answers built-in `endpoint` itself: not info or configs while their facts are not
        known, a relay's of its upstream (started before it) or a policy's configs and identity (one swapped in while
        serving), nor a relay's info or configs to a `connection` (Request.connection: each robot behind a proxy is
        one) it has not answered yet, or that `asks_upstream` (a relay in front asking for a robot new to it, over an
        old connection), while its worker is idle: its upstream may have restarted with another policy while the relay
        idled, which its client learns only by asking. The worker asks the upstream or the policy for them then, never
        this thread."""
        if endpoint not in POLICY_FACT_ENDPOINTS:
            return True
        if self._upstream is not None:
            if self._upstream_facts is None:
                return False
            # A connection new to the relay is asked for upstream on the worker, unless it is busy: the calls it
            # forwards learn a restart themselves, and a new robot's first question is not held behind them
            new = connection not in self._relay_informed or asks_upstream
            return not new or (self._worker is not None and self._worker.busy)
        policy, facts = self._policy_facts
        return policy is self.policy and _CONFIGS in facts and _IDENTITY in facts

    def _learn_upstream_facts(self, timeout_ms: Optional[int] = None, policy: Any = None,
                              ask_again: bool = False) -> UpstreamFacts:
        """Ask the upstream of `policy` (default: the served one) for its facts and modality configs where its client
        forgot them (or never learnt them), off the socket thread, and keep them as the relay's snapshot (replaced
        only by facts learnt anew); returns that snapshot, and raises what the upstream's client raised. `ask_again`:
        ping the upstream first, so that a restart while the relay idled (a new connection) is learnt now, then ask
        its info anew, so that an upstream that is a relay asks its own upstream in turn (a chain of relays)."""
        if policy is None:
            upstream, policy = self._upstream, self.policy
        else:
            upstream = upstream_client(policy)
        if ask_again:
            upstream.ping_or_raise(timeout_ms=timeout_ms)  # its reply over a new connection forgets the old facts
        upstream.refresh_server_facts(timeout_ms=timeout_ms, ask_again=ask_again)
        changes = upstream.server_changes
        facts = self._relay_facts
        if facts is None or facts.policy is not policy or facts.server_changes != changes:
            getter = getattr(policy, "get_modality_config", None)
            configs = as_modality_configs(getter()) if getter else {}
            facts = UpstreamFacts(policy, changes, upstream.server_policy_class, upstream.identity(),
                                  upstream.server_runtime, upstream.server_embodiment_tag,
                                  upstream.server_observation_format, configs,
                                  upstream.server_limits)
            self._relay_facts = facts
        return facts

    def _refresh_upstream_facts(self) -> None:
        """_learn_upstream_facts within FACTS_AT_START_TIMEOUT_MS (run() before serving, the worker after a call), so
        get_server_info answers from them at once; the upstream's failure is logged: the next request is told it."""
        upstream = self._upstream
        try:
            self._learn_upstream_facts(timeout_ms=min(upstream.timeout_ms, FACTS_AT_START_TIMEOUT_MS))
        except Exception as exc:  # noqa: BLE001 - an upstream refusing (a token) or failing must not fail this reply
            logger.warning("could not learn what the upstream at %s serves (%s: %s)", upstream.address,
                           type(exc).__name__, log_text(_safe_text(exc), LOGGED_ERROR_CHARS, quoted=False))

    def _known_upstream_facts(self, ask_again: bool = False) -> UpstreamFacts:
        """The upstream's facts for info and configs: the snapshot; where there is none yet, or `ask_again` (a new
        connection's info), asked of the upstream on the worker (answers_now sends such a request there) within
        FACTS_AT_START_TIMEOUT_MS and the robot's deadline. Refused "not known yet; ask again" (UpstreamFailure,
        which a client does not keep) otherwise: never a snapshot the upstream may have replaced unseen."""
        policy = self.policy  # read once: an operator may swap it while the upstream is asked
        facts = self._upstream_facts
        if facts is not None and not ask_again:
            return facts
        upstream = self._upstream
        not_known = UpstreamFailure(upstream_failed_text(
            upstream.address,
            "what it serves now is not known (it did not answer this relay's check for a new connection; it may have "
            "restarted with another policy); ask again" if ask_again and facts is not None else
            "what it serves is not known yet (it has not answered this relay); ask again"))
        if self._worker is None or not self._worker.is_current_thread():  # the socket thread never asks upstream
            raise not_known
        # a question of the relay's own, as at start: a robot's long budget (or a stop) never waits out a dead upstream
        try:
            facts = self._relayed(lambda: self._learn_upstream_facts(policy=policy, ask_again=ask_again),
                                  self._current, within_ms=FACTS_AT_START_TIMEOUT_MS)
        except UpstreamFailure as failure:  # not answered: the socket thread's words, and why, not the client's alone
            why = str(failure).replace(upstream_failed_text(upstream.address, ""), "", 1)
            refusal = UpstreamFailure(f"{not_known} ({why})")
            refusal.refused_before_call = getattr(failure, "refused_before_call", False)  # type: ignore[attr-defined]
            raise refusal from None
        if self.policy is not policy:  # swapped meanwhile: these are the old upstream's facts
            raise not_known
        return facts

    def interrupt_upstream_calls(self) -> None:
        """At a stop, end a relay's upstream call in flight within CLOSE_POLL_MS (its robot is told the server is
        shutting down), rather than letting it wait out the robot's budget on an upstream that is down."""
        upstream = self._upstream
        if upstream is not None:
            upstream.interrupt_calls()

    def _relayed(self, call: Callable[[], Any], request: Request, within_ms: Optional[int] = None) -> Any:
        """`call()` of a relay's policy: the upstream re-checked for a session-keeping policy after its client
        reconnected, the robot's deadline passed upstream (and `within_ms` from now, where given, if sooner), and the
        upstream's errors named by its address and counted under the upstream's outcome (upstream_outcome). A failure
        before `call()`, or an upstream's answer that it ran nothing (upstream_did_not_run), is marked
        `refused_before_call`: no policy call is counted for it."""
        upstream = self._upstream
        now = time.monotonic()
        at = upstream_deadline(request.deadline, now)
        if within_ms is not None:
            at = min(at if at is not None else float("inf"), now + within_ms / 1000.0)
        if at is not None and at - now < 0.001:  # the robot's own deadline, as a server refuses a request out of time
            refusal = RequestError(f"'{request.endpoint}' was not run: the client's deadline was "
                                   f"{(request.deadline - now) * 1000.0:.0f} ms away when it was to be passed to the "
                                   f"upstream at {upstream.address}")
            raise self._relay_refusal(request, refusal, "expired", called=False)
        facts_at = at
        if self._upstream_facts is None:  # a question of the relay's own, as for info: never the robot's whole budget
            facts_at = min(at if at is not None else float("inf"), now + FACTS_AT_START_TIMEOUT_MS / 1000.0)
        called = False
        try:
            if self._loop.stopping:  # a stop's interrupt_upstream_calls may have come before this call began
                raise RequestError(not_passed_at_stop(request.endpoint, upstream.address))
            with upstream.deadline(facts_at):
                # learns what a reconnection forgot (whoever answers now may keep sessions), and the configs a relay
                # started before its upstream never learnt
                self._learn_upstream_facts()
            if upstream.server_changes != self._relay_checked_changes:
                check_no_shared_replay_session(self.policy)  # the same refusal as at start
                self._relay_checked_changes = upstream.server_changes
            called = True
            with upstream.deadline(at):
                return call()
        except BaseException as exc:
            if isinstance(exc, ClientClosedError) and self._loop.stopping:  # ended by interrupt_upstream_calls
                stopped = RequestError(f"{SHUTTING_DOWN}; '{request.endpoint}' was ended before the upstream at "
                                       f"{upstream.address} answered")
                raise self._relay_refusal(request, stopped, None, called) from None
            # the upstream ran nothing (busy, out of time, stopped before its turn): no policy call. A timeout or a
            # lost connection still counts as one: the upstream may have run it, unseen.
            ran = called and not upstream_did_not_run(exc)
            relayed = self._relay_refusal(request, upstream_error(upstream, exc) or exc, upstream_outcome(exc), ran)
            if relayed is exc:
                raise
            raise relayed from None

    def _relay_refusal(self, request: Request, error: BaseException, outcome: Optional[str],
                       called: bool) -> BaseException:
        """`error`, a relayed request's: counted under `outcome` where given, as the server counts its own refusals
        (JobRunner._expired_reply, RequestLoop._admit), and marked `refused_before_call` unless the upstream was
        `called` (JobRunner.count_failed_call then counts no policy call, and no policy stage is observed)."""
        if outcome is not None:
            self.stats.add(outcome)
            request.outcome = outcome
        if not called:
            error.refused_before_call = True  # type: ignore[attr-defined]
        return error

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

    def _kill(self) -> Dict[str, Any]:
        request = self._current
        authenticated = self.api_token is not None  # the token was already checked for every request
        if not (authenticated or self.allow_remote_kill or is_loopback_peer(request.peer if request else None)):
            raise RequestError(
                "kill refused: only a loopback peer or a client with the API token may stop this server "
                "(start it with --allow-remote-kill, allow_remote_kill=True in Python, to allow remote kills)"
            )
        logger.info("kill requested by %s; shutting down", request.peer if request else "local")
        self._running = False
        # An empty map, not nil: N1/N1.5's client tests `"error" in reply` on every reply (TypeError on nil); the
        # other generations' clients ignore kill's reply.
        return {}

    def _get_action(self, observation: Any = None, options: Any = None) -> List[Any]:
        request = self._current
        assert request is not None
        robot_options = options
        options = self._with_session(options, request)
        policy = self.policy  # read once: a policy swapped in during the call must not lend it its stages
        try:
            if self._upstream is None:
                raw = policy.get_action(observation, options)
            else:
                raw = self._relayed(lambda: policy.get_action(observation, options), request)
        except BaseException as exc:  # counted whatever failed it, a SystemExit too
            request.call_ran = self._runner.count_failed_call(exc, 1, call_rows(request))
            if not isinstance(exc, NonFiniteActionError):
                raise
            # a strict policy's own check: the server's error names the cause too
            if exc.action is None:  # found before an action was made (a model's raw output): its own words,
                # and the state behind it where one looks degenerate (an all-zero rotation), not the weights
                raise RequestError(str(exc) + work_limits.degenerate_states(observation, exc.rows, exc.key)) from None
            work_limits.check_finite_action(exc.action, observation)
            raise
        self._runner.count_call(1, call_rows(request, raw))
        request.call_ran = True
        action, info = work_limits.action_and_info(raw)
        request.timing = policy_stages(policy)
        work_limits.check_finite_action(action, observation)
        if self._upstream is not None:
            self._refresh_upstream_facts()  # before the reply: the robot's check asks info once it sees a change
            info[UPSTREAM_CHANGES_FIELD] = self._upstream.server_changes
            ignored = self._options_not_applied_upstream(robot_options)
            if ignored:
                info[OPTIONS_NOT_APPLIED_FIELD] = ignored
        return [action, info]

    def _options_not_applied_upstream(self, options: Optional[Mapping[str, Any]]) -> List[str]:
        """The robot's get_action option names that this relay's upstream is not known to apply (a server other than a
        gr00t-server, or an older gr00t-server: options_ignored_by_server): what its client warns of in this process,
        said to the robot in its info so that the robot's client warns too."""
        if not options:
            return []
        return self._upstream.options_ignored_by_server(
            {name: value for name, value in options.items() if name != TIMING_OPTION})

    def _reset(self, options: Any = None) -> Any:
        request = self._current
        assert request is not None
        options = self._with_session(options, request)
        # our client's mark of a session served before, or the server's own mark of one it dropped (a reference
        # client's, keyed by its connection): a replay that forgot it too must not restart it at episode 0
        lost = self._policy_uses_sessions and (
            (request.continues_session and not self.sessions.knows(request.session))
            or self.sessions.dropped_reason(request.session) is not None)
        if lost and self._policy_fact(takes_session_lost):
            options[SESSION_LOST_OPTION] = True
        reset = getattr(self.policy, "reset", None)
        if not callable(reset):  # a stateless policy object without reset (the reference has no reset endpoint)
            return {}
        if self._upstream is None:
            return reset(options)
        return self._relayed(lambda: reset(options), request)

    def _get_modality_config(self) -> Any:
        if self._upstream is not None:  # the configs learnt off the socket thread, never the upstream's lock there
            return self._known_upstream_facts().modality_configs
        configs = self._policy_configs()
        if isinstance(configs, _Raised):
            configs.raise_again()  # each request is told it alike
        return configs

    def _modality_config_endpoint(self) -> Any:
        """The get_modality_config endpoint: a relay's for a connection new to it asked of its upstream first (a
        reference robot asks no get_server_info: after a restart while the relay idled it was told the old configs)."""
        self._ask_upstream_for_new_connection()
        return self._get_modality_config()

    def _ask_upstream_for_new_connection(self) -> None:
        """A relay's info or configs for a connection new to it (or asked for one by a relay in front, asks_upstream):
        its upstream asked again, on the worker, where answers_now sent them (an idle worker's); on the socket thread
        (a busy worker's forwarded calls learn a restart themselves) the snapshot answers."""
        request, worker = self._current, self._worker
        if (self._upstream is None or request is None or worker is None or not worker.is_current_thread()
                or (request.connection in self._relay_informed and not request.asks_upstream)):
            return
        self._known_upstream_facts(ask_again=True)  # the upstream's policy now
        self._note_informed(request.connection)

    def _note_informed(self, connection: str) -> None:
        """Remember that `connection` was told the upstream's facts as asked after it connected (written on the worker
        only; the socket thread reads it), forgetting the oldest beyond RELAY_INFORMED_CONNECTIONS."""
        informed = self._relay_informed
        informed[connection] = None
        while len(informed) > RELAY_INFORMED_CONNECTIONS:
            del informed[next(iter(informed))]

    def _policy_configs(self) -> Any:
        """The served policy's modality configs, or _Raised with what asking them raised, learnt once per policy
        object (run() asks before serving): a policy guarding get_modality_config() with its get_action's lock held
        the socket thread, ping and kill too, for a whole call."""
        return self._policy_fact(self._learn_policy_configs, key=_CONFIGS)

    def _learn_policy_configs(self, policy: Any) -> Any:
        try:
            getter = getattr(policy, "get_modality_config", None)
            return as_modality_configs(getter()) if getter else {}
        except InlineCallAbandoned:
            raise
        except BaseException as exc:  # a policy's SystemExit too: every request that asks is answered its error
            if isinstance(exc, KeyboardInterrupt) and getattr(self, "_learning_info", False):
                raise  # a Ctrl-C while run() asks them on the main thread stops the start
            return _Raised(exc, exc.__traceback__)

    def _policy_info_field(self, name: str, learn: Callable[[Any], Any]) -> Any:
        """learn(policy) for a get_server_info field; when the policy's code raises (a property or `work_limits()` that
        fails, a SystemExit too), {"error": "internal error in <name>: <Type>"} in its place: info must answer, and the
        server goes on. Logged once per policy object and field, the message bounded and escaped (log_text)."""
        try:
            value = learn(self.policy)
        except InlineCallAbandoned:
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and getattr(self, "_learning_info", False):
                raise  # a Ctrl-C while run() asks them on the main thread stops the start; a policy's own is its failure
            if self._first_info_problem(name):
                logger.warning("get_server_info: %s.%s failed (%s: %s); it is reported unavailable",
                               type(self.policy).__name__, name, type(exc).__name__,
                               log_text(_safe_text(exc), LOGGED_ERROR_CHARS, quoted=False))
            return {"error": error_text(name, exc)[0]}
        if not isinstance(value, Mapping):
            return value
        # A map the wire cannot carry (a tuple key, a numpy dtype in a runtime() or dims()) failed every info reply,
        # and clients then took the server for a reference one: such values are sent as their text
        encodable, replaced = encodable_identity(value)
        if replaced and self._first_info_problem(name):
            logger.warning("get_server_info: %s.%s returned values the wire cannot carry (%s); sent as their text",
                           type(self.policy).__name__, name, ", ".join(replaced[:4]))
        return encodable

    def _first_info_problem(self, name: str) -> bool:
        """Whether a problem with the served policy's get_server_info field `name` is met for the first time (logged
        once per policy object and field)."""
        logged = self._info_errors_logged
        if (id(self.policy), name) in logged:
            return False
        logged.add((id(self.policy), name))
        return True

    def _policy_identity(self) -> Optional[Dict[str, Any]]:
        """The served policy's `identity()` (the first in its wrapper chain that has one: which checkpoint or dataset
        it serves), or None; never raises, as info must answer: values the wire cannot carry are sent as text. Learnt
        once per policy object (a slow one hashes a checkpoint); a relay's follows what it learns of its upstream."""
        if self._upstream is None:
            return self._policy_fact(lambda policy: self._learn_policy_identity(), key=_IDENTITY)
        return self._learn_policy_identity()

    def _learn_policy_identity(self) -> Optional[Dict[str, Any]]:
        upstream = self._upstream
        for policy in policy_chain(self.policy):
            identity = getattr(policy, "identity", None)
            if upstream is not None and (policy is upstream or getattr(identity, "__self__", None) is upstream):
                # the upstream's as last learnt (a wrapper may forward identity() to the client): the client forgets
                # it on a timeout or a reconnection
                facts = self._upstream_facts
                return None if facts is None or facts.identity is None else encodable_identity(facts.identity)[0]
            if callable(identity):
                try:
                    value = identity()
                    if not isinstance(value, Mapping):
                        return None
                    encodable, replaced = encodable_identity(value)
                except InlineCallAbandoned:
                    raise
                except BaseException as exc:  # a policy's SystemExit too: info answers, the server goes on
                    if isinstance(exc, KeyboardInterrupt) and getattr(self, "_learning_info", False):
                        raise  # a Ctrl-C while run() asks it on the main thread stops the start
                    return {"error": error_text("identity", exc)[0]}
                if replaced and not self._identity_text_logged:
                    self._identity_text_logged = True
                    logger.warning("%s.identity() returned values the wire cannot carry (%s); sent as their text",
                                   type(policy).__name__, ", ".join(replaced[:4]))
                return encodable
        return None

    def _get_server_info(self) -> Dict[str, Any]:
        from .. import __version__ as server_version
        from gr00t_client import __version__ as client_version

        upstream = self._upstream
        self._ask_upstream_for_new_connection()
        try:
            modality = self._get_modality_config()
        except (InlineCallAbandoned, UpstreamFailure):
            raise  # a relay that knows nothing of its upstream: "ask again", not placeholders a client would keep
        except BaseException as exc:  # info must answer even when the policy cannot (a SystemExit in its config loader)
            modality = {"error": error_text("get_modality_config", exc)[0]}
        self.session_table()  # a policy swapped in: the session limits said below are its own
        # a relay reports its upstream's policy as last learnt (off this thread)
        known = (self._upstream_facts if upstream is not None else None) or NOTHING_LEARNT
        own_limits = work_limits.per_row_summary(self.limits)
        return {
            "server": "gr00t-server",
            "protocol_version": PROTOCOL_VERSION,
            "versions": {"gr00t-server": server_version, "gr00t-client": client_version},
            "policy_class": (type(self.policy).__name__ if upstream is None
                             else relayed_class(self.policy, upstream, known.policy_class)),
            "observation_format": (known.observation_format if upstream is not None and upstream is self.policy
                                   else self._policy_info_fact("observation_format", _observation_format)),
            "policy_identity": self._policy_identity(),
            # what computes the actions (dtype, device, backend): not the policy's identity, but its actions' rounding;
            # a relay's is its upstream's as last learnt, unless a policy in front of its client says its own
            "runtime": (self._policy_info_fact("runtime", _policy_runtime)
                        or (dict(known.runtime or {}) if upstream is not None else {})),
            # each state and action key's last-axis width, where the policy knows them (absent where it does not)
            **_present("dims", self._policy_info_fact("dims", _policy_dims)),
            # a gateway (PolicyServer(PolicyClient(this server))) refuses to merge its robots into one session of ours
            "keeps_sessions": self._policy_uses_sessions,
            "embodiment_tag": known.embodiment_tag or self.embodiment_tag,
            "modality_configs": modality,
            "capabilities": ["multipart", "sessions", "server_timing", "deadlines"]
            + (["batching"] if self.batching_enabled else []),
            "endpoints": self.endpoints,
            "max_batch_size": self.max_batch_size if self.batching_enabled else 1,
            "max_message_bytes": self.max_message_bytes,
            "batch_timeout_ms": self.batch_timeout_ms,
            "inline_below_ms": self.inline_below_ms,
            "metrics_port": self.metrics_port,
            "limits": {**relayed_limits(known, own_limits), **own_limits,
                       **self._policy_info_fact("work_limits", work_limits.policy_work_limits)},
            "auth": self.api_token is not None,
            "encryption": "curve" if self.curve is not None else None,
            "policy_busy": bool(self._worker is not None and self._worker.busy),
            "stats": self.stats.snapshot(),
        }


@dataclass(frozen=True)
class _Raised:
    """What asking the policy for a fact raised, learnt in its place: raised again to each request that asks."""

    error: BaseException
    traceback: Any  # the policy's own frames, logged with each internal error; a raise again adds only its own

    def raise_again(self) -> None:
        raise self.error.with_traceback(self.traceback)


def _supports_batching(policy: Any) -> Any:
    """The policy's `supports_batching` as a bool, or, when reading it raised, a ValueError naming the attribute and
    the error (logged): run() raises it, which fails the start; a request reads it as False."""
    try:
        return bool(getattr(policy, "supports_batching", False))
    except (InlineCallAbandoned, KeyboardInterrupt):
        raise
    except BaseException as exc:  # a policy's SystemExit too: read on the socket thread, it must not stop serving
        error = ValueError(f"{type(policy).__name__}.supports_batching raised {type(exc).__name__}: {_safe_text(exc)}; "
                           "expected a bool saying whether get_action takes the rows of several requests in one call")
        logger.error("%s", log_text(str(error), LOGGED_ERROR_CHARS, quoted=False))
        return error


def _first_in_chain(policy: Any, method: str) -> Dict[str, Any]:
    """What `method()` of the policy, or of the first policy it wraps that has one, returns (as a dict); {} when none
    has it."""
    for link in policy_chain(policy):
        found = getattr(link, method, None)
        if callable(found):
            return dict(found())
    return {}


def _policy_runtime(policy: Any) -> Dict[str, Any]:
    """The `runtime()` of the policy or a policy it wraps (Gr00tPolicy's dtype, device and inference mode)."""
    return _first_in_chain(policy, "runtime")


def _policy_dims(policy: Any) -> Dict[str, Any]:
    """The `dims()` of the policy or a policy it wraps ({"state": {key: D}, "action": {key: D}}: Gr00tPolicy's from its
    checkpoint statistics, ReplayPolicy's from its dataset)."""
    return _first_in_chain(policy, "dims")


def _present(name: str, value: Any) -> Dict[str, Any]:
    """{name: value}, or {} for an empty value: a field the policy has nothing to say in is left out."""
    return {name: value} if value else {}


def _observation_format(policy: Any) -> Optional[str]:
    """"flat" or "nested": the observation form the served policy declares it takes (`observation_format`); None when
    it does not say. Only the served policy's own: a wrapper may change the form of what it hands the policy inside
    (a flat-keys adapter around a Gr00tPolicy), so an inner policy's form says nothing of the wrapper's."""
    if inspect.getattr_static(policy, "observation_format", _UNDECLARED) is not _UNDECLARED:
        # read without a default: an error inside a property (an AttributeError too) reaches _policy_info_field
        declared = policy.observation_format
    elif hasattr(type(policy), "__getattr__"):  # a thin wrapper forwarding what it lacks to its inner policy
        declared = getattr(policy, "observation_format", None)
    else:
        return None
    return declared if declared in ("flat", "nested") else None
