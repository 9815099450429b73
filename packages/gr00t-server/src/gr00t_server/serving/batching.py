"""Batching across clients: which get_action requests can share one policy call, and how to merge and split."""

from __future__ import annotations

import collections
import itertools
import math
import time
from typing import (Any, Callable, Collection, Deque, Dict, FrozenSet, Hashable, Iterable, List, Optional, Sequence,
                    Tuple)

import numpy as np

from .messages import TIMING_OPTION
# The longest a partial batch is held for clients still expected (PolicyServer and `serve` default): the adaptive
# window stays below it. Chosen with benchmarks/throughput.py (sleep 20+1/row, 16 clients; see docs/serving.md).
DEFAULT_BATCH_TIMEOUT_MS = 20.0
# The most rows a batch may hold (max_batch_size): a batch never holds more rows than there are clients, and serve's
# warm-up runs one of this size before the port opens (100000, a typo for 10, took minutes and 15 GiB there).
MAX_BATCH_SIZE = 1024
SPREAD_MARGIN = 1.5  # the window is this many times the widest recent arrival spread ...
SPREAD_SLACK_S = 0.0005  # ... plus this (scheduling jitter)
SPREAD_HISTORY = 32  # rounds of arrival spread remembered
CALL_MEMORY_S = 30.0  # a policy call older than this no longer speaks for the policy (it warmed up, its load changed)
PROBE_AFTER_IDLE_S = 0.5  # no call run for this long: the next request runs whatever the calls before said (a probe)
PROBE_AFTER_REFUSALS = 1  # this many refused on those calls' word with their whole timeout since one ran: the next
# request runs (a probe). Not one refused for time it spent waiting: those probes ran late in a timeout storm.
PROBE_BACKOFF_AFTER = 3  # refusal probes in a row too slow for their client's timeout: past this many, the refusals
# a client with that timeout needs before its next probe double (a warm-up of a few slow calls costs only their own
# requests) ...
MAX_PROBE_AFTER_REFUSALS = 256  # ... up to this
PROBE_TIMEOUT_BUCKET = 1.25  # client timeouts are counted in buckets this wide (a ratio): one whose timeout jitters
# between requests (the remaining budget it sends) stays in one or two
PER_ROW_INFO_ATTRIBUTE = "per_row_info_keys"  # policy attribute: info keys holding one entry per row
CALL_ROWS_ATTRIBUTE = "max_call_rows"  # policy method: observation -> the most rows one call like it may hold, or None
MAX_BATCH_NESTING = 16  # real observations nest 1-2 maps deep; the recursive helpers below must never hit the limit


_BATCHED_ARGUMENTS = frozenset({"observation", "options"})  # a request with any other is never merged (they would be dropped)
BatchShape = Tuple[Hashable, int]  # (signature, rows) of a batchable observation: what next_batch groups by


def batch_shape(data: Any) -> Optional[BatchShape]:
    """(signature, rows) of a get_action request's observation when the request can join a batch, else None.

    A request can join when it has a nested observation, no per-request options (server_timing aside) and maps
    nested at most MAX_BATCH_NESTING deep (a deeper one is served alone). The signature is the keys, dtypes and
    per-row shapes (observations of equal signature concatenate along axis 0); rows is the one row count shared
    by every array and list, or -1 when they disagree or there are none (served alone: concatenating would mix
    clients' rows). One walk computes both, when the request arrives, so a round's dispatch only compares them.
    """
    if not isinstance(data, dict) or not isinstance(data.get("observation"), dict) or not set(data) <= _BATCHED_ARGUMENTS:
        return None  # other arguments: served alone, where the endpoint refuses (or takes) them
    options = data.get("options")
    if not (options is None or (isinstance(options, dict) and set(options) <= {TIMING_OPTION})):
        return None
    counts: set = set()
    signature = _signature(data["observation"], counts, 1)
    if signature is None:
        return None
    return signature, (counts.pop() if len(counts) == 1 else -1)


