"""Gr00tPolicy's get_action options, checked and turned into model arguments (initial noise, RTC, denoising steps).

Options of `get_action` (all optional; keys starting with "_", e.g. "_session_id" added by servers, are ignored; any
other key is refused when strict, a warning otherwise):
- "seed": int (a 0-d integer array is the int it holds). Row i of the batch starts from `torch.randn((H, D_max),
  generator=Generator("cpu").manual_seed(s + i))` in float32, then cast to the model dtype/device. A batch with
  seed s therefore equals B single calls with seeds s, s+1, ..., s+B-1 (and a single call with seed s equals
  row 0), to the dtype's rounding, in units of each action key's statistics range, measured on CPU for batches of
  up to 16 rows: about 1e-7 in float32, up to about 6e-4 in float16 (a batch's kernels differ from one row's), up
  to about 5e-3 in bfloat16 (attention over prompts padded to a batch mate's length rounds otherwise): a few of
  the dtype's rounding steps. s must lie in
  [-2**63, 2**64 - B]. torch's CPU generator keeps only the low 32 bits of its seed (1 and 2**32 + 1 gave the same
  noise), so a row seed outside [0, 2**32) is mixed down to 32 bits first (_generator_seed); one inside is used as
  given. Or a list of B ints, row i's own seed (what ActionChunker sends
  for a fetch of some envs of a batch, so each env keeps its own seed whichever envs it is fetched with).
- "noise": float array (B, H, D_max) or (H, D_max), the initial flow noise used as given (not with "seed"); H and D_max
  are the model's config.json action_horizon and max_action_dim (40 and 132 released), not the returned chunk's horizon.
  Standard normal values: finite, and within +-NOISE_LIMIT (100).
- neither: noise from torch's global RNG (like the reference).
- "rtc": real-time chunking (model.md §2.7), inpainting from the previous chunk; composes with the above:
  {"previous_action": {action_key: float array (B, T, D_key)} in the units and layout get_action returns,
  "overlap_steps": int, "frozen_steps": int, "ramp_rate": float > 0 (default 6.0)}, every action key, one B
  (the observation's) and T (1 <= T <= the action horizon), 0 <= frozen_steps <= overlap_steps <= T.
  Rows previous_action[:, T-overlap:T] become rows [0, overlap) of the new chunk's initial state, encoded with
  the inverse of decode_action (relative keys against the current observation's state, normalized with those
  rows' statistics); rows [0, frozen) are returned unchanged (up to clipping to the statistics range), rows
  [frozen, overlap) are denoised with a ramped velocity, the rest as usual. overlap_steps=0 changes nothing.
  An overlap row beyond float32's range, or that normalizes to a non-finite value, is refused naming its key and
  step; so is one of an absolute key that normalizes (before clipping) beyond +-STATE_OUTLIER_LIMIT, and one of a
  relative key beyond STATE_OUTLIER_LIMIT times its action statistics' magnitude (checked before it is re-expressed
  against the state, whose drift would otherwise read as a unit mistake).
- "denoising_steps": int in [1, max_denoising_steps], the flow-matching Euler steps of this call (default the
  checkpoint's num_inference_timesteps, 4 for released ones; the cap, 4x that unless given, bounds one call's work);
  what `gr00t-eval open-loop --denoising-steps` sends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import non_finite_rows
from gr00t_server.model.action_head import DEFAULT_RTC_RAMP_RATE
from gr00t_server.processing import normalization as norm
from gr00t_server.processing.actions import STATE_OUTLIER_LIMIT, beyond_limit_text

from .option_names import OptionNames
from .previous_action import PreviousActionError

if TYPE_CHECKING:
    from gr00t_server.model.config import Gr00tN1d7Config
    from gr00t_server.processing.processor import Gr00tN1d7Processor


_KNOWN_OPTIONS = {"seed", "noise", "rtc", "denoising_steps"}
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes
_RTC_KEYS = {"previous_action", "overlap_steps", "frozen_steps", "ramp_rate"}
# Initial flow noise is standard normal: a draw beyond +-10 has odds of about 1e-23, so +-100 leaves room for scaled
# noise while refusing values in other units. Larger noise pinned every action at its statistics' edge (1e3 to 1e20),
# or made the model's output NaN, blamed on the weights (1e30).
NOISE_LIMIT = 100.0
DENOISING_CAP_FACTOR = 4  # default max_denoising_steps: this many times the checkpoint's num_inference_timesteps


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _row_seeds(seed: Any, batch_size: int) -> List[int]:
    """Each row's seed from options["seed"]: an int s (row i: s + i) or a list of one int per row."""
    if isinstance(seed, np.ndarray) and seed.ndim == 0 and seed.dtype != object:
        seed = seed[()]  # np.asarray(s), rng.integers(..., size=()): the scalar it holds, checked as one below
    if isinstance(seed, (list, tuple, np.ndarray)):
        expected = (f"options['seed'] as a list must hold one int from {_SEED_MIN} to {_SEED_MAX} per row "
                    f"({batch_size} here)")
        # the count first: a 229 MiB array for one row became 30 M numpy scalars (1.1 GiB) before it was refused
        count = seed.size if isinstance(seed, np.ndarray) else len(seed)
        if count != batch_size:
            raise ValueError(f"{expected}; got {count} values")
        values = list(seed.reshape(-1)) if isinstance(seed, np.ndarray) else list(seed)
        if not all(_is_int(v) and _SEED_MIN <= int(v) <= _SEED_MAX for v in values):
            raise ValueError(f"{expected}; got {seed!r}")
        return [int(v) for v in values]
    if not _is_int(seed):
        raise ValueError(f"options['seed'] must be an int, or a list of one int per row; got {seed!r}")
    if not _SEED_MIN <= int(seed) <= _SEED_MAX - (batch_size - 1):
        raise ValueError(
            f"options['seed'] must be an int from {_SEED_MIN} to {_SEED_MAX - (batch_size - 1)} for a batch of "
            f"{batch_size} row(s): row i uses seed + i; got {seed}"
        )
    return [int(seed) + row for row in range(batch_size)]


