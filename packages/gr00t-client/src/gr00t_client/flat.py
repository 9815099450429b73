"""GR00T's flat simulation form: `video.<k>`, `state.<k>` and a language key at the observation's top level (no
`video`/`state`/`language` maps) in, `action.<k>` out.

A server started with `--use-sim-policy-wrapper` (or the reference's Gr00tSimPolicyWrapper) takes this form and
reports its wrapped policy's nested modality configs; these checks hold a flat observation to those configs, on
the server and in a strict PolicyClient alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import AbstractSet, Any, List, Optional

import numpy as np

from .modality import ModalityConfig
from .peer_text import shown_keys
from .policy import (ActionError, NonFiniteActionError, ObservationError, _check_array, _check_finite,
                     as_modality_configs, check_action_horizon, non_finite_rows)

# Legacy GR00T sim envs send the language under this key while the config says "task".
LEGACY_LANGUAGE_KEY = "annotation.human.coarse_action"
_NESTED_GROUPS = ("video", "state", "language")


def is_flat_observation(observation: Any) -> bool:
    """True for a dict in the flat form: some `video.*` or `state.*` key and none of the nested groups."""
    if not isinstance(observation, Mapping) or any(group in observation for group in _NESTED_GROUPS):
        return False
    return any(isinstance(key, str) and key.startswith(("video.", "state.")) for key in observation)


def is_flat_action(action: Any) -> bool:
    """True for an action dict whose keys are all `action.<k>`."""
    return (isinstance(action, Mapping) and bool(action)
            and all(isinstance(key, str) and key.startswith("action.") for key in action))


def language_source(key: str, observation: Mapping[str, Any]) -> str:
    """The flat key a language config key is read from: the legacy key replaces "task" when it is sent."""
    if key == "task" and LEGACY_LANGUAGE_KEY in observation:
        return LEGACY_LANGUAGE_KEY
    return key


def language_batch(value: Any, key: str) -> List[str]:
    """B strings from a tuple/list of str (or UTF-8 bytes), a numpy string array or a bare str (B may be 0)."""
    if isinstance(value, str):
        items: List[Any] = [value]
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "USO":
            raise ObservationError(f"Language key '{key}' must hold strings; got a numpy array of dtype {value.dtype}")
        if value.ndim > 1 and value.size != value.shape[0]:  # before tolist(): 25x the array's bytes as Python strings
            raise ObservationError(f"Language key '{key}' has shape {value.shape}: several strings in a row; expected "
                                   "one string per row, (B,) or (B, 1)")
        items = value.reshape(-1).tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ObservationError(f"Language key '{key}' must be a tuple, list, numpy array or str; got {type(value).__name__}")
    # None is fine: an observation of 0 rows is refused as such, by the batch checks of whoever reads the texts
    return [language_text(item, f"Language key '{key}' row {row}", "must hold strings")
            for row, item in enumerate(items)]


def language_text(item: Any, where: str, expected: str) -> str:
    """A language item as text: a str, or UTF-8 bytes decoded; ObservationError '<where> <expected>; got ...' for
    anything else, and naming `where` for bytes that are not UTF-8. A str holding a lone surrogate is passed on: only
    a policy that tokenizes the text as sent refuses it (formalization strips it; a replay reads no language)."""
    if isinstance(item, bytes):
        try:
            item = item.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ObservationError(f"{where} holds bytes that are not UTF-8 ({exc})") from None
    if not isinstance(item, str):
        raise ObservationError(f"{where} {expected}; got {type(item).__name__} {item!r:.60}")
    return item


def flat_observation_keys(configs: Mapping[str, ModalityConfig]) -> List[str]:
    """The flat observation keys nested configs name: `video.<k>`, `state.<k>` and the language keys."""
    configs = as_modality_configs(configs)
    keys = [f"{modality}.{key}" for modality in ("video", "state")
            for key in (configs[modality].modality_keys if modality in configs else [])]
    return keys + list(configs["language"].modality_keys if "language" in configs else [])


def missing_flat_keys_error(observation: Mapping[str, Any],
                            configs: Mapping[str, ModalityConfig]) -> Optional[ObservationError]:
    """An ObservationError naming every flat key the configs name that `observation` lacks, and the keys it has (a
    language key "task" is present when the legacy key is sent instead); None when none is missing."""
    expected = flat_observation_keys(configs)
    missing = [key for key in expected if language_source(key, observation) not in observation]
    if not missing:
        return None
    return ObservationError(f"flat keys {missing} are missing from the observation; expected the flat keys {expected}, "
                            f"got keys {sorted(map(str, observation))[:20]}")


def validate_flat_observation(observation: Any, configs: Mapping[str, ModalityConfig],
                              unread_state_keys: AbstractSet[str] = frozenset()) -> int:
    """Check flat keys against nested configs: video.<k> uint8 (B,T,H,W,3), state.<k> float32 (B,T,D) and finite,
    the language as B strings; return the batch size. `unread_state_keys` (named as the configs name them, without
    `state.`): as validate_observation's, held to their shape and dtype but not to finite values."""
    if not isinstance(observation, Mapping):
        raise ObservationError(f"observation must be a dict of flat keys (video.*, state.*, language); got {type(observation).__name__}")
    configs = as_modality_configs(configs)
    missing = missing_flat_keys_error(observation, configs)
    if missing is not None:
        raise missing
    batch: Optional[int] = None
    first = ""

    def check_batch(name: str, size: int) -> None:
        nonlocal batch, first
        if batch is None:
            batch, first = size, name
        elif size != batch:
            raise ObservationError(f"key '{name}' has batch size {size}; expected {batch} like '{first}'")

    for modality, kind, dtype, ndim, layout in (
        ("video", "Video", np.uint8, 5, "(B, T, H, W, 3)"),
        ("state", "State", np.float32, 3, "(B, T, D)"),
    ):
        config = configs.get(modality)
        for key in config.modality_keys if config is not None else []:
            name = f"{modality}.{key}"
            value = observation[name]
            _check_array(kind, name, value, dtype, ndim, config.horizon, layout, ObservationError)
            if modality == "video" and value.shape[-1] != 3:
                raise ObservationError(f"Video key '{name}' must have 3 channels {layout}; got shape {value.shape}")
            if modality == "state" and key not in unread_state_keys:
                _check_finite(name, value)
            check_batch(name, value.shape[0])
    language = configs.get("language")
    for key in language.modality_keys if language is not None else []:
        source = language_source(key, observation)
        check_batch(source, len(language_batch(observation[source], source)))
    return batch or 0


def validate_flat_action(action: Any, configs: Mapping[str, ModalityConfig]) -> None:
    """Each action.<k> of the 'action' config must be finite float32 (B, T, D) with T = the action horizon (as
    validate_action holds the nested form: a strict sim wrapper called directly handed out NaN)."""
    if not isinstance(action, Mapping):
        raise ActionError(f"action must be a dict; got {type(action).__name__}")
    config = as_modality_configs(configs).get("action")
    if config is not None:
        check_action_horizon(config)
    for key in config.modality_keys if config is not None else []:
        name = f"action.{key}"
        if name not in action:
            raise ActionError(f"Action key '{name}' must be in action; got keys {shown_keys(map(str, action))}")
        _check_array("Action", name, action[name], np.float32, 3, config.horizon, "(B, T, D)", ActionError)
        rows = non_finite_rows(action[name])
        if rows:
            raise NonFiniteActionError(f"the policy produced non-finite values (NaN or inf) in action key '{name}' "
                                       f"rows {rows}", action)