# Options whose value never changes a call's work: a seed per request would make every call a kind of its own
COST_NEUTRAL_OPTIONS = frozenset({TIMING_OPTION, "seed"})
# An option with more distinct values than this among the recent calls (a counter, a timestamp, an id) is keyed by its
# name and type alone (GatherWindow.kind_of): else every request would be a kind no recent call had, and the pre-check
# that answers a storm of too-late requests "not run" would never refuse one. Fewer (denoising_steps 1 and 16, a
# custom policy's quality 'fast' and 'best'), by value: another kind of call's time says nothing of this one's.
VOLATILE_OPTION_VALUES = 4
VOLATILE_OPTION_SHARE = 0.75  # ... and new values in at least this share of the calls that sent it (a counter's 1.0)
# Options known to set a call's work: compared by value always (a sweep of 5 step counts made them "volatile", and a
# 1-step request was refused on the word of 6-step calls)
COST_VALUE_OPTIONS = frozenset({"denoising_steps"})
CallCost = Hashable  # a get_action's cost signature (cost_signature): calls of one cost like each other, rows aside


def cost_signature(data: Any, shape: Optional[BatchShape] = None) -> CallCost:
    """What sets the cost of a get_action's call besides its rows: its observation's batch signature (keys, dtypes and
    per-row shapes: `shape`'s when gathered, else walked here) and its options, a scalar or short text by value (an
    array by dtype and shape, anything else by type). Calls of one signature take alike."""
    data = data if isinstance(data, dict) else {}
    if shape is not None:  # gathered: no option but server_timing
        return shape[0], ()
    observation = data.get("observation")
    signature = (_signature(observation, set(), 1) if isinstance(observation, dict)
                 else ("other", type(observation).__name__))
    options = data.get("options")
    if not isinstance(options, dict):
        return signature, ()
    # sorted by name alone: an int key 1 beside a str key "1" compared an array's tuple with a str (TypeError)
    return signature, tuple(sorted(((str(name), _option_cost(value)) for name, value in options.items()
                                    if name not in COST_NEUTRAL_OPTIONS), key=lambda item: item[0]))


def _option_cost(value: Any) -> Hashable:
    if isinstance(value, np.ndarray):
        return ("array", _dtype_key(value.dtype), value.shape)
    if value is None or isinstance(value, (bool, int, float, np.generic)) or (isinstance(value, str)
                                                                                and len(value) <= 64):
        return value
    return _OfType(type(value).__name__)


class _OfType(str):
    """An option keyed by its type alone (any value of it costs alike), shown so in a refusal."""

    def __repr__(self) -> str:
        return f"<any {str(self)}>"


def describe_cost(cost: CallCost) -> str:
    """A cost signature in words, for a refusal that names the kind of calls its estimate came from."""
    options = cost[1] if isinstance(cost, tuple) and len(cost) == 2 and isinstance(cost[1], tuple) else ()
    shown = ", ".join(f"{name}={value!r:.40}" for name, value in options) or "no options that change a call's work"
    return f"observations of this request's keys, dtypes and per-row shapes, {shown}"


def _signature(value: Any, counts: set, depth: int) -> Optional[Hashable]:
    """The signature of `value` (a map at nesting `depth`), adding the row counts of its arrays and lists to
    `counts`; None when maps nest deeper than MAX_BATCH_NESTING (the recursion stops there)."""
    if isinstance(value, dict):
        if depth > MAX_BATCH_NESTING:
            return None
        items = []
        for key, child in value.items():
            if type(child) is np.ndarray and child.ndim:  # the common entry, signed here: no call per array
                counts.add(int(child.shape[0]))
                items.append((str(key), ("array", _dtype_key(child.dtype), child.shape[1:])))
                continue
            child_signature = _signature(child, counts, depth + 1)
            if child_signature is None:
                return None
            items.append((str(key), child_signature))
        items.sort()
        return ("dict", tuple(items))
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return ("scalar-array",)  # cannot be split by rows
        counts.add(int(value.shape[0]))
        return ("array", _dtype_key(value.dtype), value.shape[1:])
    if isinstance(value, (list, tuple)):
        counts.add(len(value))
        return ("list",)
    return ("other", type(value).__name__)


_DTYPE_KEYS: Dict[np.dtype, str] = {}  # _dtype_key's answers (requests carry a handful of dtypes)


