"""BasePolicy: the policy API shared by local policies, servers and PolicyClient, with strict validation."""

from __future__ import annotations

import cmath
import contextlib
import inspect
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from typing import AbstractSet, Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from .client_options import check_flag
from .modality import ModalityConfig, copy_modality_configs, modality_configs_from_json
from .peer_text import shown_key, shown_keys


def accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    """True when `function` can be called with the keyword argument `name` (or takes **kwargs); False for a callable
    without a signature (a builtin or extension callable)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or (p.name == name and p.kind in keyword_kinds)
               for p in parameters)

class PolicyValidationError(ValueError):
    """An observation or action does not match the policy's modality config."""


class ObservationError(PolicyValidationError):
    """An observation is missing a key or has the wrong type, dtype or shape."""


class ActionError(PolicyValidationError):
    """A policy produced an action that is missing a key or has the wrong type, dtype or shape."""


class NonFiniteActionError(ActionError):
    """A strict policy's own action holds NaN or inf (`action` is that action, for a caller that explains it, and
    `info` the info that came with it, when known), or a model's raw output did before any action was made (`action`
    None; `key` and `rows` say where)."""

    def __init__(self, message: str, action: Any = None, key: str = "", rows: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.action = action
        self.key = key
        self.rows = list(rows)
        self.info: Optional[Dict[str, Any]] = None
        self.policy: Any = None  # the BasePolicy whose get_action raised it, with its info


def _batch_size(value: Any) -> int:
    return int(value.shape[0]) if isinstance(value, np.ndarray) and value.ndim > 0 else len(value)


def _check_array(kind: str, key: str, value: Any, dtype: type, ndim: int, horizon: int, layout: str, err: type) -> None:
    if not isinstance(value, np.ndarray):
        got = (f"a numpy {value.dtype} scalar (0-d); send an array of shape {layout}" if isinstance(value, np.generic)
               else type(value).__name__)
        raise err(f"{kind} key '{key}' must be a numpy array of dtype {np.dtype(dtype)} and shape {layout}; got {got}")
    if type(value) is not np.ndarray and isinstance(value, np.ma.MaskedArray):  # the wire and the model see no mask
        raise err(masked_array_refusal(f"{kind} key '{key}'"))
    if value.dtype != dtype:
        hint, scale = "", ""
        # A cast is the fix only when the byte order alone differs: '>f4' frames in [0, 1] cast to uint8 were black.
        if value.dtype.newbyteorder("=") == dtype:
            hint = f" (big-endian: send value.astype('{np.dtype(dtype).newbyteorder('<').str}'))"
        elif np.dtype(dtype) == np.uint8 and value.dtype.kind == "f":
            scale = float_frames_hint(value)
        raise err(f"{kind} key '{key}' must have dtype {np.dtype(dtype)}; got {value.dtype}{hint} with shape "
                  f"{value.shape}{scale}")
    if value.ndim != ndim:
        raise err(f"{kind} key '{key}' must have shape {layout}; got shape {value.shape}")
    if value.shape[1] != horizon:
        raise err(f"{kind} key '{key}' must have horizon T={horizon} (shape {layout}); got T={value.shape[1]} in shape {value.shape}")


def masked_array_refusal(name: str) -> str:
    """The refusal of a numpy masked array given as observation entry `name` (strict or lenient alike)."""
    return (f"{name} is a numpy masked array; send value.filled(x) with the value the policy should see (a masked "
            "entry has no value to act on)")


def float_frames_hint(frames: np.ndarray) -> str:
    """The conversion to uint8 to suggest for float frames, chosen from their values: '* 255' for frames in [0, 1]
    only (frames already in 0..255 multiplied by 255 wrapped modulo 256 in the cast: a garbage image)."""
    finite = frames[np.isfinite(frames)]
    if finite.size == 0 or float(finite.max()) <= 1:
        return " (floats in [0, 1]? send (frames * 255).round().clip(0, 255).astype(np.uint8))"
    return " (floats in 0..255? send frames.round().clip(0, 255).astype(np.uint8))"


REAL_NUMBER_TYPES = (bool, int, float, np.bool_, np.integer, np.floating)


def unreal_dtype(value: Any) -> Optional[str]:
    """What `value` holds when it is not real numbers, as an error names it ('complex64', 'object holding a str'): a
    cast to float read complex as its real part, NaT as -9.2e18 and text as the number it spells. None for a bool,
    int or float dtype, and for an object array of Python or numpy real numbers (cast as such)."""
    array = np.asarray(value)
    if array.dtype.kind in "biuf":
        return None
    if array.dtype.kind == "O":
        held = next((type(item).__name__ for item in array.flat if not isinstance(item, REAL_NUMBER_TYPES)), None)
        return None if held is None else f"{array.dtype} holding a {held}"
    return str(array.dtype)


def non_finite_rows(value: Any) -> List[int]:
    """The rows (leading axis) of a float or complex array that hold NaN or inf, at most 8; [] for any other value
    or when every number is finite (the common case costs one isfinite pass)."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fc" or not value.size or np.isfinite(value).all():
        return []
    if value.ndim == 0:
        return [0]
    bad = ~np.isfinite(value.reshape(value.shape[0], -1)).all(axis=1)
    return [int(row) for row in np.flatnonzero(bad)[:8]]


_SUMMED_MAX_ITEMS = 64  # float arrays up to this size are checked finite by a Python sum (states: a few values)


def all_finite(value: np.ndarray) -> bool:
    """True when no element of a float or complex array is NaN or inf.

    A small plain array of the common float types is summed in Python: one tolist() instead of two numpy calls and a
    temporary. A sum is finite only when every term is; a sum that overflows falls through to the exact check. A
    subclass (a masked array's tolist() has None for its masked entries, a matrix's nested lists) takes the exact
    check, of the numbers it holds.
    """
    char = value.dtype.char
    if type(value) is np.ndarray and value.size <= _SUMMED_MAX_ITEMS and char in "efdFD":
        total = sum(value.reshape(-1).tolist())
        if math.isfinite(total) if char in "efd" else cmath.isfinite(total):
            return True
    return bool(np.isfinite(np.asarray(value)).all())


def non_finite_scalar(value: Any) -> bool:
    """True for a float or complex scalar (Python or numpy) that is NaN or inf."""
    if isinstance(value, float):  # np.float64 too
        return not math.isfinite(value)
    if isinstance(value, complex):  # np.complex128 too
        return not cmath.isfinite(value)
    if isinstance(value, (np.floating, np.complexfloating)):
        return not bool(np.isfinite(value))
    return False


_LEFT = object()  # first_non_finite's stack marker: the walk has left the container whose id comes with it


def first_non_finite(action: Any) -> Optional[Tuple[str, Any]]:
    """(dotted key, value) of the first array or scalar holding NaN or inf anywhere in an action (arrays, numpy or
    Python scalars, lists, sets, nested maps; the items of object arrays too); None when every number is finite. Each
    value is visited once, without recursion, and a float array of a map is checked as soon as it is met (the
    common case: a server checks every reply it sends, a client every reply of a server that does not).
    ActionError, naming the key, for what cannot be sent: a numpy masked array or a container that holds itself."""
    stack: List[Tuple[Any, Any]] = [(action, "")]
    inside: Set[int] = set()  # the containers around the value being walked: meeting one again is a cycle
    walked: Set[int] = set()  # a container met twice (shared, not a cycle) is walked once
    while stack:
        value, where = stack.pop()
        if value is _LEFT:
            inside.discard(where)
            continue
        if isinstance(value, (dict, list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind == "O"):
            if id(value) in inside:
                raise ActionError(f"action contains a reference cycle at key '{where or 'action'}' (a list, map or "
                                  "object array that holds itself); it cannot be sent")
            if id(value) in walked:
                continue
            walked.add(id(value))
            inside.add(id(value))
            stack.append((_LEFT, id(value)))
        if isinstance(value, dict):
            for key, child in value.items():
                path = f"{where}.{key}" if where else str(key)
                if type(child) is np.ndarray and child.dtype.kind != "O":  # checked at once
                    if child.dtype.kind in "fc" and child.size and not all_finite(child):
                        return path, child
                else:
                    stack.append((child, path))
        elif isinstance(value, np.ndarray):
            if isinstance(value, np.ma.MaskedArray):
                raise ActionError(f"action key '{where or 'action'}' is a numpy masked array (shape {value.shape}, "
                                  f"{int(np.ma.count_masked(value))} masked entries), which cannot be sent: the wire "
                                  "carries no mask; return value.filled(x) with the value the robot should get")
            if value.dtype.kind == "O":
                stack.extend((child, where) for child in value.reshape(-1))
            elif value.dtype.kind in "fc" and value.size and not all_finite(value):
                return where, value
        elif isinstance(value, (list, tuple, set, frozenset)):  # the wire sends a set as a list
            stack.extend((child, where) for child in value)
        elif non_finite_scalar(value):
            return where, value
    return None


def _check_finite(key: str, value: np.ndarray) -> None:
    """A NaN or inf state makes NaN actions that a robot would execute: refuse it, naming the key and rows."""
    rows = non_finite_rows(value)
    if rows:
        raise ObservationError(f"State key '{key}' has non-finite values (NaN or inf) in rows {rows}; expected finite numbers")


def as_modality_configs(configs: Any) -> Dict[str, ModalityConfig]:
    """A policy's get_modality_config() as {modality: ModalityConfig}: the JSON form (plain dicts, as read from a
    modality.json) converted, None as none; ValueError naming get_modality_config (and the modality) otherwise."""
    if configs is None:
        return {}
    if not isinstance(configs, Mapping):
        raise ValueError(f"get_modality_config() must return a dict {{modality: ModalityConfig}}; got "
                        f"{type(configs).__name__}")
    if all(isinstance(config, ModalityConfig) for config in configs.values()):
        return configs if isinstance(configs, dict) else dict(configs)
    try:
        return modality_configs_from_json(configs)
    except ValueError as exc:
        raise ValueError(f"get_modality_config() returned an invalid {exc}; expected ModalityConfig objects or "
                         "their JSON form") from exc


def validate_observation(observation: Any, configs: Mapping[str, ModalityConfig],
                         unread_state_keys: AbstractSet[str] = frozenset()) -> int:
    """Check a nested observation {video, state, language} against modality configs; return the batch size.
    `unread_state_keys`: state keys whose values the policy never reads (a GR00T checkpoint with exclude_state feeds
    the model zeros), held to their shape and dtype but not to finite values."""
    configs = as_modality_configs(configs)
    if not isinstance(observation, Mapping):
        raise ObservationError(f"observation must be a dict with keys 'video', 'state', 'language'; got {type(observation).__name__}")
    batch: Optional[int] = None
    first_key = ""

    def check_batch(kind: str, key: str, n: int) -> None:
        nonlocal batch, first_key
        if batch is None:
            batch, first_key = n, f"{kind} key '{key}'"
        elif n != batch:
            raise ObservationError(f"{kind} key '{key}' has batch size {n}; expected {batch} like {first_key}")

    for modality in ("video", "state", "language"):
        if modality not in configs:
            continue
        if modality not in observation:
            flat = any(isinstance(key, str) and key.startswith(f"{modality}.") for key in observation)
            groups = [group for group in ("video", "state", "language") if group in observation]
            if flat and groups:  # both forms: the sim-wrapper hint would send a user to a flag the server may have
                raise ObservationError(
                    f"observation mixes the flat form ('{modality}.<key>' keys) with nested groups ({groups}); send one "
                    "form: all flat keys for a --use-sim-policy-wrapper server, or {'video': {...}, 'state': {...}, "
                    "'language': {...}}"
                )
            hint = (f"; this is the flat form ('{modality}.<key>') a Gr00tSimPolicyWrapper takes: start the server with "
                    "--use-sim-policy-wrapper (a policy object called directly, as by gr00t_eval's run_rollout: wrap it "
                    "in Gr00tSimPolicyWrapper, or take the flat form with strict=False), or send "
                    "{'video': {...}, 'state': {...}, 'language': {...}}") if flat else ""
            raise ObservationError(f"observation must contain a '{modality}' key (a dict); got keys {sorted(observation, key=str)}{hint}")
        group = observation[modality]
        if not isinstance(group, Mapping):
            raise ObservationError(f"observation['{modality}'] must be a dict; got {type(group).__name__}")
        config = configs[modality]
        for key in config.modality_keys:
            if key not in group:
                raise ObservationError(f"{modality.capitalize()} key '{key}' is missing from observation['{modality}']; got keys {sorted(group, key=str)}")
            value = group[key]
            if modality == "video":
                _check_array("Video", key, value, np.uint8, 5, config.horizon, "(B, T, H, W, 3)", ObservationError)
                if value.shape[-1] != 3:
                    raise ObservationError(f"Video key '{key}' must have 3 channels (B, T, H, W, 3); got shape {value.shape}")
                check_batch("Video", key, value.shape[0])
            elif modality == "state":
                _check_array("State", key, value, np.float32, 3, config.horizon, "(B, T, D)", ObservationError)
                if key not in unread_state_keys:
                    _check_finite(key, value)
                check_batch("State", key, value.shape[0])
            else:
                if not isinstance(value, (list, tuple)):
                    raise ObservationError(f"Language key '{key}' must be a list of B lists of {config.horizon} str; got {type(value).__name__}")
                for row, item in enumerate(value):
                    if not isinstance(item, (list, tuple)) or len(item) != config.horizon or not all(isinstance(s, str) for s in item):
                        raise ObservationError(
                            f"Language key '{key}' row {row} must be a list of {config.horizon} str; got {item!r:.80}"
                        )
                check_batch("Language", key, len(value))
    return batch or 0


def validate_action(action: Any, configs: Mapping[str, ModalityConfig], batch_size: Optional[int] = None, *,
                    finite: bool = True) -> None:
    """Check an action dict {key: float32 (B, T, D)} against the 'action' modality config; with `finite`, its values
    too (a caller that runs refuse_non_finite_action after passes False)."""
    if not isinstance(action, Mapping):
        raise ActionError(f"action must be a dict of arrays; got {type(action).__name__}")
    config = as_modality_configs(configs).get("action")
    if config is None:
        return
    check_action_horizon(config)
    for key in config.modality_keys:
        if key not in action:
            raise ActionError(f"Action key '{key}' is missing from the action; got keys {shown_keys(action)}")
        value = action[key]
        _check_array("Action", key, value, np.float32, 3, config.horizon, "(B, T, D)", ActionError)
        rows = non_finite_rows(value) if finite else []
        if rows:  # a strict policy's NaN reached the robot when called directly, with no server or client between
            raise NonFiniteActionError(f"the policy produced non-finite values (NaN or inf) in action key '{key}' rows "
                                       f"{rows}", action)
        if batch_size is not None and value.shape[0] != batch_size:
            raise ActionError(f"Action key '{key}' has batch size {value.shape[0]}; expected {batch_size} (the observation's)")


def check_action_horizon(config: ModalityConfig) -> None:
    """ActionError for an 'action' config without delta_indices: its chunks would have 0 steps, nothing to execute."""
    if not config.horizon:
        raise ActionError(f"the 'action' modality config has no delta_indices (horizon 0) for action keys "
                          f"{config.modality_keys}; expected at least one step, e.g. delta_indices=[0]")


def refuse_non_finite_action(action: Any) -> None:
    """NonFiniteActionError naming the dotted key of the first NaN or inf anywhere in an action, keys the modality
    config does not list included."""
    found = first_non_finite(action)
    if found is not None:
        key, value = found
        rows = non_finite_rows(value)
        where = f" rows {rows}" if rows else ""
        raise NonFiniteActionError(f"the policy produced non-finite values (NaN or inf) in action key '{key}'{where}",
                                   action)


PAIR_EXPECTED = "expected a pair (action: dict, info: dict or None)"


def split_action_result(result: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A policy's get_action result as (action, info), a None info as {}; ActionError unless it is a pair of maps
    (a policy returning its action dict alone got "not enough values to unpack", or its two keys as the pair)."""
    if isinstance(result, Mapping):
        keys = ", ".join(map(str, list(result)[:4])) + (", ..." if len(result) > 4 else "")
        raise ActionError(f"the policy's get_action returned a {type(result).__name__} alone (keys {keys}); "
                          f"{PAIR_EXPECTED}: return (action, {{}})")
    if not isinstance(result, (tuple, list)):
        raise ActionError(f"the policy's get_action returned {type(result).__name__}; {PAIR_EXPECTED}")
    if len(result) == 2 and isinstance(result[0], Mapping) and (result[1] is None or isinstance(result[1], Mapping)):
        action, info = result
        return action, ({} if info is None else info)
    types = ", ".join(type(item).__name__ for item in result[:4]) + (", ..." if len(result) > 4 else "")
    # Python unpacks a 2-key dict into its keys: what a policy that returns its action dict alone gives
    hint = " (an action dict returned alone has its keys taken as the pair)" if (
        len(result) == 2 and all(isinstance(item, str) for item in result)) else ""
    raise ActionError(f"the policy's get_action returned a {type(result).__name__} of {len(result)}: ({types}); "
                      f"{PAIR_EXPECTED}{hint}")


