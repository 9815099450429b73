"""Per-request work limits, finite inputs and outputs: checked before a request reaches the policy and before
an action reaches a robot."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from numbers import Integral, Real
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from typing import AbstractSet, Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from gr00t_client.policy import (PAIR_EXPECTED, ActionError, ObservationError, all_finite, first_non_finite,
                                  non_finite_scalar, split_action_result)
from gr00t_client.wire_limits import shown_path

from .messages import RequestError
from .worker import InlineCallAbandoned
from .wrappers import policy_chain

logger = logging.getLogger(__name__)

# A lower bound on a tokenizer's count (every word and punctuation mark is at least one token), cheap to compute.
_TOKEN = re.compile(r"\w+|[^\w\s]")
_LISTED_ROWS = 8  # rows named in an error message
# The largest limit get_server_info can report (msgpack's signed 64 bits; byte counts are int64 in ZeroMQ too): a
# larger "no limit" made every get_server_info fail, and clients took the server for a reference server.
MAX_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server; every field but max_session_id_chars and max_queued_requests has a
    `gr00t-server serve` flag (those two are set here only)."""

    max_rows: int = 128  # batch rows per request (arrays' first axis, language lists, replay batch_size)
    max_language_chars: int = 2048  # per language string
    max_language_tokens: int = 512  # per language string, words and punctuation marks
    max_cameras: int = 16  # video keys per observation
    max_image_pixels: int = 4096 * 4096  # height x width of one image
    max_session_id_chars: int = 128
    max_sessions: int = 1024  # sessions a stateful policy keeps (segmented LRU: sessions used once are evicted first)
    session_idle_s: float = 3600.0  # a session unused this long is evicted
    max_client_queued_bytes: Optional[int] = None  # request bytes one connection may have waiting; None: 16 MiB, or the max message size if smaller
    # Requests one connection may have waiting, the one being served included (a REQ client has one): the bytes alone
    # let one pipelining connection of small requests take every slot of the shared queue below.
    max_client_queued_requests: int = 8
    max_queued_requests: int = 1024  # requests waiting for the policy, all clients together
    # Request bytes waiting for the policy, all connections together: each connection's first request is always
    # taken, so without this, many connections of one large request each held (connections x message size) bytes.
    # A request that finds nothing waiting is always taken, so a single request up to the message size still goes.
    max_queued_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_language_chars", "max_language_tokens", "max_cameras", "max_image_pixels",
                     "max_session_id_chars", "max_sessions", "max_client_queued_requests", "max_queued_requests",
                     "max_queued_bytes"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
            _check_wire_range(name, value)
            object.__setattr__(self, name, int(value))  # numpy's ints too, stored as Python ints
        idle = self.session_idle_s  # a bool (True: 1 s) or a str is no number of seconds
        if isinstance(idle, (bool, np.bool_)) or not isinstance(idle, Real) or not 0 < idle < math.inf:
            raise ValueError(f"session_idle_s must be > 0 (a finite number of seconds), got {idle!r}")
        object.__setattr__(self, "session_idle_s", float(idle))
        queued = self.max_client_queued_bytes  # NaN passed `< 1` and turned the byte budget off
        if queued is not None:
            if isinstance(queued, (bool, np.bool_)) or not isinstance(queued, Integral) or queued < 1:
                raise ValueError(f"max_client_queued_bytes must be >= 1 or None (an int: a number of bytes), got {queued!r}")
            _check_wire_range("max_client_queued_bytes", queued)
            object.__setattr__(self, "max_client_queued_bytes", int(queued))


def _check_wire_range(name: str, value: int) -> None:
    if value > MAX_LIMIT:
        raise ValueError(f"{name} must be at most {MAX_LIMIT} (2**63 - 1, the largest the wire carries: "
                         f"get_server_info reports it), got {value!r}")


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:_LISTED_ROWS])
    return f"[{shown}{', ...' if len(rows) > _LISTED_ROWS else ''}]"


def _bad_rows(mask: np.ndarray) -> List[int]:
    """Rows (first axis) where `mask` is true anywhere; [0] for a 0-d mask."""
    if mask.ndim == 0:
        return [0] if bool(mask) else []
    return [int(r) for r in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]