def _dtype_key(dtype: np.dtype) -> str:
    """A dtype as a signature names it: its str, the length of a text dtype left out (text of any length
    concatenates, to the longest: clients' instructions of other lengths still share a call). Kept per dtype:
    dtype.str builds a new str at every ask, and every array of every gathered request asks."""
    key = _DTYPE_KEYS.get(dtype)
    if key is None:
        key = dtype.str.rstrip("0123456789") if dtype.kind in "US" else dtype.str
        if len(_DTYPE_KEYS) < 256:
            _DTYPE_KEYS[dtype] = key
    return key


def _splittable(sig: Hashable) -> bool:
    """A signature made only of row-split arrays and lists (walked, so key names never matter)."""
    if sig[0] == "dict":
        return all(_splittable(child) for _, child in sig[1])
    return sig[0] in ("array", "list")


class Turns:
    """The order in which connections take turns to join a batch (round-robin): a connection whose request went into
    a batch goes to the back, and one new to the gathering joins at the back, so a peer pipelining many requests
    gets one place per turn like every other connection."""

    def __init__(self, connection: Callable[[Any], Hashable]) -> None:
        self._connection = connection
        self._order: "collections.OrderedDict[Hashable, None]" = collections.OrderedDict()  # front: next turn

    def order(self, items: Sequence[Any]) -> List[Any]:
        """`items` one per connection per turn (each connection's first, then each one's second, ...), the connections
        in turn order, each connection's items in the order given."""
        lanes: Dict[Hashable, List[Any]] = {}
        for item in items:
            key = self._connection(item)
            lanes.setdefault(key, []).append(item)
            if key not in self._order:
                self._order[key] = None
        order = [lanes[key] for key in self._order if key in lanes]
        return [lane[turn] for turn in range(max(map(len, order), default=0)) for lane in order if turn < len(lane)]

    def served(self, batches: Sequence[Sequence[Any]], still_gathered: Sequence[Any]) -> None:
        """The connections of `batches` had their turn; those with nothing `still_gathered` leave the round."""
        for batch in batches:
            for item in batch:
                self._order.move_to_end(self._connection(item))
        waiting = {self._connection(item) for item in still_gathered}
        for key in [key for key in self._order if key not in waiting]:
            del self._order[key]


def next_batch(items: Sequence[Any], max_rows: int, shape: Callable[[Any], BatchShape],
               connection: Callable[[Any], Hashable],
               call_rows: Optional[Callable[[Any], Optional[int]]] = None) -> List[Any]:
    """The items of the next policy call, from `items` in turn order (Turns.order): the first
    item and each later one of its signature that fits in max_rows in all, skipping every item of a connection
    after one of its items was left out (so that a connection's requests run, and are answered, in the order sent).
    An item whose observation cannot be split by rows is a call of its own. `call_rows(first item)`, when given and
    not None, caps max_rows: the policy's own limit on a call of such rows (items of one signature have rows of one
    shape, so the first item's limit is every item's)."""
    signature, total = shape(items[0])
    if not _mergeable(signature, total):
        return [items[0]]
    try:  # the first item's own checks have not run: a frame the policy refuses (1x4000) must not stop the server
        limit = call_rows(items[0]) if call_rows is not None else None
    except Exception:  # no cap: the item runs, and is refused by the policy's checks, as any other
        limit = None
    if isinstance(limit, int):  # never below the first item's rows: at worst it is a call of its own, as sent
        max_rows = min(max_rows, max(limit, total))
    batch, blocked = [items[0]], set()
    for item in items[1:]:
        if total >= max_rows:
            break
        item_signature, rows = shape(item)
        if connection(item) in blocked or item_signature != signature or not 1 <= rows <= max_rows - total:
            blocked.add(connection(item))
            continue
        batch.append(item)
        total += rows
    return batch


def _mergeable(signature: Hashable, rows: int) -> bool:
    return signature[0] == "dict" and _splittable(signature) and rows >= 1


def _row_count(observation: Dict[str, Any]) -> int:
    """Rows shared by every array and list in the observation; -1 when they disagree or there are none."""
    counts: set = set()
    if _signature(observation, counts, 1) is None:
        return -1
    return counts.pop() if len(counts) == 1 else -1


def _merge(values: List[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values]) for k in first}
    if isinstance(first, np.ndarray):
        return np.concatenate(values, axis=0)
    merged: List[Any] = []
    for value in values:
        merged.extend(value)
    return merged


