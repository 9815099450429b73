"""Gr00tSimPolicyWrapper: flat sim observations (`video.*`, `state.*`, language key) in, flat `action.*` out."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Tuple

from gr00t_client.client_errors import PolicyServerError
from gr00t_client.flat import (LEGACY_LANGUAGE_KEY, flat_observation_keys, language_batch, language_source,
                               missing_flat_keys_error, validate_flat_action, validate_flat_observation)
from gr00t_client.modality import ModalityConfig
from gr00t_client.peer_text import shown_key
from gr00t_client.policy import BasePolicy, ObservationError, PolicyWrapper, are_rows_checked, rows_checked

from ..serving.wrappers import policy_chain
from .previous_action import PreviousActionError, parsed_previous_action_error, renamed_cut_previous_action_error


class Gr00tSimPolicyWrapper(PolicyWrapper):
    """Adapts a nested-form policy to GR00T's flat simulation format: `video.<camera>` and `state.<key>` arrays and
    the language key at the top level of the observation, `action.<key>` arrays in the action (docs/protocol.md §9).

    With strict=False (server --no-strict) nothing is validated here, except that an observation none of whose keys
    the configs name is refused; the inner policy keeps its own `strict`. An empty observation is passed through
    when the wrapped policy takes one (a ReplayPolicy can be driven without one); strict or not, an empty or partial
    one the wrapped policy refuses for its missing keys (a strict one: for any reason, as it checks them all) is
    refused naming the flat keys missing, not the nested form it was handed; a lenient one's other refusals of a
    partial observation (a replay's empty frames) name the real cause, in flat keys.
    Options (including the server's `_session_id`) are forwarded untouched, except that RTC `previous_action` keys
    spelled `action.<key>` lose the prefix, and the wrapped policy's refusals of them name each key as it was sent
    (the keys expected or missing `action.<key>`). A wrapped PolicyClient's refusals from its server are reworded
    alike, keeping their class, where their keys read back from the text without doubt (before the cut, where the
    server cut a long one). A PolicyServer refuses to serve one wrapping a PolicyClient of a server whose policy keeps
    sessions (a replay): that client's one session would be every robot's
    (serving.sessions.check_no_shared_replay_session).
    """

    observation_format = "flat"  # reported by get_server_info, so a client picks the form by it, not by a class name
    row_wise_checks = True  # its flat checks are per row; the wrapped policy's own flag governs the nested ones

    def __init__(self, policy: BasePolicy, *, strict: bool = True) -> None:
        super().__init__(policy, strict=strict)
        self._in_get_action = threading.local()
        language = self.get_modality_config().get("language")
        if language is not None and language.horizon != 1:
            raise ValueError(f"only one language delta index is supported, got {language.delta_indices}")

    @property
    def modality_configs(self) -> Dict[str, ModalityConfig]:
        """The wrapped policy's modality configs (get_modality_config)."""
        return self.get_modality_config()

    @property
    def supports_batching(self) -> bool:
        """Batched across clients exactly when the wrapped policy is: every flat key carries the batch rows, and the
        wrapper only renames keys row for row."""
        return bool(getattr(self.policy, "supports_batching", False))

    @property
    def per_row_info_keys(self) -> Optional[Collection[str]]:
        """The wrapped policy's per-row info keys (None when it declares none): its info is returned untouched."""
        return getattr(self.policy, "per_row_info_keys", None)

    def max_call_rows(self, observation: Any) -> Optional[int]:
        """The wrapped policy's limit on the rows of one call of observations like this flat one (its vision-token
        budget, from the frames' shapes), or None: a batching server merged calls over it, then re-split them."""
        limit = getattr(self.policy, "max_call_rows", None)
        if not callable(limit) or not isinstance(observation, Mapping):
            return None
        video = {key[len("video."):]: value for key, value in observation.items()
                 if isinstance(key, str) and key.startswith("video.")}
        return limit({"video": video})

    def language_sources(self) -> FrozenSet[str]:
        """The flat keys whose strings (or UTF-8 bytes) this wrapper reads as language; the server holds them to
        its language limits."""
        language = self.get_modality_config().get("language")
        keys = set(language.modality_keys) if language is not None else set()
        if "task" in keys:
            keys.add(LEGACY_LANGUAGE_KEY)  # read instead of "task" when sent (gr00t_client.flat.language_source)
        return frozenset(keys)

    def check_observation(self, observation: Any) -> None:
        """Validate flat keys: video.<k> uint8 (B,T,H,W,3), state.<k> float32 (B,T,D), language as B strings; then a
        strict wrapped policy's own checks (a Gr00tPolicy's frame sizes, state ranges, reference rotations), so that a
        batching server refuses what would fail the merged call before merging it."""
        if observation is None or (isinstance(observation, Mapping) and not observation):
            if self.policy.strict:  # its refusal named the nested form, which this server does not take
                try:
                    self.policy.check_observation({})
                except ObservationError:
                    raise self._empty_observation_error() from None
            return
        validate_flat_observation(observation, self.get_modality_config(), self._unread_state_keys())
        if self.policy.strict and not getattr(self._in_get_action, "active", False):
            self._check_wrapped(observation)

    def get_action(self, observation: Any, options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """BasePolicy.get_action, leaving the wrapped policy's checks to its own get_action (run once, not twice)."""
        outer = getattr(self._in_get_action, "active", False)
        self._in_get_action.active = True
        try:
            return super().get_action(observation, options)
        finally:
            self._in_get_action.active = outer

    def _unread_state_keys(self) -> FrozenSet[str]:
        """The state keys whose values the wrapped policy never reads: the first `unread_state_keys()` in its chain (a
        Gr00tPolicy with exclude_state); none for a policy that does not say."""
        for link in policy_chain(self.policy):
            unread = getattr(link, "unread_state_keys", None)
            if callable(unread):
                return frozenset(unread())
        return frozenset()

    def _check_wrapped(self, observation: Mapping[str, Any]) -> None:
        try:
            self.policy.check_observation(self._to_nested(observation))
        except ObservationError as exc:
            self._name_flat_keys(exc, observation)
            raise

    def _empty_observation_error(self) -> ObservationError:
        return ObservationError(f"observation is empty; expected the flat keys {self.flat_keys()}")

    def flat_keys(self) -> List[str]:
        """The flat observation keys the configs name: `video.<k>`, `state.<k>` and the language keys."""
        return flat_observation_keys(self.get_modality_config())

    def check_action(self, action: Any) -> None:
        """Each action.<k> must be float32 (B, T, D) with T = the action horizon."""
        validate_flat_action(action, self.get_modality_config())

    def _get_action(self, observation: Any, options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        if observation is not None and not isinstance(observation, Mapping):  # strict=False reaches here unchecked
            raise ObservationError(f"observation must be a dict of flat keys ('video.<key>', 'state.<key>', ...); got "
                                   f"{type(observation).__name__}")
        nested = self._to_nested(observation or {})
        if observation and not any(nested.values()) and self.flat_keys():
            # Nothing left to count rows from: a replay answered with the session's previous row count (strict=False)
            unknown = [key[:60] for key in sorted(map(str, observation))[:8]]
            more = f" and {len(observation) - 8} more" if len(observation) > 8 else ""
            raise ObservationError(f"none of the observation's keys {unknown}{more} are in the modality config; "
                                   f"expected the flat keys {self.flat_keys()}")
        checked = rows_checked(nested, self.policy) if are_rows_checked(observation, self) else contextlib.nullcontext()
        inner_options = _inner_options(options)
        try:
            with checked:  # check_observation already ran the wrapped policy's checks on these rows
                action, info = self.policy.get_action(nested, inner_options)
        except ObservationError as exc:
            # A lenient policy (a replay) takes partial observations: its refusal of one may be about something else
            needed = not observation or self.policy.strict or _about_missing_keys(str(exc))
            missing = self._missing_flat_keys_error(observation or {}) if needed else None
            if missing is not None:
                raise missing from None
            self._name_flat_keys(exc, observation or {})
            raise
        except PolicyServerError as exc:  # a PolicyClient wrapped: its server's refusal, reworded keeping its class
            try:
                self._name_flat_keys_remote(exc, observation or {}, options)
            except Exception:  # noqa: BLE001 - a server's text it could not read: passed on as it came
                pass
            raise
        except PreviousActionError as exc:  # its keys were handed on without the prefix
            exc.rename_keys(*_previous_action_names(options))
            raise
        return {f"action.{key}": value for key, value in action.items()}, info

    def _missing_flat_keys_error(self, observation: Mapping[str, Any]) -> Optional[ObservationError]:
        """The wrapped policy refused an observation it got in the nested form, which this wrapper's clients never
        send: when flat keys the configs name are missing, the refusal naming them in the flat form instead."""
        if not observation:
            return self._empty_observation_error()
        return missing_flat_keys_error(observation, self.get_modality_config())

    def _name_flat_keys_remote(self, exc: PolicyServerError, observation: Mapping[str, Any],
                               options: Optional[Dict[str, Any]]) -> None:
        """Reword, in place, a server's ObservationError or previous_action refusal (sent as "<type>: <message>")
        as _get_action rewords the same refusal from a local policy."""
        if exc.args != (f"Server error: {exc.server_message}",):  # not a server's own words (MessageTooLargeError)
            return
        remote_type, _, message = exc.server_message.partition(": ")
        if remote_type == "ObservationError":
            needed = not observation or _about_missing_keys(message)
            missing = self._missing_flat_keys_error(observation) if needed else None
            message = str(missing) if missing is not None else _in_flat_words(message, self.get_modality_config(),
                                                                              observation)
        elif remote_type == "ValueError" and (refusal := parsed_previous_action_error(message)) is not None:
            refusal.rename_keys(*_previous_action_names(options))  # left as sent unless its keys read back surely
            message = str(refusal)
        elif remote_type == "ValueError" and (cut := renamed_cut_previous_action_error(
                message, *_previous_action_names(options))) is not None:  # the server's bound cut it: read to the cut
            message = cut
        else:
            return
        exc.server_message = f"{remote_type}: {message}"
        exc.args = (f"Server error: {exc.server_message}",)

    def _name_flat_keys(self, exc: ObservationError, observation: Mapping[str, Any]) -> None:
        """Reword, in place (keeping what BasePolicy marked on it), a refusal of the wrapped policy that names keys
        as the nested form does (state['arm'], State key 'arm', language['task']) with their flat names."""
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (_in_flat_words(exc.args[0], self.get_modality_config(), observation),)

    def _to_nested(self, observation: Mapping[str, Any]) -> Dict[str, Any]:
        if not observation:
            return {}
        configs = self.get_modality_config()
        nested: Dict[str, Dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
        for modality in ("video", "state"):
            config = configs.get(modality)
            for key in config.modality_keys if config is not None else []:
                name = f"{modality}.{key}"
                if name in observation:
                    nested[modality][key] = observation[name]
        language = configs.get("language")
        for key in language.modality_keys if language is not None else []:
            source = language_source(key, observation)
            if source in observation:
                nested["language"][key] = [[text] for text in language_batch(observation[source], source)]
        return nested


# How the wrapped policy's refusals name a key of each modality, and the flat name this wrapper's clients know it by.
_NESTED_NAMES = (
    ("video", "video['{key}']", "'video.{key}'"), ("video", "Video key '{key}'", "Video key 'video.{key}'"),
    ("state", "state['{key}']", "'state.{key}'"), ("state", "State key '{key}'", "State key 'state.{key}'"),
    ("action", "relative key '{key}'", "relative key 'action.{key}'"),
)


def _in_flat_words(message: str, configs: Mapping[str, ModalityConfig], observation: Mapping[str, Any]) -> str:
    """`message` with each key named as in the nested form renamed as in the flat one; language['<key>'] becomes the
    language key the observation holds it under."""
    for modality, nested, flat in _NESTED_NAMES:
        config = configs.get(modality)
        for key in config.modality_keys if config is not None else []:
            message = message.replace(nested.format(key=key), flat.format(key=key))
    language = configs.get("language")
    for key in language.modality_keys if language is not None else []:
        message = message.replace(f"language['{key}']", f"Language key '{language_source(key, observation)}'")
    return message


def _about_missing_keys(message: str) -> bool:
    """Whether a wrapped policy's refusal is of an entry the nested observation lacks (a modality map or a key of one),
    in the words of validate_observation and of Gr00tPolicy's lenient checks."""
    return any(words in message for words in ("observation must contain a '", " is missing from observation['",
                                              "'] must be a dict holding "))


def _previous_action_names(options: Optional[Dict[str, Any]]) -> Tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """How a refusal of options['rtc']['previous_action'] names the keys the wrapped policy got: (expected, sent).
    Expected (and missing) keys are named `action.<key>`, as this wrapper returns them; each key the caller sent, as
    it was sent (`action.<key>` or `<key>`, both taken)."""
    rtc = (options or {}).get("rtc")
    previous = rtc.get("previous_action") if isinstance(rtc, Mapping) else None
    as_sent = {_inner_key(key): key for key in (previous if isinstance(previous, Mapping) else [])}

    def expected(key: Any) -> Any:
        return f"action.{key}" if isinstance(key, str) else key

    return expected, lambda key: as_sent.get(key, expected(key))


def _inner_key(key: Any) -> Any:
    return key[len("action."):] if isinstance(key, str) and key.startswith("action.") else key


def _inner_options(options: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Options for the wrapped policy: an RTC previous chunk keyed `action.<k>` (as this wrapper returns
    actions) is re-keyed `<k>`, as the wrapped policy returns them; everything else passes unchanged."""
    rtc = (options or {}).get("rtc")
    if not isinstance(rtc, Mapping) or not isinstance(rtc.get("previous_action"), Mapping):
        return options
    previous: Dict[Any, Any] = {}
    for key, value in rtc["previous_action"].items():
        inner = _inner_key(key)
        if inner in previous:
            shown = shown_key(inner)  # the client's key: cut and escaped, as it reaches the log with the message
            raise ValueError(f"options['rtc']['previous_action'] holds action key '{shown}' twice, as 'action.{shown}' "
                             f"and '{shown}'; send each key once (as get_action returns it: 'action.{shown}')")
        previous[inner] = value
    return {**options, "rtc": {**rtc, "previous_action": previous}}