TokenCounter = Callable[[str], int]


class _LanguageCounter:
    """Counts one request's language tokens: with the policy's tokenizer when given, else words and punctuation marks
    (a lower bound: each is at least one token). At most --max-rows x --max-language-chars characters are counted per
    request: each text is within the character limit, but 50 language keys of 128 such texts each held the socket
    thread for seconds of tokenizing (every other client's ping waited), to be refused by the policy after."""

    def __init__(self, tokenizer: Optional[TokenCounter], limits: ServerLimits) -> None:
        self.tokenizer = tokenizer
        self.unit = "tokens" if tokenizer is not None else "words and punctuation marks"
        self.budget = self.left = limits.max_rows * limits.max_language_chars

    def __call__(self, text: str, where: str) -> int:
        self.left -= len(text)
        if self.left < 0:
            raise RequestError(
                f"observation's language texts reach '{where}' with more than {self.budget} characters to count; this "
                "server counts at most --max-rows x --max-language-chars characters of language per request"
            )
        if self.tokenizer is not None:  # the policy's own tokenizer: digits and CJK are one token or more each
            return self.tokenizer(text)
        return sum(1 for _ in _TOKEN.finditer(text))


def _position_text(position: Tuple[int, ...]) -> str:
    """' in row 3' (' in row 3, item 0') for a text at `position` in its key's rows (lists or array axes); '' for none."""
    if not position:
        return ""
    items = position[1:]
    return f" in row {position[0]}" + (f", item {', '.join(map(str, items))}" if items else "")


_LOWERED_GROWTH = 1.5  # the most str.lower() grows a text's UTF-8 bytes (U+0130 'İ': 2 bytes to 'i̇', 3)


def _check_text(text: str, where: str, limits: ServerLimits, count_tokens: Optional[_LanguageCounter] = None,
                position: Tuple[int, ...] = ()) -> None:
    """The character limit for every text; the token limit for language (`count_tokens`, None for other texts: no
    policy tokenizes them). A refusal names the row (and item) at `position`: one env's instruction of many."""
    if len(text) > limits.max_language_chars:
        kind = "text" if count_tokens is None else "language"
        raise RequestError(
            f"{kind} '{where}'{_position_text(position)} has {len(text)} characters; this server accepts at most "
            f"{limits.max_language_chars} (--max-language-chars)"
        )
    # A byte-level tokenizer makes at most one token per UTF-8 byte of the text the model reads, which a policy may
    # lower-case first (Gr00tPolicy formalizes it): that keeps an ASCII text's bytes, and makes at most 3/2 of a
    # non-ASCII one's ('Ⱥ', 2 bytes, lower-cases to 'ⱥ', 3). A text within the limit so is not counted.
    if count_tokens is None or len(text) <= limits.max_language_tokens and (
            text.isascii() or _LOWERED_GROWTH * len(text.encode("utf-8", "surrogatepass")) <= limits.max_language_tokens):
        return
    try:
        tokens = count_tokens(text, where)
    except ObservationError as exc:  # the policy's tokenizer cannot read it (Gr00tPolicy: a lone surrogate it gets)
        raise RequestError(f"language '{where}'{_position_text(position)}: {exc}") from None
    if tokens > limits.max_language_tokens:
        raise RequestError(
            f"language '{where}'{_position_text(position)} has {tokens} {count_tokens.unit}; this server accepts at most "
            f"{limits.max_language_tokens} (--max-language-tokens)"
        )


