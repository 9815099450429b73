"""What PolicyClient learns about the server behind its address (its kind, wire, message limit and configs), how it
asks, and the check run once a new server may be answering."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Set

from . import codec
from .client_errors import PolicyServerError, ServerStoppingError, UpstreamFailedError
from .modality import ModalityConfig

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .client import PolicyClient

logger = logging.getLogger("gr00t_client.client")  # PolicyClient's one logger, whichever of its modules logs

# The get_action options a reference server's policy reads (its ReplayPolicy takes the batch size from them when no
# observation is sent; its Gr00tPolicy reads none): seed, noise, denoising_steps, rtc and the rest are gr00t-server's.
REFERENCE_OPTIONS = frozenset({"batch_size"})


def options_not_applied(options: Mapping[Any, Any]) -> List[str]:
    """The names among get_action `options` that a server other than a gr00t-server ignores, sorted."""
    return sorted(str(name) for name in options if name not in REFERENCE_OPTIONS)


# The limit a gr00t-server's get_server_info reports where its policy applies get_action's denoising_steps
# (Gr00tPolicy's work_limits); one older than 2026-12-02 reports none and drops the option as unknown, without a word.
DENOISING_CAP = "max_denoising_steps"


def applies_denoising_steps(limits: Any) -> bool:
    """Whether a gr00t-server whose get_server_info reports these `limits` applies get_action's denoising_steps: it
    does where they hold max_denoising_steps; an older one (or a policy of one's own) that reports none may not."""
    return isinstance(limits, Mapping) and DENOISING_CAP in limits


def gr00t_server_options_not_applied(options: Mapping[Any, Any], limits: Any) -> List[str]:
    """The names among get_action `options` that a gr00t-server whose get_server_info reports these `limits` is not
    known to apply: denoising_steps where they hold no max_denoising_steps."""
    return ["denoising_steps"] if "denoising_steps" in options and not applies_denoising_steps(limits) else []


class ServerFacts:
    """The server's facts as PolicyClient knows them (a mixin of PolicyClient): learnt on the first call, forgotten
    when the connection is made anew."""

    def _forget_server(self) -> None:
        """Forget what was learned about the server (kind, wire, message limit, configs): it may have been restarted
        or replaced behind the same address, so the next call asks again instead of trusting stale facts. Also the
        state before the first call."""
        # Even with wire="reference" we ask once whether the server is ours, so that a result map with an
        # "error" key from our server (which marks its errors) is not taken for an error.
        self._server_is_ours: Optional[bool] = True if self._requested_wire == "multipart" else None
        # True only for a server known to be a reference one (it refused get_server_info, or answered it not as a
        # gr00t-server): not for one whose info this client could not read, which may be a newer gr00t-server.
        self._server_is_reference = False
        self._wire = self._requested_wire  # "auto" becomes "reference" once a server without multipart is seen
        # True once the server is known to be np.save-era (its replies carry __ndarray_class__ arrays or only the
        # legacy __ModalityConfig_class__ marker): from then on requests use that format, which it can read.
        self.speaks_npsave = self._requested_wire == "npsave"
        # The server's max_message_bytes from get_server_info; None when unknown (reference, older or unasked server).
        self.server_max_message_bytes: Optional[int] = None
        self._modality_config: Optional[Dict[str, ModalityConfig]] = None
        # The observation form ("flat", "nested") and the policy kind ("replay", ...) the server's info reports; None
        # when unknown. A strict client holds an empty observation, and names the expected keys, by them.
        self.server_observation_format: Optional[str] = None
        self.server_policy_kind: Optional[str] = None
        self.server_policy_class: Optional[str] = None
        # The policy_identity and embodiment_tag the server's info reports (None when unknown): what a server serving
        # this client (a relay) reports as its own, so that an evaluation through it pins the upstream's policy.
        self.server_policy_identity: Optional[Dict[str, Any]] = None
        self.server_embodiment_tag: Optional[str] = None
        # What computes the server's actions (its info's `runtime`: dtype, device, inference mode); None when unknown or
        # not reported. A relay reports its upstream's, as its identity, so that fp32 and bf16 upstreams stay apart.
        self.server_runtime: Optional[Dict[str, Any]] = None
        # Whether the server's policy keeps state per session (a replay, a custom history); None when unknown (older).
        self.server_keeps_sessions: Optional[bool] = None
        # The limits our server's info reports ({} when none); None when unknown. Which options it applies is read
        # from them (gr00t_server_options_not_applied).
        self.server_limits: Optional[Dict[str, Any]] = None
        self._server_info_asked = False  # get_server_info asked (a forced wire="multipart" never negotiates)
        self._warned_ignored_options: Set[str] = set()

    @property
    def server_is_gr00t_server(self) -> Optional[bool]:
        """Whether the server answered get_server_info as a gr00t-server (and so applies its get_action options);
        None until the first call asks, and again after a reconnection."""
        return self._server_is_ours

    def options_ignored_by_server(self, options: Optional[Mapping[str, Any]]) -> List[str]:
        """The names among get_action `options` that the server, as known, is not known to apply: all but batch_size
        for a server other than a gr00t-server; denoising_steps for a gr00t-server whose info reports no
        max_denoising_steps; none while unknown."""
        if not options:
            return []
        if self._server_is_ours is False:
            return options_not_applied(options)
        if self._server_is_ours and self.server_limits is not None:
            return gr00t_server_options_not_applied(options, self.server_limits)
        return []

    def _warn_ignored_options(self, options: Mapping[str, Any], relayed: bool = False) -> None:
        """Warn once per server for each get_action option that it is not known to apply (options_ignored_by_server);
        `relayed`: the options named so by the get_action info of a relay (a gr00t-server) whose upstream, or one
        further up its chain, is not known to apply them."""
        ignored = [name for name in (sorted(map(str, options)) if relayed else self.options_ignored_by_server(options))
                   if name not in self._warned_ignored_options]
        if not ignored:
            return
        self._warned_ignored_options.update(ignored)
        names, plural = ", ".join(map(repr, ignored)), len(ignored) > 1
        if relayed:
            logger.warning("get_action option%s %s not known to be applied: the relay at %s forwards %s to a server up "
                           "its chain that is not known to apply %s (one that did not answer get_server_info as a "
                           "gr00t-server does, or a gr00t-server whose get_server_info reports no max_denoising_steps: "
                           "an older gr00t-server ignores denoising_steps); serve the model with a current "
                           "gr00t-server (upgrade gr00t-server) to apply %s", "s" if plural else "", names,
                           self.address, *(("them",) * 3 if plural else ("it",) * 3))
        elif self._server_is_ours and self.server_policy_kind == "replay":
            logger.warning("get_action option%s %s not applied: the server at %s serves a replay, whose recorded "
                           "actions no such option changes", "s" if plural else "", names, self.address)
        elif self._server_is_ours:
            logger.warning("get_action option %s is not known to be applied by the gr00t-server at %s: its "
                           "get_server_info limits report no max_denoising_steps. A gr00t-server older than "
                           "2026-12-02 ignores the option without a word (upgrade gr00t-server to apply it); a policy "
                           "of one's own that applies it says so with work_limits() returning "
                           "{'max_denoising_steps': N}",
                           names, self.address)
        else:
            logger.warning("get_action option%s %s not applied: the server at %s did not answer get_server_info as a "
                           "gr00t-server does, and a reference server's policy reads no option but %s; serve the "
                           "model with gr00t-server to apply %s", "s" if plural else "", names, self.address,
                           ", ".join(map(repr, sorted(REFERENCE_OPTIONS))), "them" if plural else "it")

    def _negotiate(self, deadline: Optional[float] = None) -> Any:
        """Ask once whether the server is ours (multipart capable); a reference server says 'Unknown endpoint'.
        Returns the get_server_info answer (its reply, or the error reply's PolicyServerError); None when unreadable."""
        envelope = self._envelope("get_server_info", None, requires_input=False)
        try:
            info = self._round_trip(envelope, "get_server_info", multipart=False, deadline=deadline)
        except PolicyServerError as exc:
            if "Unauthorized" in exc.server_message or isinstance(exc, (ServerStoppingError, UpstreamFailedError)):
                # a server going away said nothing about what it is: learnt from the next one; nor did a relay whose
                # upstream has not answered it yet ("not known yet; ask again"): asked again on the next call
                raise
            self._server_info_asked = True
            self._server_is_ours = False
            self._server_is_reference = True
            logger.debug("server at %s is not a gr00t-server (%s); using the reference wire", self.address, exc)
            self._probe_wire_generation(deadline)
            return exc
        except codec.WireDecodeError as exc:
            # A gr00t-server newer than this client (its info carries a modality config field this version does not
            # know) failed every call here, ping aside: the reference wire, which every server answers, still works.
            self._server_info_asked = True
            self._server_is_ours = False
            if self._wire == "auto":
                self._wire = "reference"
            logger.warning("server at %s answered get_server_info with what this client cannot read (%s): a newer "
                           "gr00t-server? Using the reference wire (no multipart, no size check before sending); "
                           "install the gr00t-client of the server's version", self.address, exc)
            return None
        capabilities = info.get("capabilities", []) if isinstance(info, dict) else []
        self._server_is_ours = isinstance(info, dict) and info.get("server") == "gr00t-server"
        self._server_is_reference = not self._server_is_ours
        if not self._server_is_ours:
            self._probe_wire_generation(deadline)
        if self._wire == "auto" and "multipart" not in capabilities:
            self._wire = "reference"
        limit = info.get("max_message_bytes") if self._server_is_ours else None
        # Older gr00t-servers do not report it; then, as with a reference server, nothing is checked here.
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.server_max_message_bytes = limit
        if self._server_is_ours:
            self._learn_policy_facts(info)
        self._server_info_asked = True
        return info

    def _learn_policy_facts(self, info: Mapping[str, Any]) -> None:
        """The observation form, policy kind, class, identity, tag and runtime, and whether the policy keeps sessions,
        as our server's get_server_info reports them (None for what it does not)."""
        form = info.get("observation_format")
        self.server_observation_format = form if form in ("flat", "nested") else None
        identity = info.get("policy_identity")
        kind = identity.get("kind") if isinstance(identity, dict) else None
        self.server_policy_kind = kind if isinstance(kind, str) else None
        policy_class = info.get("policy_class")
        self.server_policy_class = policy_class if isinstance(policy_class, str) else None
        self.server_policy_identity = dict(identity) if isinstance(identity, Mapping) else None
        tag = info.get("embodiment_tag")
        self.server_embodiment_tag = tag if isinstance(tag, str) else None
        runtime = info.get("runtime")
        self.server_runtime = dict(runtime) if isinstance(runtime, Mapping) and runtime else None
        keeps = info.get("keeps_sessions")
        self.server_keeps_sessions = keeps if isinstance(keeps, bool) else None
        limits = info.get("limits")
        self.server_limits = dict(limits) if isinstance(limits, Mapping) else {}

    def _learn_server_facts(self, timeout_ms: Optional[int] = None) -> None:
        """Ask get_server_info once while the server's observation form and policy kind are unknown: a call with
        wire="multipart" never negotiates, and a reconnection forgets them. A server that refuses it (an older or
        registered-endpoint server) leaves them unknown. `timeout_ms`: this question's own budget (else timeout_ms)."""
        with self._locked():
            self._notice_reconnection()
            if self._server_info_asked or self._server_is_ours is False:
                return
            try:
                info = self.call_endpoint("get_server_info", requires_input=False, timeout_ms=timeout_ms)
            except (ServerStoppingError, UpstreamFailedError):
                raise  # nothing learnt, and nothing to keep: a relay's "not known yet" is asked again next time
            except (PolicyServerError, codec.WireDecodeError) as exc:
                logger.debug("server at %s did not tell its observation form and policy kind (%s)", self.address, exc)
                self._server_info_asked = True
                return
            if self._server_is_ours and isinstance(info, Mapping):
                self._learn_policy_facts(info)
            self._server_info_asked = True

    def _ask_server_info_again(self, timeout_ms: Optional[int]) -> None:
        """refresh_server_facts(ask_again=True)'s question: get_server_info marked ASKS_UPSTREAM_FIELD, whatever was
        learnt (a first question is marked too), the policy facts compared with those known before it."""
        call = self._call
        with self._locked():
            self._notice_reconnection()
            if self._server_is_ours is False:
                return  # a reference server: it has no get_server_info, nor an upstream to ask
            known = self._server_info_asked
            before = self._policy_facts_known()
            saved, call.asks_upstream = getattr(call, "asks_upstream", False), True
            try:
                info = self.call_endpoint("get_server_info", requires_input=False, timeout_ms=timeout_ms)
            finally:
                call.asks_upstream = saved
            if not (known and self._server_is_ours and isinstance(info, Mapping)):
                return  # a first question: learnt by the negotiation it was, or by _learn_server_facts
            self._learn_policy_facts(info)
            if self._policy_facts_known() != before:
                logger.info("the server at %s now serves another policy; asking it for its facts again", self.address)
                self._forget_server()
                self.server_changes += 1

    def _policy_facts_known(self) -> tuple:
        """What _learn_policy_facts learnt, as one value to compare."""
        return (self.server_observation_format, self.server_policy_class, self.server_policy_identity,
                self.server_embodiment_tag, self.server_runtime, self.server_keeps_sessions)

    def identity(self) -> Optional[Dict[str, Any]]:
        """The policy_identity the server last reported (None when unknown or none), read without asking: a server
        serving this client (a relay) reports it as its own, so an evaluation through the relay pins the upstream's."""
        return self.server_policy_identity

    @property
    def known_modality_config(self) -> Optional[Dict[str, ModalityConfig]]:
        """The server's modality configs as learnt, without asking (None until learnt, and after a reconnection)."""
        return self._modality_config

    def refresh_server_facts(self, timeout_ms: Optional[int] = None, ask_again: bool = False) -> None:
        """Learn the server's facts (info and modality configs) where a reconnection forgot them or none were learnt
        yet; nothing is sent when they are known. A relay's worker calls it so that its socket thread never asks.
        `ask_again` (a relay, for a robot new to it): get_server_info is asked even when known, marked so that a relay
        it reaches asks its own upstream in turn (ASKS_UPSTREAM_FIELD); a policy reported otherwise than before counts
        as a server change (facts forgotten and asked again, on_new_server's check), as a reconnection does."""
        if ask_again:
            self._ask_server_info_again(timeout_ms)
        self._learn_server_facts(timeout_ms)
        if self._server_is_ours and self._modality_config is None:
            with self._locked():
                if self._modality_config is None:
                    configs = self.call_endpoint("get_modality_config", requires_input=False, timeout_ms=timeout_ms)
                    self._modality_config = configs or {}

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

    def _notice_reconnection(self) -> None:
        """Forget the server's facts when the socket has reconnected since they were learned (the server restarted
        while this client was idle, maybe with another model, limit or wire): checked before a call uses them, not
        only after a reply, since a request refused here for stale facts would otherwise never learn the new ones."""
        if self._socket is None or self._handshake is None:
            return
        try:
            reconnected = self._handshake.reconnected()
        except BaseException:  # e.g. Ctrl-C between a monitor event's two frames: the rest would break every later read
            self._discard_socket()
            raise
        if reconnected:
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
        lets the error through. It runs once the call has let go of the client's lock, so it may ask this client from
        any thread. gr00t-eval stops a run there when the server now serves another checkpoint. None removes the
        check."""
        if check is None:
            # Removed without the call lock: a call in flight on another thread (a prefetch abandoned on Ctrl-C) holds
            # it up to timeout_ms, and that call reads the check once, so it runs the old check or none.
            self._new_server_check = None
            return
        with self._locked():
            self._new_server_check = check
            self._checked_server_changes = self.server_changes

    def _check_new_server(self) -> None:
        check = self._new_server_check
        changes = self.server_changes
        if check is None or changes == self._checked_server_changes:
            return
        call = self._call
        if getattr(call, "active", False):
            # Inside a get_action or a call with its own timeout_ms, which hold the client's lock to their reply: it
            # runs once they let go (_locked_check_deferred; a check asking this client from another thread waited for
            # that lock, held by the thread waiting for it).
            call.check_due = True
            return
        # With a budget of its own (timeout_ms), not the remains of the get_action it follows: after a reconnection
        # that call already paid for a handshake and a get_server_info, and on a slow link a check in the same budget
        # timed out, replaced the socket and so made the next call check (and time out) again, for ever.
        with self._own_budget(None, None):
            check(self)  # raises to the caller; asked again after the next call until it passes
        self._checked_server_changes = self.server_changes  # its own reconnection, if any, was checked by it

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

    def _serves_timing(self) -> bool:
        # Only our server understands the option; a reference policy would receive it as an unknown option.
        if self._server_is_ours is None:
            with self._locked():
                if self._server_is_ours is None:
                    self._negotiate(self._deadline())
        return bool(self._server_is_ours)
