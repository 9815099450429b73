"""Gr00tSimPolicyWrapper: flat sim observations (`video.*`, `state.*`, language key) in, flat `action.*` out."""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

import numpy as np

from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import ActionError, BasePolicy, ObservationError, PolicyWrapper

# Legacy GR00T sim envs send the language under this key while the config says "task".
LEGACY_LANGUAGE_KEY = "annotation.human.coarse_action"


class Gr00tSimPolicyWrapper(PolicyWrapper):
    """Adapts a nested-form policy to GR00T's flat simulation format (server-eval.md §1.4).

    With strict=False (server --no-strict) nothing is validated here; the inner policy keeps its own
    `strict`. An empty observation is passed through unchecked so a ReplayPolicy can be driven
    without one. Options (including the server's `_session_id`) are forwarded untouched.
    """

    def __init__(self, policy: BasePolicy, *, strict: bool = True) -> None:
        super().__init__(policy, strict=strict)
        language = self.get_modality_config().get("language")
        if language is not None and language.horizon != 1:
            raise ValueError(f"only one language delta index is supported, got {language.delta_indices}")

    @property
    def modality_configs(self) -> Dict[str, ModalityConfig]:
        return self.get_modality_config()

    @property
    def supports_batching(self) -> bool:
        """Batched across clients exactly when the wrapped policy is: every flat key carries the batch rows, and the
        wrapper only renames keys row for row."""
        return bool(getattr(self.policy, "supports_batching", False))

    def language_sources(self) -> FrozenSet[str]:
        """The flat keys whose strings (or UTF-8 bytes) this wrapper reads as language; the server holds them to
        its language limits."""
        language = self.get_modality_config().get("language")
        keys = set(language.modality_keys) if language is not None else set()
        if "task" in keys:
            keys.add(LEGACY_LANGUAGE_KEY)  # read instead of "task" when sent (_language_source)
        return frozenset(keys)

    def _language_source(self, key: str, observation: Mapping[str, Any]) -> str:
        if key == "task" and LEGACY_LANGUAGE_KEY in observation:
            return LEGACY_LANGUAGE_KEY
        return key

    def check_observation(self, observation: Any) -> None:
        """Validate flat keys: video.<k> uint8 (B,T,H,W,3), state.<k> float32 (B,T,D), language as B strings."""
        if observation is None or (isinstance(observation, Mapping) and not observation):
            return
        if not isinstance(observation, Mapping):
            raise ObservationError(f"observation must be a dict of flat keys (video.*, state.*, language); got {type(observation).__name__}")
        configs = self.get_modality_config()
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
            if config is None:
                continue
            for key in config.modality_keys:
                name = f"{modality}.{key}"
                if name not in observation:
                    raise ObservationError(f"{kind} key '{name}' must be in observation; got keys {sorted(observation)}")
                value = observation[name]
                _check_array(kind, name, value, dtype, ndim, config.horizon, layout, ObservationError)
                if modality == "video" and value.shape[-1] != 3:
                    raise ObservationError(f"Video key '{name}' must have 3 channels {layout}; got shape {value.shape}")
                check_batch(name, value.shape[0])
        language = configs.get("language")
        for key in language.modality_keys if language is not None else []:
            source = self._language_source(key, observation)
            if source not in observation:
                raise ObservationError(f"Language key '{source}' must be in observation; got keys {sorted(observation)}")
            check_batch(source, len(_language_batch(observation[source], source)))

    def check_action(self, action: Any) -> None:
        """Each action.<k> must be float32 (B, T, D) with T = the action horizon."""
        if not isinstance(action, Mapping):
            raise ActionError(f"action must be a dict; got {type(action).__name__}")
        config = self.get_modality_config().get("action")
        for key in config.modality_keys if config is not None else []:
            name = f"action.{key}"
            if name not in action:
                raise ActionError(f"Action key '{name}' must be in action; got keys {sorted(action)}")
            _check_array("Action", name, action[name], np.float32, 3, config.horizon, "(B, T, D)", ActionError)

    def _get_action(self, observation: Any, options: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        nested = self._to_nested(observation or {})
        action, info = self.policy.get_action(nested, _inner_options(options))
        return {f"action.{key}": value for key, value in action.items()}, info

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
            source = self._language_source(key, observation)
            if source in observation:
                nested["language"][key] = [[text] for text in _language_batch(observation[source], source)]
        return nested


def _inner_options(options: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Options for the wrapped policy: an RTC previous chunk keyed `action.<k>` (as this wrapper returns
    actions) is re-keyed `<k>`, as the wrapped policy returns them; everything else passes unchanged."""
    rtc = (options or {}).get("rtc")
    if not isinstance(rtc, Mapping) or not isinstance(rtc.get("previous_action"), Mapping):
        return options
    previous = {
        key[len("action."):] if isinstance(key, str) and key.startswith("action.") else key: value
        for key, value in rtc["previous_action"].items()
    }
    return {**options, "rtc": {**rtc, "previous_action": previous}}


def _check_array(kind: str, key: str, value: Any, dtype: type, ndim: int, horizon: int, layout: str, error: type) -> None:
    """Raise `error` unless value is a numpy array of `dtype`, `ndim` dims and horizon (axis 1) `horizon`."""
    if not isinstance(value, np.ndarray):
        raise error(f"{kind} key '{key}' must be a numpy array of dtype {np.dtype(dtype)} and shape {layout}; got {type(value).__name__}")
    if value.dtype != dtype:
        raise error(f"{kind} key '{key}' must have dtype {np.dtype(dtype)}; got {value.dtype} with shape {value.shape}")
    if value.ndim != ndim:
        raise error(f"{kind} key '{key}' must have shape {layout}; got shape {value.shape}")
    if value.shape[1] != horizon:
        raise error(f"{kind} key '{key}' must have horizon T={horizon} (shape {layout}); got shape {value.shape}")


def _language_batch(value: Any, key: str) -> List[str]:
    """B strings from a tuple/list of str, a numpy string array or a bare str."""
    if isinstance(value, str):
        items: List[Any] = [value]
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "USO":
            raise ObservationError(f"Language key '{key}' must hold strings; got a numpy array of dtype {value.dtype}")
        items = value.reshape(-1).tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ObservationError(f"Language key '{key}' must be a tuple, list, numpy array or str; got {type(value).__name__}")
    if not items:
        raise ObservationError(f"Language key '{key}' must not be empty")
    out = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str):
            raise ObservationError(f"Language key '{key}' must hold strings; got {type(item).__name__} {item!r:.60}")
        out.append(item)
    return out