def merge_observations(
    observations: List[Dict[str, Any]], rows: Optional[List[int]] = None
) -> Tuple[Dict[str, Any], List[int]]:
    """Concatenate compatible observations along the batch axis; return the merged one and rows per request
    (`rows`: the rows per observation when already known from batch_shape, else counted here)."""
    if rows is None:
        rows = [_row_count(obs) for obs in observations]
    if any(r <= 0 for r in rows):
        raise ValueError("every batched observation needs at least one row")
    return _merge(observations), rows


def declared_per_row_info_keys(policy: Any) -> Optional[FrozenSet[str]]:
    """The info keys the served policy itself declares per-row; None when it declares none. A wrapper's info is its
    own, so a policy it wraps declares nothing for it; a wrapper that returns that info untouched declares the same
    keys (Gr00tSimPolicyWrapper forwards them)."""
    keys = getattr(policy, PER_ROW_INFO_ATTRIBUTE, None)
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)) or not all(isinstance(key, str) for key in keys):
        raise TypeError(f"{type(policy).__name__}.{PER_ROW_INFO_ATTRIBUTE} must be a collection of info key names; got {keys!r}")
    return frozenset(keys)


def policy_call_rows(policy: Any) -> Optional[Callable[[Any], Optional[int]]]:
    """The served policy's own limit on the rows of one call, as a function of an observation (Gr00tPolicy's vision-
    token budget: a merged call over it was refused and bisected); None when the policy declares none. A wrapper's
    observations are its own, so a policy it wraps declares nothing for it."""
    limit = getattr(policy, CALL_ROWS_ATTRIBUTE, None)
    return limit if callable(limit) else None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _split_rows(value: Any, rows: List[int], total: int, name: str) -> List[Any]:
    """Split a value that must hold one row per batch row (maps: every leaf); raise naming it otherwise."""
    if isinstance(value, dict):
        parts = {k: _split_rows(v, rows, total, f"{name}.{k}") for k, v in value.items()}
        return [{k: parts[k][i] for k in value} for i in range(len(rows))]
    # Summed in Python, and arrays sliced as lists are: np.cumsum of a list and np.split (the same views, through
    # swapaxes) cost about 45 us a key, in every batch's replies
    bounds = [int(bound) for bound in itertools.accumulate(rows)][:-1]
    if (isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] == total) or (
            isinstance(value, (list, tuple)) and len(value) == total):
        return [value[start:end] for start, end in zip([0, *bounds], [*bounds, total])]
    raise ValueError(f"'{name}' is declared per-row but has {_describe(value)}; expected {total} rows, one per batch row")


def _split_guessing(value: Any, rows: List[int], total: int) -> List[Any]:
    """Split every array or list with `total` rows and copy the rest: right unless a value has that length by chance."""
    if isinstance(value, dict):
        parts = {k: _split_guessing(v, rows, total) for k, v in value.items()}
        return [{k: parts[k][i] for k in value} for i in range(len(rows))]
    if (isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] == total) or (
        isinstance(value, (list, tuple)) and len(value) == total
    ):
        return _split_rows(value, rows, total, "info")
    return [value for _ in rows]


def _split_declared(info: Dict[str, Any], rows: List[int], total: int, per_row_keys: Collection[str]) -> List[Dict[str, Any]]:
    """Split the declared per-row keys (which must have `total` rows) and copy every other value whole."""
    parts: List[Dict[str, Any]] = [{} for _ in rows]
    for key, value in info.items():
        pieces = _split_rows(value, rows, total, f"info.{key}") if key in per_row_keys else [value for _ in rows]
        for part, piece in zip(parts, pieces):
            part[key] = piece
    return parts