def _check_text_bytes(value: bytes, where: str, limits: ServerLimits, count_tokens: Optional[_LanguageCounter] = None,
                      position: Tuple[int, ...] = ()) -> None:
    """Language sent as bytes (msgpack bin) is held to the same limits as str: policies decode it (the sim wrapper
    does). At most 4 x max_language_chars bytes are decoded; bytes that are not UTF-8 are left to the policy."""
    if len(value) <= limits.max_language_chars and len(value) * (1 if value.isascii() else _LOWERED_GROWTH) \
            <= limits.max_language_tokens:  # no more characters than bytes, nor tokens than its lower-cased bytes
        return
    if len(value) > 4 * limits.max_language_chars:  # UTF-8 spends at most 4 bytes a character: too long, undecoded
        raise RequestError(
            f"language '{where}'{_position_text(position)} has {len(value)} bytes, more than "
            f"{limits.max_language_chars} characters however they decode; this server accepts at most "
            f"{limits.max_language_chars} (--max-language-chars)"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return
    _check_text(text, where, limits, count_tokens, position)


def _check_string_array(value: np.ndarray, where: str, limits: ServerLimits, count_tokens: Optional[_LanguageCounter] = None,
                        position: Tuple[int, ...] = ()) -> None:
    """Hold every entry of a str or bytes array to the language limits. The lengths are measured in C; only entries
    long enough to break a limit (a bytes entry has at least as many bytes as characters) are decoded and counted,
    so the cost stays linear in the array's bytes however many entries it has."""
    if not value.size:
        return
    flat = value.reshape(-1)
    # A bytes entry has at least as many bytes as characters or tokens; a str character is up to 4 UTF-8 bytes, and
    # so up to 4 tokens of a byte-level tokenizer.
    per_char = 4 if value.dtype.kind == "U" else 1
    shortest_breach = min(limits.max_language_chars, int(limits.max_language_tokens // (per_char * _LOWERED_GROWTH)))
    if value.dtype.itemsize // per_char <= shortest_breach:
        return  # the dtype's width alone keeps every entry within both limits
    for index in np.flatnonzero(np.char.str_len(flat) > shortest_breach).tolist():
        text = flat[index].item()
        _check_text(text if isinstance(text, str) else text.decode("utf-8", "replace"), where, limits, count_tokens,
                    position + tuple(int(i) for i in np.unravel_index(index, value.shape)))


def _check_array(value: np.ndarray, where: str, limits: ServerLimits, cameras: set,
                 count_tokens: Optional[_LanguageCounter] = None, position: Tuple[int, ...] = ()) -> None:
    if value.ndim > 0 and value.shape[0] > limits.max_rows:
        single_image = value.ndim == 3 and value.dtype.kind == "u" and value.shape[-1] in (1, 3, 4)
        hint = (f"; a {value.shape} uint8 array looks like one image without its batch and time axes: send "
                "(B, T, H, W, 3), e.g. image[None, None]") if single_image else ""
        raise RequestError(
            f"observation key '{where}' has {value.shape[0]} rows; this server accepts at most {limits.max_rows} rows "
            f"per request (--max-rows){hint}"
        )
    kind = value.dtype.kind
    if kind in "fc":  # states: the common case, and neither text nor an image
        if value.size and not all_finite(value):
            rows = _bad_rows(~np.isfinite(value))
            raise RequestError(
                f"observation key '{where}' has non-finite values (NaN or inf) in rows {_rows_text(rows)}; "
                "send finite numbers (a NaN state makes NaN actions)"
            )
        return
    if kind in "US":
        _check_string_array(value, where, limits, count_tokens, position)
    if kind == "u" and value.ndim >= 4 and value.shape[-1] in (1, 3, 4):  # (..., H, W, C) images
        cameras.add(where)
        height, width = value.shape[-3], value.shape[-2]
        if height * width > limits.max_image_pixels:
            raise RequestError(
                f"video key '{where}' has {height}x{width} images; this server accepts at most "
                f"{limits.max_image_pixels} pixels per image (--max-image-pixels)"
            )


_VISITED_IN_LISTS = (dict, list, tuple, str, bytes, np.ndarray, float, complex, np.floating, np.complexfloating)


class _KeyPath:
    """Where a value sits in an observation: its parent's place and its key. The dotted text is made only when an
    error names it, cut as shown_path cuts: made for every child up front, one key of a megabyte over a thousand
    entries held a gigabyte of paths."""

    __slots__ = ("parent", "key", "chars", "in_group", "language", "_hash")

    def __init__(self, parent: Optional["_KeyPath"], key: Optional[str], flat_language_keys: AbstractSet[str],
                 longest_flat_key: int) -> None:
        self.parent, self.key = parent, key
        # Equal by their keys (the cameras counted): the dicts of a list's entries make links of their own for one key
        self._hash = hash((None if parent is None else parent._hash, key))
        if key is None:  # the observation itself
            self.chars, self.in_group, self.language = 0, False, False
            return
        top = parent is None or parent.key is None
        self.chars = len(key) if top else parent.chars + 1 + len(key)
        # Language a policy reads: the nested observation's "language" group and what it holds, or a flat key the
        # served policy reads as language (the sim wrapper's, see flat_language_keys); only paths no longer than
        # the longest such key are spelt out to compare
        self.in_group = (key == "language") if top else parent.in_group
        self.language = self.in_group or (self.chars <= longest_flat_key and self.keys_text() in flat_language_keys)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, _KeyPath) or self._hash != other._hash or self.key != other.key:
            return False
        return self.parent == other.parent

    def keys(self) -> List[str]:
        keys, link = [], self
        while link is not None and link.key is not None:
            keys.append(link.key)
            link = link.parent
        return keys[::-1]

    def keys_text(self) -> str:
        return ".".join(self.keys())

    def __str__(self) -> str:
        return shown_path(self.keys())


_OBSERVATION_PATH = _KeyPath(None, None, frozenset(), -1)  # the observation itself: every check_observation's root


def _finite_within_rows(value: np.ndarray, max_rows: int) -> bool:
    """A float state within the row limit with no NaN or inf: all _check_array asks of such an array."""
    return bool(value.ndim and value.dtype.kind in "fc" and value.shape[0] <= max_rows
                and (not value.size or all_finite(value)))


def check_observation(
    observation: Any, limits: ServerLimits, flat_language_keys: AbstractSet[str] = frozenset(),
    count_tokens: Optional[TokenCounter] = None,
) -> None:
    """Refuse an observation over the work limits, with non-str keys, or with a non-finite float (key named). (A
    multipart header referencing one frame twice is refused by the codec, so each frame is checked once.) Bytes
    count as language only under "language" and the `flat_language_keys`; elsewhere they are data (a raw mask).
    Language tokens are counted with `count_tokens` (the policy's tokenizer, see token_counter) when given, else
    words and punctuation marks (a lower bound), within a per-request budget (_LanguageCounter); texts elsewhere are
    held to the character limit only."""
    if not isinstance(observation, dict):
        return  # the policy's own validation says what it expects
    language = _LanguageCounter(count_tokens, limits)
    cameras: set = set()  # their _KeyPaths, equal by their keys: a list's entries count once
    longest_flat_key = max(map(len, flat_language_keys), default=-1)
    # (value, its key's path, its position in that key's lists: a refused text names its row)
    stack: List[Tuple[Any, _KeyPath, Tuple[int, ...]]] = [(observation, _OBSERVATION_PATH, ())]
    max_rows = limits.max_rows
    while stack:  # iterative: nesting is bounded by the decoder, but never recurse on client data
        value, where, position = stack.pop()
        if isinstance(value, np.ndarray):  # the most common entry first
            if _finite_within_rows(value, max_rows):
                continue  # a state within the limits: all _check_array would have asked of it, without the call
            _check_array(value, where, limits, cameras, language if where.language else None, position)  # type: ignore[arg-type]
        elif isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    raise RequestError(
                        f"observation keys must be str; got {type(key).__name__} key {str(key)[:40]!r} in "
                        f"'{str(where) or 'observation'}'"
                    )
                if isinstance(child, np.ndarray) and _finite_within_rows(child, max_rows):
                    continue  # checked before a path is made and stacked (LIBERO-like: 60 -> 54 us live)
                stack.append((child, _KeyPath(where, key, flat_language_keys, longest_flat_key), position))
        elif isinstance(value, (list, tuple)):
            if len(value) > limits.max_rows:
                raise RequestError(
                    f"observation key '{where}' has {len(value)} entries; this server accepts at most {limits.max_rows} "
                    "rows per request (--max-rows)"
                )
            # numbers too: a lenient policy turns a list state into an array, and an inf in it would be clipped
            stack.extend((child, where, position + (index,)) for index, child in enumerate(value)
                         if isinstance(child, _VISITED_IN_LISTS))
        elif isinstance(value, str):
            _check_text(value, where, limits, language if where.language else None, position)  # type: ignore[arg-type]
        elif isinstance(value, bytes) and where.language:
            _check_text_bytes(value, where, limits, language, position)  # type: ignore[arg-type]
        elif non_finite_scalar(value):  # a number in a list, or a bare number where an array belongs
            raise RequestError(
                f"observation key '{where}' has a non-finite value ({value}) in a list or as a number; send finite "
                "numbers (a NaN state makes NaN actions)"
            )
    if len(cameras) > limits.max_cameras:
        raise RequestError(
            f"observation has {len(cameras)} video keys; this server accepts at most {limits.max_cameras} cameras "
            "(--max-cameras)"
        )


def _float_arrays(observation: Any) -> List[Tuple[str, np.ndarray]]:
    """(key, array) for every float array in a (nested or flat) observation."""
    found: List[Tuple[str, np.ndarray]] = []
    # (value, its keys as nested (parent, key) pairs): a dotted path made for every child up front cost (key
    # characters x entries); only the arrays found get theirs, cut as shown_path cuts.
    stack: List[Tuple[Any, Any]] = [(observation, None)]
    while stack:
        value, keys = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((child, (keys, str(key))) for key, child in value.items())
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim > 0:
            path = []
            while keys is not None:
                keys, key = keys
                path.append(key)
            found.append((shown_path(path[::-1]), value))
    return sorted(found, key=lambda item: item[0])  # by key alone: two arrays under one dotted key are not ordered


_ROTATION_HINTS = ("rot", "quat", "6d", "9d", "orient", "eef", "pose")
_ZERO_IS_NORMAL_HINTS = ("gripper", "joint")  # an open gripper or a joint at its home position reads 0


def _likely_cause(observation: Any, rows: List[int], action_key: str = "") -> str:
    """Name the state keys most likely behind a non-finite action (degenerate_states), else where to look."""
    return (degenerate_states(observation, rows, action_key)
            or " Check the observation for degenerate values (all-zero rotations, constant inputs) and the checkpoint's statistics.")


def degenerate_states(observation: Any, rows: List[int], action_key: str = "") -> str:
    """' Likely cause: ...' naming the state keys most likely behind a non-finite action: all zeros (or non-finite)
    in the bad rows, the state of the action's own name first, then rotation-like names; zero grippers or joints are
    normal, not causes, unless the non-finite action bears their name. '' when no state looks degenerate."""
    suspects = []
    for where, array in _float_arrays(observation):
        if rows and max(rows) < array.shape[0]:
            picked = array[rows].reshape(len(rows), -1)
            if picked.size and (not np.isfinite(picked).all() or not picked.any(axis=1).all()) and where not in suspects:
                suspects.append(where)
    leaf = lambda where: where.rsplit(".", 1)[-1].lower()  # noqa: E731 - 'state.eef_9d' -> 'eef_9d'
    rotation_like = [where for where in suspects if any(hint in leaf(where) for hint in _ROTATION_HINTS)]
    # the action's own state first, but the rotation wording only for a rotation (zero joints are not degenerate)
    named = [where for where in rotation_like if action_key and leaf(where) == action_key.lower()] or rotation_like
    if named:
        keys = ", ".join(f"'{key}'" for key in named[:4])
        return (
            f" Likely cause: {keys} {'is' if len(named) == 1 else 'are'} all zeros in those rows; a degenerate rotation "
            "(an all-zero rotation matrix or quaternion, e.g. an eef_9d state of zeros) cannot be normalised."
        )
    unusual = [where for where in suspects if (action_key and leaf(where) == action_key.lower())
               or not any(hint in leaf(where) for hint in _ZERO_IS_NORMAL_HINTS)]
    if unusual:
        keys = ", ".join(f"'{key}'" for key in unusual[:4])
        return f" All zeros in those rows: {keys}; check them for degenerate values and the checkpoint's statistics."
    return ""


def token_counter(policy: Any) -> Optional[TokenCounter]:
    """The `count_language_tokens(text)` of the policy or a policy it wraps (Gr00tPolicy's tokenizer), for the
    language token limit; None when none has one."""
    for link in policy_chain(policy):
        count = getattr(link, "count_language_tokens", None)
        if callable(count):
            return count
    return None


def policy_work_limits(policy: Any) -> Dict[str, Any]:
    """The limits the policy, or a policy it wraps, holds one call to (`work_limits()`: Gr00tPolicy's denoising steps
    and vision tokens), reported beside the server's; {} when none says."""
    for link in policy_chain(policy):
        limits = getattr(link, "work_limits", None)
        if callable(limits):
            return dict(limits())
    return {}


def flat_language_keys(policy: Any) -> FrozenSet[str]:
    """The flat observation keys the policy, or a policy it wraps, reads as language (the sim wrapper's
    `language_sources()`); empty when none says."""
    for link in policy_chain(policy):
        sources = getattr(link, "language_sources", None)
        if callable(sources):
            try:
                return frozenset(key for key in sources() if isinstance(key, str))
            except InlineCallAbandoned:
                raise
            except BaseException as exc:  # its modality config failed, a SystemExit too: nested "language" is checked
                logger.warning("could not learn the policy's language keys (%s: %s); bytes under flat keys are not "
                               "held to the language limits", type(exc).__name__, exc)
                return frozenset()
    return frozenset()


def action_and_info(result: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A policy's get_action result as (action, info) plain dicts, a None info as {}; ActionError unless it is a pair
    of maps (gr00t_client.policy.split_action_result's check, in the words of a reply: nothing was sent). The policy's
    fault, whatever its class: an internal error whose text is sent (endpoints.error_text)."""
    try:
        action, info = split_action_result(result)
    except ActionError as exc:
        raise ActionError(str(exc).replace(PAIR_EXPECTED, f"{PAIR_EXPECTED}; nothing was sent", 1)) from None
    # Plain dicts from here on: the NaN guard walks dicts, and server_timing is added to info.
    return (action if type(action) is dict else dict(action)), (info if type(info) is dict else dict(info))


def _non_finite_action(where: str, value: np.ndarray, observation: Any) -> RequestError:
    rows = _bad_rows(~np.isfinite(value))
    return RequestError(
        f"the policy produced non-finite values (NaN or inf) in action key '{where or 'action'}' rows {_rows_text(rows)}; "
        f"the action was not sent.{_likely_cause(observation, rows, where.rsplit('.', 1)[-1])}"
    )


def all_finite_action(action: Any) -> bool:
    """True when every number of `action` is finite (first_non_finite finds none); False when one is not, or when the
    walk itself refuses the action (a masked array, a cycle): then each request's own check_finite_action words it.
    A merged call's action checked so once stands for every request's rows of it (split_result slices each value)."""
    try:
        return first_non_finite(action) is None
    except Exception:
        return False


def check_finite_action(action: Any, observation: Any) -> None:
    """Refuse to send an action with NaN/inf anywhere (arrays, numpy or Python scalars, lists, nested maps): raise
    naming the action key, the rows and the likely cause. Each value is visited once (policy.first_non_finite)."""
    found = first_non_finite(action)
    if found is None:
        return
    where, value = found
    if isinstance(value, np.ndarray):
        raise _non_finite_action(where, value, observation)
    raise RequestError(
        f"the policy produced a non-finite value ({value}) in action key '{where or 'action'}'; the action was "
        f"not sent.{_likely_cause(observation, [], where.rsplit('.', 1)[-1])}"
    )


def per_row_summary(limits: ServerLimits) -> Dict[str, Any]:
    """The limits as get_server_info reports them."""
    return {
        "max_rows": limits.max_rows,
        "max_language_chars": limits.max_language_chars,
        "max_language_tokens": limits.max_language_tokens,
        "max_cameras": limits.max_cameras,
        "max_image_pixels": limits.max_image_pixels,
        "max_session_id_chars": limits.max_session_id_chars,
        "max_sessions": limits.max_sessions,
        "session_idle_s": limits.session_idle_s,
        "max_queued_bytes": limits.max_queued_bytes,
    }