def _listed_keys(configs: Optional[Mapping[str, ModalityConfig]]) -> Optional[Dict[str, Sequence[str]]]:
    """{modality: the keys its config lists} of the observation modalities; None (every key counts) without configs
    or when they list none of video, state and language."""
    listed = {modality: configs[modality].modality_keys for modality in ("video", "state", "language")
              if configs and modality in configs}
    return listed or None


def nested_batch_size(observation: Any, configs: Optional[Mapping[str, ModalityConfig]] = None) -> Optional[int]:
    """The batch size of a nested observation ({video, state, language} dicts), from its first array or language
    list of a key `configs` lists (as validate_observation counts it: an unlisted key is not read), of any key without
    configs; None when it has neither (a flat or empty observation)."""
    if not isinstance(observation, Mapping):
        return None
    listed = _listed_keys(configs)
    for modality in ("video", "state"):
        group = observation.get(modality)
        if isinstance(group, Mapping):
            keys = group if listed is None else [key for key in listed.get(modality, ()) if key in group]
            for key in keys:
                value = group[key]
                if isinstance(value, np.ndarray) and value.ndim > 0:
                    return int(value.shape[0])
    group = observation.get("language")
    if isinstance(group, Mapping):
        keys = group if listed is None else [key for key in listed.get("language", ()) if key in group]
        for key in keys:
            if isinstance(group[key], (list, tuple)):
                return len(group[key])
    return None