def split_result(
    action: Dict[str, Any], info: Dict[str, Any], rows: List[int], per_row_keys: Optional[Collection[str]] = None
) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """Split a batched (action, info) back into one (action, info) per request.

    Actions are always per-row. Info keys in `per_row_keys` (see `declared_per_row_info_keys`) are split and the
    rest copied to every request; with no declaration (None), every array or list with `sum(rows)` rows is split.
    """
    total = sum(rows)
    for key, value in action.items():
        if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != total:
            shape = getattr(value, "shape", None)
            raise ValueError(f"batched action '{key}' has shape {shape}; expected {total} rows")
    actions = _split_rows(action, rows, total, "action")
    info = info or {}
    if per_row_keys is None:
        infos = _split_guessing(info, rows, total)
    elif isinstance(info, dict):
        infos = _split_declared(info, rows, total, per_row_keys)
    else:
        raise ValueError(f"batched info must be a map to split its per-row keys; got {type(info).__name__}")
    return list(zip(actions, infos))


def _timeout_bucket(ms: float) -> int:
    """The bucket of a timeout (or a call time) in ms: buckets PROBE_TIMEOUT_BUCKET times wide."""
    return int(math.floor(math.log(max(1.0, ms)) / math.log(PROBE_TIMEOUT_BUCKET)))