def _generator_seed(seed: int) -> int:
    """The seed torch.Generator("cpu") is given for a row seed: as is in [0, 2**32); else its 64 bits (two's
    complement for a negative one) mixed down to 32 (splitmix64's finaliser), because the CPU generator keeps only
    the low 32 bits and seeds that differ only above them gave the same noise."""
    value = int(seed) % 2**64
    if value < 2**32:
        return value
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) % 2**64
    return (value ^ (value >> 31)) & 0xFFFFFFFF


@dataclass(frozen=True)
class RtcRequest:
    """A validated options["rtc"]: the previous chunk {key: (B, T, D_key)} and the inpainting settings."""

    previous_action: Dict[str, np.ndarray]
    overlap_steps: int
    frozen_steps: int
    ramp_rate: float

    @property
    def horizon(self) -> int:
        """T, the length of the previous chunk."""
        return next(iter(self.previous_action.values())).shape[1]

    def overlap_rows(self) -> Dict[str, np.ndarray]:
        """previous_action[:, T-overlap:T] per key: the rows that start the new chunk."""
        start = self.horizon - self.overlap_steps
        return {key: value[:, start:] for key, value in self.previous_action.items()}


def checked_options(options: Any) -> Mapping[str, Any]:
    """get_action's options as a map ({} for None); ValueError naming what was sent otherwise, as PolicyClient
    refuses it: a list of pairs, even an empty one, is not read as options."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"options must be a dict or None; got {type(options).__name__} {options!r:.60}")
    return options


def _rtc_int(name: str, value: Any, high: int, bounds: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) <= high:
        raise ValueError(f"options['rtc']['{name}'] must be an int in {bounds} = [0, {high}], got {value!r}")
    return int(value)



def denoising_cap(model_config: Gr00tN1d7Config, cap: Optional[int]) -> int:
    """max_denoising_steps checked against a checkpoint's config.json (read before its weights load): an int from its
    num_inference_timesteps to its num_timestep_buckets; None: DENOISING_CAP_FACTOR x num_inference_timesteps (at most
    the buckets)."""
    default, buckets = model_config.num_inference_timesteps, model_config.num_timestep_buckets
    if cap is None:
        return min(DENOISING_CAP_FACTOR * default, buckets)
    if isinstance(cap, bool) or not isinstance(cap, Integral) or not default <= cap <= buckets:
        raise ValueError(f"max_denoising_steps (--max-denoising-steps) must be an int in [{default}, {buckets}] "
                         f"(this checkpoint's num_inference_timesteps to its num_timestep_buckets), got {cap!r}")
    return int(cap)


class Gr00tActionOptions:
    """Gr00tPolicy's get_action options: mixed into Gr00tPolicy, whose checkpoint and processor it reads."""

    strict: bool
    model_config: Gr00tN1d7Config
    processor: Gr00tN1d7Processor
    embodiment_tag_value: str
    _modality_configs: Dict[str, ModalityConfig]
    _option_names: OptionNames
    _seedless_generator: Optional[torch.Generator]
    max_denoising_steps: int

    def _denoising_steps(self, value: Any) -> Optional[int]:
        """options["denoising_steps"] checked: None (the checkpoint's num_inference_timesteps) or an int in range."""
        if value is None:
            return None
        cap = self.max_denoising_steps
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= cap:
            raise ValueError(f"options['denoising_steps'] must be an int in [1, {cap}] (this checkpoint runs "
                             f"{self.model_config.num_inference_timesteps} by default; the most one call may ask is "
                             f"--max-denoising-steps, max_denoising_steps in Python), got {value!r}")
        return int(value)

    def _initial_noise(
        self, options: Optional[Mapping[str, Any]], batch_size: int
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Generator]]:
        """Initial flow noise from options (see module docstring); (None, None) means the global RNG, (None, generator)
        a forked child's own."""
        options = {k: v for k, v in (options or {}).items() if not str(k).startswith("_")}
        self._option_names.check(options, _KNOWN_OPTIONS, self.strict, "options", "Gr00tPolicy")
        seed, noise = options.get("seed"), options.get("noise")
        if seed is not None and noise is not None:
            raise ValueError("options may contain 'seed' or 'noise', not both")
        shape = (self.model_config.action_horizon, self.model_config.max_action_dim)
        if noise is not None:
            array = sent = np.asarray(noise)
            if array.ndim == 2:
                array = array[None]
            if array.dtype.kind != "f" or array.shape != (batch_size,) + shape:
                raise ValueError(
                    f"options['noise'] must be a float array of shape {(batch_size,) + shape} (B, action_horizon, "
                    f"max_action_dim of the model's config.json, not the returned chunks' horizon "
                    f"{self._modality_configs['action'].horizon}; {shape} is taken for B=1); got dtype {sent.dtype} "
                    f"shape {sent.shape}"
                )
            with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: refused just below
                array = np.ascontiguousarray(array, dtype=np.float32)
            rows = non_finite_rows(array)  # NaN noise is NaN actions; 1e39 is inf in float32
            if rows:
                raise ValueError(f"options['noise'] has non-finite values (NaN, inf, or beyond float32's range) in rows "
                                 f"{rows}; expected finite numbers (standard normal noise)")
            beyond = np.abs(array) > NOISE_LIMIT
            if beyond.any():
                row = int(np.flatnonzero(beyond.reshape(beyond.shape[0], -1).any(axis=1))[0])
                value = float(array[row].flat[int(np.argmax(np.abs(array[row])))])
                raise ValueError(f"options['noise'] row {row} holds {beyond_limit_text(value, NOISE_LIMIT)}, beyond "
                                 f"+-{NOISE_LIMIT:g}; expected standard normal noise (as torch.randn draws it)")
            return torch.from_numpy(array), None
        if seed is not None:
            rows = [
                torch.randn(shape, generator=torch.Generator("cpu").manual_seed(_generator_seed(row_seed)), dtype=torch.float32)
                for row_seed in _row_seeds(seed, batch_size)
            ]
            return torch.stack(rows), None
        return None, self._seedless_generator  # None in the process that made the policy: torch's global RNG

    def _parse_rtc(self, value: Any, batch_size: int) -> Optional[RtcRequest]:
        """Validate options["rtc"] (see module docstring) against the action config and the batch size."""
        if value is None:
            return None
        usage = "{'previous_action': {key: (B, T, D)}, 'overlap_steps': int, 'frozen_steps': int[, 'ramp_rate': float]}"
        if not isinstance(value, Mapping):
            raise ValueError(f"options['rtc'] must be a map {usage}; got {type(value).__name__}")
        unknown, missing = sorted(set(value) - _RTC_KEYS, key=str), sorted(_RTC_KEYS - {"ramp_rate"} - set(value))
        if unknown or missing:
            raise ValueError(f"options['rtc'] must be a map {usage}; unknown keys {unknown}, missing keys {missing}")
        previous = self._parse_previous_action(value["previous_action"], batch_size)
        horizon = next(iter(previous.values())).shape[1]
        overlap = _rtc_int("overlap_steps", value["overlap_steps"], horizon, "[0, T of previous_action]")
        frozen = _rtc_int("frozen_steps", value["frozen_steps"], overlap, "[0, overlap_steps]")
        ramp_rate = value.get("ramp_rate", DEFAULT_RTC_RAMP_RATE)
        if isinstance(ramp_rate, bool) or not isinstance(ramp_rate, Real) or not (0 < ramp_rate < math.inf):
            raise ValueError(f"options['rtc']['ramp_rate'] must be a finite number > 0, got {ramp_rate!r}")
        request = RtcRequest(previous, overlap, frozen, float(ramp_rate))
        self._check_previous_poses(request)
        return request

    def _parse_previous_action(self, previous: Any, batch_size: int) -> Dict[str, np.ndarray]:
        """{key: float array (B, T, D_key)} for exactly the action keys, one T for all, finite values."""
        action_config = self._modality_configs["action"]
        keys = list(action_config.modality_keys)
        if not isinstance(previous, Mapping):
            raise PreviousActionError(f"; got {type(previous).__name__}", keys=keys)
        missing, extra = [k for k in keys if k not in previous], sorted(set(previous) - set(keys), key=str)
        if missing or extra:
            raise PreviousActionError(keys=keys, missing=missing, extra=extra)
        norm_params = self.processor.norm_params(self.embodiment_tag_value).action
        dims = {key: params.dim for key, params in norm_params.items()}
        out: Dict[str, np.ndarray] = {}
        horizon: Optional[int] = None
        for key in keys:
            t_bound = f"T = {horizon}" if horizon is not None else f"1 <= T <= {action_config.horizon}"
            expected = f"a float array of shape (B={batch_size}, T, {dims[key]}) with {t_bound}"
            try:
                array = np.asarray(previous[key])
            except (ValueError, TypeError):  # a ragged nested list: numpy's words name neither the key nor the shape
                raise PreviousActionError(f" must be {expected}; got a ragged or non-numeric value", key=key) from None
            if (
                array.dtype.kind != "f"
                or array.ndim != 3
                or array.shape[0] != batch_size
                or array.shape[2] != dims[key]
                or not 1 <= array.shape[1] <= action_config.horizon
                or (horizon is not None and array.shape[1] != horizon)
            ):
                raise PreviousActionError(f" must be {expected}; got dtype {array.dtype} shape {array.shape}", key=key)
            if not np.isfinite(array).all():
                raise PreviousActionError(" contains NaN or infinite values", key=key)
            horizon = array.shape[1]
            out[key] = array.astype(np.float64)
        return out

    def _check_previous_poses(self, rtc: RtcRequest) -> None:
        """The overlap rows of a relative EEF key are re-expressed as poses relative to the current state: a rotation
        no rigid transform has (zero or parallel rot6d rows, a singular 4x4 pose) became NaN deep inside the model, or
        an arbitrary rotation that was acted on; a 4x4 pose whose last row is not [0, 0, 0, 1] (column-major) lost its
        translation. Refused here with the tests the reference states get."""
        action_config = self._modality_configs["action"]
        relative = self.processor.norm_params(self.embodiment_tag_value).relative_action
        overlap, first_step = rtc.overlap_rows(), rtc.horizon - rtc.overlap_steps
        for key, spec in zip(action_config.modality_keys, action_config.action_configs or []):
            if key not in relative or spec.type.name != "EEF":
                continue
            rows = overlap[key]
            bad = norm.degenerate_pose_rows(rows.reshape(-1, rows.shape[-1]), spec.format.name)
            if bad:
                at = [(row, first_step + step) for row, step in (divmod(flat, rows.shape[1]) for flat in bad[:8])]
                raise PreviousActionError(
                    f" ({spec.format.name} pose) has a degenerate rotation at (row, step) {at}: no rotation matrix has "
                    f"it (zero or parallel rot6d rows, or a singular 4x4 pose), got "
                    f"{rows[at[0][0], at[0][1] - first_step].tolist()}; send the poses get_action returned", key=key)
            if spec.format.name != "DEFAULT" or rows.shape[-1] != 16:
                continue
            bad = norm.non_homogeneous_rows(rows.reshape(-1, 16))
            if bad:
                at = [(row, first_step + step) for row, step in (divmod(flat, rows.shape[1]) for flat in bad[:8])]
                raise PreviousActionError(
                    f" (DEFAULT pose) has last row {norm.last_row_text(rows[at[0][0], at[0][1] - first_step])} at "
                    f"(row, step) {at}; {norm.NON_HOMOGENEOUS_ADVICE}, as get_action returned it", key=key)

    @staticmethod
    def _check_previous_range(rtc: RtcRequest) -> None:
        """ValueError naming the key and step of an overlap row beyond float32's range, as a state is: on a min/max
        key it was clipped on encoding and came back as the statistics' edge."""
        first_step, limit = rtc.horizon - rtc.overlap_steps, float(np.finfo(np.float32).max)
        for key, rows in rtc.overlap_rows().items():
            beyond = np.abs(rows) > limit
            if beyond.any():
                row, step, column = (int(i) for i in np.argwhere(beyond)[0])
                raise PreviousActionError(
                    f" step {first_step + step} is {float(rows[row, step, column]):.3g}, beyond float32's range "
                    f"(+-{limit:.3g}); send actions in the units get_action returned", key=key)

    def _check_relative_magnitude(self, rtc: RtcRequest) -> None:
        """ValueError naming the key, step and column of a relative key's overlap row beyond STATE_OUTLIER_LIMIT times
        its action statistics' magnitude (the larger of |low|, |high| and 1, per column), as an anchoring state is
        judged: the units check of a relative key, made on the value as sent because once re-expressed against the
        current state its normalized value also holds the state's drift over a range that may be 1e-5 wide."""
        params = self.processor.norm_params(self.embodiment_tag_value)
        first_step = rtc.horizon - rtc.overlap_steps
        for key, rows in rtc.overlap_rows().items():
            if key not in params.relative_action:
                continue
            stats = params.action[key]
            scale = np.maximum(np.maximum(np.abs(stats.low), np.abs(stats.high)), 1.0)
            beyond = np.abs(rows) > STATE_OUTLIER_LIMIT * np.broadcast_to(scale, rows.shape)
            if beyond.any():
                row, step, column = (int(i) for i in np.argwhere(beyond)[0])
                magnitude = float(np.broadcast_to(scale, rows.shape)[row, step, column])
                value = beyond_limit_text(float(rows[row, step, column]), STATE_OUTLIER_LIMIT * magnitude)
                raise PreviousActionError(
                    f" step {first_step + step} holds {value} in column {column}, beyond "
                    f"{STATE_OUTLIER_LIMIT:g} times its action statistics' magnitude {magnitude:.3g}; send actions in "
                    "the units get_action returned", key=key)

    def _check_encoded_previous(self, rtc: RtcRequest, encoded: np.ndarray, clipped: np.ndarray) -> None:
        """ValueError naming the key and step of an overlap row that normalizes (`encoded` unclipped) to a non-finite
        value or, on an absolute key, beyond +-STATE_OUTLIER_LIMIT: a huge finite previous_action made the model's
        output NaN (blamed on the weights), overflowed float32 (refused without naming the option) or, on an absolute
        min/max key, was clipped to the statistics' edge. A relative key is held to being finite only (a min/max one
        after clipping), its units having been checked before (_check_relative_magnitude): its normalized value holds
        the state's drift over its step's range or std, which a little drift on a joint that barely moved in training
        (1e-6) puts far beyond +-STATE_OUTLIER_LIMIT in the very units get_action returned. Every key is also held to
        being finite in the model's float (float16 overflows at 65504), as a state is."""
        action_config = self._modality_configs["action"]
        params = self.processor.norm_params(self.embodiment_tag_value)
        dims = {key: p.dim for key, p in params.action.items()}
        parts = norm.split_action(encoded, action_config.modality_keys, dims, rtc.overlap_steps)
        clipped_parts = norm.split_action(clipped, action_config.modality_keys, dims, rtc.overlap_steps)
        sent, first_step = rtc.overlap_rows(), rtc.horizon - rtc.overlap_steps
        for key, part in parts.items():
            if key in params.relative_action:
                bad = ~np.isfinite(clipped_parts[key])
            else:
                bad = ~np.isfinite(part) | (np.abs(part) > STATE_OUTLIER_LIMIT)
            if bad.any():
                row, step, column = (int(i) for i in np.argwhere(bad)[0])
                raise PreviousActionError(
                    f" step {first_step + step} normalizes to "
                    f"{beyond_limit_text(float(part[row, step, column]), STATE_OUTLIER_LIMIT)} against the "
                    f"checkpoint's statistics (sent {float(sent[key][row, step, column]):.3g}); send actions in the "
                    "units get_action returned", key=key)
            # A finite row beyond a float16 model's range (1e5: drift on a joint of std 1e-6) turned inf when cast in
            # the action head, and the model's NaN output was blamed on another key and the weights
            model_float = self.processor.model_float
            with np.errstate(over="ignore"):
                overflow = ~np.isfinite(clipped_parts[key].astype(model_float))
            if overflow.any():
                row, step, column = (int(i) for i in np.argwhere(overflow)[0])
                raise PreviousActionError(
                    f" step {first_step + step} normalizes to {float(clipped_parts[key][row, step, column]):.3g} "
                    f"against the checkpoint's statistics, beyond {model_float}, the model's float (sent "
                    f"{float(sent[key][row, step, column]):.3g}); send actions in the units get_action returned"
                    + (", or serve in bf16 or fp32" if model_float == "float16" else ""), key=key)

    def _rtc_model_arguments(self, rtc: RtcRequest, raw_states: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        """Model-level RTC arguments: the overlap rows encoded as rows [0, overlap) of a padded normalized chunk.

        They are normalized with the statistics of the rows they land on (and relative to the current state),
        so the frozen rows decode back to the given values; hence `action_horizon` = overlap at model level.
        """
        if rtc.overlap_steps == 0:  # nothing to inpaint: exactly the call without RTC
            return {}
        self._check_previous_range(rtc)
        self._check_relative_magnitude(rtc)
        with np.errstate(over="ignore"):  # a value normalizing beyond float32's range is refused below, naming its key
            unclipped = self.processor.encode_action(rtc.overlap_rows(), self.embodiment_tag_value, raw_states,
                                                     clip=False)
            encoded = self.processor.encode_action(rtc.overlap_rows(), self.embodiment_tag_value, raw_states)
        self._check_encoded_previous(rtc, unclipped, encoded)
        model_shape = (encoded.shape[0], self.model_config.action_horizon, self.model_config.max_action_dim)
        previous = np.zeros(model_shape, np.float32)
        previous[:, : rtc.overlap_steps] = encoded
        return {
            "previous": torch.from_numpy(previous),
            "action_horizon": rtc.overlap_steps,
            "rtc_overlap_steps": rtc.overlap_steps,
            "rtc_frozen_steps": rtc.frozen_steps,
            "rtc_ramp_rate": rtc.ramp_rate,
        }
