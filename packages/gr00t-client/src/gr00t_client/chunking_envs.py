"""The envs of an ActionChunker's batch: an observation's batch size and the rows of some envs, the options of a
request for those envs, and reset()'s env_ids checked against the envs served."""

from __future__ import annotations

import numbers
from collections.abc import Mapping  # isinstance with typing.Mapping is twice as slow (hot paths)
from collections.abc import Sequence as SequenceABC
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import codec


def observation_batch_size(observation: Any) -> int:
    """The batch size B of an observation: the first array's leading axis, or the first list's length."""
    if type(observation) is dict or isinstance(observation, Mapping):  # a dict first: the ABC check is the slow one
        for value in observation.values():
            size = observation_batch_size(value)
            if size >= 0:
                return size
        return -1
    if isinstance(observation, np.ndarray):
        return int(observation.shape[0]) if observation.ndim > 0 else -1
    if isinstance(observation, (list, tuple)):
        return len(observation)
    return -1


def env_batch_size(observation: Any) -> int:
    """The batch size B of an ActionChunker's observation: the leading axis of its video and state arrays (flat
    `video.<k>`/`state.<k>` keys or the `video`/`state` groups) when it has any, so that an extra key ahead of them
    (a timestamp, episode ids) is not read as B; else observation_batch_size's. ValueError when they disagree."""
    if not isinstance(observation, Mapping):
        return observation_batch_size(observation)
    leading: List[Tuple[Any, Any, int]] = []  # (key, member of a video/state group or None, leading axis)
    for key, value in observation.items():
        if key in ("video", "state") and isinstance(value, Mapping):
            leading += [(key, inner, observation_batch_size(leaf)) for inner, leaf in value.items()]
        elif isinstance(key, str) and key.startswith(("video.", "state.")):
            leading.append((key, None, observation_batch_size(value)))
    sizes = {size for _, _, size in leading if size >= 0}
    if len(sizes) > 1:  # named only here, off the hot path
        shown = ", ".join(f"{key}['{inner}']: {size}" if inner is not None else f"'{key}': {size}"
                          for key, inner, size in leading if size >= 0)
        raise ValueError(f"the observation's video and state keys disagree on the batch size (leading axes {shown}); "
                         "expected one row per env in each")
    return sizes.pop() if sizes else observation_batch_size(observation)


def refuse_unsendable(observation: Any) -> None:
    """WireEncodeError, in PolicyClient's get_action words, for an observation the wire cannot carry (a torch tensor:
    its key, and how to send it instead); nothing for one it can."""
    data = {"observation": observation}
    try:
        codec.encode(data)
    except codec.WireEncodeError as exc:
        raise codec.located_encode_error(exc, data, "get_action", codec.encode) from None


def select_envs(observation: Any, env_ids: Sequence[int], batch_size: int) -> Any:
    """The rows `env_ids` of every batched leaf (arrays and lists of length B); other leaves pass through."""
    if isinstance(observation, Mapping):
        return {key: select_envs(value, env_ids, batch_size) for key, value in observation.items()}
    if isinstance(observation, np.ndarray) and observation.ndim > 0 and observation.shape[0] == batch_size:
        return observation[list(env_ids)]
    if isinstance(observation, (list, tuple)) and len(observation) == batch_size:
        return [observation[i] for i in env_ids]
    return observation


# The get_action options that hold one row per env (Gr00tPolicy's; a seed is one int, or a list of one per env): a
# request for some envs sends those envs' rows of them. Any other option is the whole batch's and goes as given.
ROW_OPTIONS = frozenset({"noise", "seed"})