def flat_batch_size(observation: Any, configs: Optional[Mapping[str, ModalityConfig]] = None) -> Optional[int]:
    """The batch size of a flat observation ('video.<k>' / 'state.<k>' arrays), from its first such array of a key
    `configs` lists (any without configs); None when it has none."""
    if not isinstance(observation, Mapping):
        return None
    listed = _listed_keys(configs)
    for key, value in observation.items():
        if isinstance(key, str) and key.startswith(("video.", "state.")) and isinstance(value, np.ndarray) and value.ndim > 0:
            modality, _, name = key.partition(".")
            if listed is None or name in listed.get(modality, ()):
                return int(value.shape[0])
    return None


def check_action_batch(action: Any, observation: Any, configs: Optional[Mapping[str, ModalityConfig]] = None) -> None:
    """Every array of the action has one row per observation row, nested or flat (a policy or server that answers
    B=2 for B=1, or drops a row, would otherwise hand a robot another row's action); the rows are counted on the keys
    `configs` lists, when given, as the observation was checked (an unlisted extra key may have other rows)."""
    expected = nested_batch_size(observation, configs)
    if expected is None:
        expected = flat_batch_size(observation, configs)
    if expected is None or not isinstance(action, Mapping):
        return
    for key, value in action.items():
        if isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] != expected:
            raise ActionError(f"Action key '{shown_key(key)}' has batch size {value.shape[0]} (shape {value.shape}); "
                              f"expected {expected}, one row per observation row")