class GatherWindow:
    """How long gathered get_action requests wait for the active clients that have not sent theirs yet.

    Closed-loop clients answered by one batch send their next requests spread over a few ms; cutting the gather
    at a fixed time after the first arrival splits the round into a partial batch and a straggler batch. The
    window follows the observed spread instead: SPREAD_MARGIN x the widest spread of the last SPREAD_HISTORY
    rounds (a straggler that arrives after a cut round counts with its lateness), never more than the policy's
    own call time (a straggler left out waits at most about one call) nor than `cap_ms`. With no history yet
    it is `cap_ms`. Spreads are fed by the socket thread, call times by the worker.
    """

    def __init__(self, cap_ms: float) -> None:
        self.cap_s = max(0.0, float(cap_ms)) / 1000.0
        self._spreads: Deque[float] = collections.deque(maxlen=SPREAD_HISTORY)
        self._widest_spread = 0.0  # max(self._spreads), worked out as each spread comes: seconds() is asked every turn
        self._call_s: Optional[float] = None
        # ended, rows, s, cost signature: a call speaks only for calls that cost like it (another client's 16 denoising
        # steps refused a 1-step request on an idle server)
        self._recent_calls: Deque[Tuple[float, int, float, CallCost]] = collections.deque(maxlen=SPREAD_HISTORY)
        # least_call_seconds' answer by (cost, rows), with the span of `now` it holds for (until the oldest call it
        # counted is forgotten): asked for every request, it changes only when a call ends or one grows old
        self._least_by_rows: Dict[Tuple[CallCost, int], Tuple[float, float, float]] = {}  # (least s, from, until)
        self._volatile: FrozenSet[str] = frozenset()  # option names of many values among the recent calls (kind_of)
        self._with_options = 0  # recent calls whose cost signature holds options
        # the option-free cost signatures of the recent calls, one object per value (_held)
        self._costs: Dict[CallCost, CallCost] = {}
        self._refused_since_call = 0  # requests refused by least_call_seconds since the last call ran
        # Refusal probes in a row too slow for their clients, by the bucket of what their call took (too slow for
        # every timeout up to it): (count, rows of the refused round, ms taken); and the probes granted since the last
        # call ran, by timeout bucket: (rows of the round, the longest timeout in ms)
        self._slow_probes: Dict[int, Tuple[int, int, float]] = {}
        self._probing: Dict[int, Tuple[int, float]] = {}

    def observe_spread(self, seconds: float) -> None:
        """One round's time from its first to its last arrival."""
        self._spreads.append(max(0.0, float(seconds)))
        self._widest_spread = max(self._spreads)  # over those still held: the oldest may just have been forgotten

    def observe_call(self, seconds: float, rows: int = 1, cost: CallCost = None) -> None:
        """One policy call's duration, observation rows and cost signature (cost_signature), just ended (a moving
        average of durations is kept)."""
        seconds = max(0.0, float(seconds))
        self._call_s = seconds if self._call_s is None else 0.8 * self._call_s + 0.2 * seconds
        recent = self._recent_calls
        if len(recent) == recent.maxlen:  # the oldest makes way
            self._with_options -= _has_options(recent[0][3])
        recent.append((time.monotonic(), max(1, int(rows)), seconds, self._held(cost, keep=True)))
        self._with_options += _has_options(cost)
        # none of them sent options (the common case): none is volatile, and the walk is saved on every call
        self._volatile = _volatile_options(cost for _, _, _, cost in recent) if self._with_options else frozenset()
        self._least_by_rows.clear()
        self._refused_since_call = 0
        # A client whose timeout is always shorter than the calls would otherwise have every other request run after
        # it gave up: a refusal probe whose call (its round's share of it) took its client's timeout counts against
        # every timeout up to what it took (a jittering timeout is one client); a call faster than that starts them
        # over. A hopeless client backs off no longer timeout's probes, and ordinary slow calls back off none.
        rows = max(1, int(rows))

        def share_ms(rows_then: int) -> float:  # the call's share for a round of rows_then rows
            return 1000.0 * seconds * min(1.0, rows_then / rows)

        for rows_then, timeout_ms in self._probing.values():
            took_ms = share_ms(rows_then)
            if took_ms >= timeout_ms:  # too slow for every timeout up to what it took: counted there
                bucket = _timeout_bucket(took_ms)
                self._slow_probes[bucket] = (self._slow_count(bucket) + 1, rows_then, took_ms)
        self._probing.clear()
        for bucket in [b for b, (_, rows_then, took_ms) in self._slow_probes.items() if share_ms(rows_then) < took_ms]:
            del self._slow_probes[bucket]  # calls got faster: what they took no longer speaks for them

    def _slow_count(self, bucket: int) -> int:
        """Slow refusal probes in a row for a timeout of `bucket`: a probe too slow for a longer timeout was too slow
        for it too."""
        return max((count for b, (count, _, _) in self._slow_probes.items() if b >= bucket), default=0)

    def _refusals_for_probe(self, bucket: int) -> int:
        """Requests refused on recent calls' word before one whose client's timeout is in `bucket` runs as a probe:
        PROBE_AFTER_REFUSALS, doubling for each slow probe in a row for it past PROBE_BACKOFF_AFTER, up to
        MAX_PROBE_AFTER_REFUSALS."""
        doublings = max(0, self._slow_count(bucket) - PROBE_BACKOFF_AFTER)
        return min(PROBE_AFTER_REFUSALS << min(doublings, 16), MAX_PROBE_AFTER_REFUSALS)

    def call_seconds(self) -> float:
        """The policy's recent call time (0 before the first call)."""
        return self._call_s or 0.0

    def least_call_seconds(self, rows: int, now: float, timeout_s: Optional[float] = None,
                           cost: CallCost = None) -> float:
        """The least a call of `rows` rows and cost signature `cost` can take, by the policy's last SPREAD_HISTORY calls
        of the last CALL_MEMORY_S of that signature: as long as a smaller call and its share (rows / their rows) of a
        larger one. 0 when nothing is known (no recent call of its signature: it runs), after
        PROBE_AFTER_IDLE_S since the last call ran, and, for a request whose client allows `timeout_s` in all, after
        _refusals_for_probe requests refused on its word with their client's whole timeout (note_refused) since then,
        so that a request refused on old calls' word cannot be refused for ever (refused requests never run, so they
        never correct that word: one slow cold-start call refused a rollout's every later request, each sent right
        after the last refusal)."""
        if not self._recent_calls or now - self._recent_calls[-1][0] >= PROBE_AFTER_IDLE_S:
            return 0.0
        if timeout_s is not None and self._refused_since_call:  # none refused: no probe is due (the common case)
            timeout_ms = max(1.0, 1000.0 * timeout_s)
            bucket = _timeout_bucket(timeout_ms)
            if self._refused_since_call >= self._refusals_for_probe(bucket):
                rows_then, longest = self._probing.get(bucket, (rows, timeout_ms))
                self._probing[bucket] = (max(rows_then, rows), max(longest, timeout_ms))
                return 0.0
        return self._least_of_recent(rows, now, self._held(cost))

    def _held(self, cost: CallCost, keep: bool = False) -> CallCost:
        """The recent calls' object for an option-free signature equal to `cost`, else `cost` itself, so that
        _least_of_recent compares most signatures by identity (equal nested tuples compare item by item: 32 such
        compares cost ~30 us a request). Signatures with options are left as they are: 1, 1.0 and True are equal values
        of different kinds (kind_of). `keep`: a call's signature, held from now; the table holds only the recent calls'
        (a refused request's keys, up to a message's size, are never kept)."""
        if not _option_free(cost):
            return cost
        held = self._costs.get(cost)
        if held is not None or not keep:
            return cost if held is None else held
        if len(self._costs) >= SPREAD_HISTORY:  # forget those no recent call has any more
            self._costs = {old: old for _, _, _, old in self._recent_calls if _option_free(old)}
        self._costs[cost] = cost
        return cost

    def _least_of_recent(self, rows: int, now: float, cost: CallCost) -> float:
        """The least a call of `rows` rows and signature `cost` can take by such calls of the last CALL_MEMORY_S (0
        when none)."""
        known = self._least_by_rows.get((cost, rows))
        if known is not None and known[1] <= now < known[2]:
            return known[0]
        # One pass (each recent call's kind compared): asked again after every call (each clears the answers), over up to
        # SPREAD_HISTORY calls
        least: Optional[float] = None
        oldest = 0.0
        kind = self.kind_of(cost)
        for ended, rows_then, s, cost_then in self._recent_calls:
            if now - ended > CALL_MEMORY_S or (cost_then is not cost and self.kind_of(cost_then) != kind):
                continue
            share = rows / rows_then
            took = s * share if share < 1.0 else s  # its share of a larger call: s * min(1.0, share)
            if least is None:
                least, oldest = took, ended
                continue
            if took < least:
                least = took
            if ended < oldest:
                oldest = ended
        if least is None:
            return 0.0
        # the same calls count from now until the oldest of them is forgotten (a later call clears the answers)
        self._least_by_rows[(cost, rows)] = (least, now, oldest + CALL_MEMORY_S)
        return least

    def kind_of(self, cost: CallCost) -> CallCost:
        """`cost` with the options whose values keep changing (VOLATILE_OPTION_VALUES) keyed by their type alone: the
        kind recent calls are compared as (least_call_seconds), which a refusal names (describe_cost)."""
        volatile = self._volatile
        if not volatile or not (isinstance(cost, tuple) and len(cost) == 2 and isinstance(cost[1], tuple)):
            return cost
        return cost[0], tuple((name, _OfType(type(value).__name__)) if name in volatile else (name, value)
                              for name, value in cost[1])

    def note_refused(self) -> None:
        """A request was refused on least_call_seconds' word although it had its client's whole timeout left."""
        self._refused_since_call += 1

    def seconds(self) -> float:
        """The current window: how long after it starts (its first arrival, or the previous call's replies when that
        arrival came during the call) a round is dispatched without its stragglers."""
        if not self._spreads:
            return self.cap_s
        window = SPREAD_MARGIN * self._widest_spread + SPREAD_SLACK_S
        if self._call_s is not None:
            window = min(window, self._call_s)
        return min(self.cap_s, window)