def _is_int(value: Any) -> bool:
    """An int, numpy's included, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_mask(items: Any) -> bool:
    """A non-empty sequence of bools (numpy's included): a vector env's done-mask."""
    return len(items) > 0 and all(isinstance(item, (bool, np.bool_)) for item in items)


class _EnvRows:
    """ActionChunker's envs and their rows (it sets `_n_envs` and the per-env lists that _ensure_envs sizes)."""

    def _refuse_unsendable(self, observation: Any) -> None:
        """Refuse an observation a served policy's wire cannot carry (ActionChunker's, for a PolicyClient); nothing
        here."""

    def _ensure_envs(self, observation: Any) -> None:
        """Take the observation's batch size (env_batch_size) as the number of envs at the first call; refuse another
        later, and an observation whose batch size cannot be told."""
        batch_size = env_batch_size(observation)
        if batch_size == 0:
            raise ValueError("observation has 0 rows (a batch of size 0): expected one row per env")
        if batch_size < 1:
            self._refuse_unsendable(observation)  # a served policy's: another library's arrays (torch) named as the
            # client names them
            raise ValueError("cannot tell the batch size of the observation: it holds no numpy array or list (the "
                             "batch size is read from those; a tensor's is not: value.detach().cpu().numpy())")
        if self._n_envs is None:
            self._n_envs = batch_size
            self._buffers = [None] * batch_size
            self._cursors = [0] * batch_size
            self._steps_taken = [0] * batch_size
            self._generations = [0] * batch_size
        elif batch_size != self._n_envs:
            raise ValueError(f"observation has batch size {batch_size}; this chunker serves {self._n_envs} envs (make a new one)")

    def _rows(self, observation: Any, env_ids: Sequence[int]) -> Any:
        return observation if len(env_ids) == self._n_envs else select_envs(observation, env_ids, self._n_envs or 0)

    def _row_options(self, options: Optional[Dict[str, Any]], env_ids: Sequence[int]) -> Optional[Dict[str, Any]]:
        """The options of a request for `env_ids`: the per-env options (ROW_OPTIONS: a `noise` of (B, ...), a `seed`)
        keep the rows of those envs (a whole noise was refused for the rows not asked for); every other option goes
        whole, whatever its length (a goal of 3 numbers was cut to one for 3 envs)."""
        if not options or len(env_ids) == self._n_envs:
            return options
        rows = list(env_ids)
        picked = {key: value[rows] if key in ROW_OPTIONS and isinstance(value, np.ndarray) and value.ndim > 0
                  and value.shape[0] == self._n_envs else value for key, value in options.items()}
        noise = picked.get("noise")
        if noise is not None and not isinstance(noise, np.ndarray):  # nested lists (Gr00tPolicy takes them), a tensor
            try:
                noise = np.asarray(noise)
            except ValueError as exc:  # ragged lists
                raise ValueError(f"options['noise'] must be an array of shape (B, ...) (one row per env, B="
                                 f"{self._n_envs}) or nested lists of that shape; got {type(noise).__name__} that "
                                 f"numpy cannot make an array of: {exc}") from None
            if noise.ndim > 0 and noise.shape[0] == self._n_envs:
                picked["noise"] = noise[rows]
        seed = picked.get("seed")
        if isinstance(seed, np.ndarray) and seed.ndim == 0 and seed.dtype.kind in "iu":
            seed = seed.item()  # np.asarray(s): Gr00tPolicy takes the int it holds, so env k's seed is s + k here too
        if isinstance(seed, (list, tuple)) and len(seed) == self._n_envs:  # one seed per env: those envs' seeds
            picked["seed"] = [seed[k] for k in rows]
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            # Row i of a request uses seed + i: env k's seed is seed + k however few envs this fetch is for. Envs
            # k, k+1, ... in a run shift the int; others get a list of their own seeds (Gr00tPolicy takes one).
            own = [int(seed) + k for k in rows]
            picked["seed"] = own[0] if own == list(range(own[0], own[0] + len(own))) else own
        return picked

    def _covers_every_env(self, env_ids: Any, indices: List[int]) -> bool:
        """Whether reset()'s env_ids name every env; before the first get_action only a mask of all True does."""
        if self._n_envs is not None:
            return set(indices) == set(range(self._n_envs))
        return bool(indices) and len(indices) == len(env_ids) and _is_mask(env_ids)

    def _env_indices(self, env_ids: Any) -> List[int]:
        """reset()'s env_ids as checked indices: ints in range, or the True entries of a mask of n_envs booleans."""
        if isinstance(env_ids, (str, bytes)) or not isinstance(env_ids, (SequenceABC, np.ndarray)) or np.ndim(env_ids) == 0:
            got = f"a 0-d {type(env_ids).__name__}" if isinstance(env_ids, np.ndarray) else type(env_ids).__name__
            raise TypeError(f"env_ids must be a sequence of env indices or a boolean mask (e.g. [2]); got {got}")
        items = list(env_ids.tolist() if isinstance(env_ids, np.ndarray) else env_ids)
        if _is_mask(items):
            if self._n_envs is not None and len(items) != self._n_envs:
                raise ValueError(f"env_ids is a boolean mask of {len(items)} entries; this chunker serves {self._n_envs} "
                                 "envs (pass one entry per env, or the env indices)")
            return [i for i, done in enumerate(items) if done]
        for item in items:
            if not _is_int(item):
                raise TypeError(f"env_ids must hold env indices (ints) or be a boolean mask of one entry per env; got "
                                f"{item!r} ({type(item).__name__}) in {env_ids!r}")
            if self._n_envs is not None and not 0 <= int(item) < self._n_envs:
                raise IndexError(f"env id {item} is out of range for {self._n_envs} envs")
        return [int(item) for item in items]