class _CheckedObservations(threading.local):
    marks: FrozenSet[Tuple[int, int]] = frozenset()


_checked = _CheckedObservations()


@contextlib.contextmanager
def rows_checked(observation: Any, policy: Any) -> Iterator[None]:
    """Within it (on this thread), `observation` counts as checked row by row by `policy`'s own check_observation, as
    a batching server checks each request before merging them: `policy`, when it has `row_wise_checks`, does not check
    it again. Only that policy: one it wraps still runs its own checks, unless the wrapper marks them as run too."""
    outer = _checked.marks
    _checked.marks = outer | {(id(observation), id(policy))}
    try:
        yield
    finally:
        _checked.marks = outer


def are_rows_checked(observation: Any, policy: Any) -> bool:
    """True inside rows_checked(observation, policy) on this thread."""
    return (id(observation), id(policy)) in _checked.marks


class BasePolicy(ABC):
    """A policy: observation -> (action, info). With `strict`, inputs and outputs are validated.

    Subclasses implement `_get_action`, `reset` and `get_modality_config`; the default checks validate
    the nested form against `get_modality_config()`, and may be overridden.
    """

    # True when check_observation judges each row alone, so that rows it passed one request at a time pass merged too
    # (a batching server's merged call then skips it: see rows_checked). False for a check of the batch as a whole.
    row_wise_checks = False

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = check_flag("strict", strict)  # bool("false") is True, and None turned the checks off

    def check_observation(self, observation: Dict[str, Any]) -> None:
        """Raise ObservationError if the observation does not fit the modality config."""
        validate_observation(observation, self.get_modality_config())

    def check_action(self, action: Dict[str, Any]) -> None:
        """Raise ActionError if the action does not fit the modality config."""
        validate_action(action, self.get_modality_config())

    @abstractmethod
    def _get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Compute the action chunk for a validated observation."""

    @abstractmethod
    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Reset any episode state; return an info dict."""

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        """The modality configs this policy reads and writes ({} when it has none)."""
        return {}

    def get_action(self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Validate (when strict), compute and validate the action; return (action, info)."""
        if self.strict and not (self.row_wise_checks and are_rows_checked(observation, self)):
            try:
                self.check_observation(observation)
            except Exception as exc:  # a serving server counts no policy call for it: nothing was computed
                exc.refused_before_call = True  # type: ignore[attr-defined]
                raise
        configs = self._configs_counting_rows() if self.strict else None
        action, info = split_action_result(self._get_action(observation, options))
        if self.strict:
            try:
                self._check_own_action(action)
            except NonFiniteActionError as exc:  # a batching server answers the finite rows with their info
                exc.info, exc.policy = info, self
                raise
            check_action_batch(action, observation, configs)
        return action, info

    def _configs_counting_rows(self) -> Optional[Dict[str, ModalityConfig]]:
        """The modality configs whose listed keys an action's rows are counted on; None (every key counts) where
        get_modality_config raises or returns another form: a policy with its own checks may need none of ours."""
        try:
            return as_modality_configs(self.get_modality_config())
        except Exception:  # noqa: BLE001 - never worth failing a computed action for
            return None

    def _check_own_action(self, action: Dict[str, Any]) -> None:
        """check_action, then NaN/inf anywhere in the action (keys the config does not list too); the default
        check_action leaves its values to that one pass."""
        if type(self).check_action is BasePolicy.check_action:
            validate_action(action, self.get_modality_config(), finite=False)
        else:
            self.check_action(action)
        refuse_non_finite_action(action)


class PolicyWrapper(BasePolicy):
    """A policy that adapts another one; reset and modality configs are forwarded."""

    def __init__(self, policy: BasePolicy, *, strict: bool = True) -> None:
        super().__init__(strict=strict)
        self.policy = policy

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return self.policy.reset(options)

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        return copy_modality_configs(as_modality_configs(self.policy.get_modality_config()))