def _has_options(cost: CallCost) -> bool:
    """Whether a cost signature (cost_signature's) holds options."""
    return isinstance(cost, tuple) and len(cost) == 2 and isinstance(cost[1], tuple) and len(cost[1]) > 0


def _option_free(cost: CallCost) -> bool:
    """Whether `cost` is a cost signature (cost_signature's) without options: its observation's keys, dtypes and shapes
    alone (str and int values, equal only when of one type)."""
    return isinstance(cost, tuple) and len(cost) == 2 and cost[1] == ()


def _volatile_options(costs: Iterable[CallCost]) -> FrozenSet[str]:
    """The option names (but COST_VALUE_OPTIONS) with more than VOLATILE_OPTION_VALUES distinct values among `costs`
    (cost_signature's), new in at least VOLATILE_OPTION_SHARE of the calls that sent them: a counter, a timestamp."""
    values: Dict[str, set] = {}
    sent: Dict[str, int] = {}
    for cost in costs:
        if isinstance(cost, tuple) and len(cost) == 2 and isinstance(cost[1], tuple):
            for name, value in cost[1]:
                if name not in COST_VALUE_OPTIONS:
                    values.setdefault(name, set()).add(value)
                    sent[name] = sent.get(name, 0) + 1
    return frozenset(name for name, seen in values.items()
                     if len(seen) > VOLATILE_OPTION_VALUES and len(seen) >= VOLATILE_OPTION_SHARE * sent[name])
