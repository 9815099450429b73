"""Gr00tPolicy: a GR00T N1.7 checkpoint behind the BasePolicy API (model.md §1.2, §3, §4.3).

Options of `get_action` (all optional; keys starting with "_", e.g. "_session_id" added by servers, are ignored; any
other key is refused when strict, a warning otherwise):
- "seed": int. Row i of the batch starts from `torch.randn((H, D_max), generator=Generator("cpu").
  manual_seed(s + i))` in float32, then cast to the model dtype/device. A batch with seed s therefore equals
  B single calls with seeds s, s+1, ..., s+B-1 (and a single call with seed s equals row 0), to the dtype's
  rounding: about 1e-7 in float32, 4e-4 in bfloat16/float16 (a batch's kernels differ from one row's). s must lie in
  [-2**63, 2**64 - B]. torch's CPU generator keeps only the low 32 bits of its seed (1 and 2**32 + 1 gave the same
  noise), so a row seed outside [0, 2**32) is mixed down to 32 bits first (_generator_seed); one inside is used as
  given. Or a list of B ints, row i's own seed (what ActionChunker sends
  for a fetch of some envs of a batch, so each env keeps its own seed whichever envs it is fetched with).
- "noise": float array (B, H, D_max) or (H, D_max), the initial flow noise used as given (not with "seed").
- neither: noise from torch's global RNG (like the reference).
- "rtc": real-time chunking (model.md §2.7), inpainting from the previous chunk; composes with the above:
  {"previous_action": {action_key: float array (B, T, D_key)} in the units and layout get_action returns,
  "overlap_steps": int, "frozen_steps": int, "ramp_rate": float > 0 (default 6.0)}, every action key, one B
  (the observation's) and T (1 <= T <= the action horizon), 0 <= frozen_steps <= overlap_steps <= T.
  Rows previous_action[:, T-overlap:T] become rows [0, overlap) of the new chunk's initial state, encoded with
  the inverse of decode_action (relative keys against the current observation's state, normalized with those
  rows' statistics); rows [0, frozen) are returned unchanged (up to clipping to the statistics range), rows
  [frozen, overlap) are denoised with a ramped velocity, the rest as usual. overlap_steps=0 changes nothing.
- "denoising_steps": int in [1, num_timestep_buckets], the flow-matching Euler steps of this call (default the
  checkpoint's num_inference_timesteps, 4 for released ones); what `gr00t-eval open-loop --denoising-steps` sends.
Stage timing: after each get_action, `policy.last_timing` (per calling thread) holds {"preprocess_ms",
"model_ms", "postprocess_ms"} of that call; servers add it to `server_timing`.
Rows whose prompts have different token counts are left-padded to the longest; each still gets its single-call
result (Gr00tN1d7ActionHead.process_backbone_features). The reference's VL self-attention has no padding mask, so
there a padded row's action depended on the other rows of its batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from gr00t_client.embodiment import FINETUNE_ONLY_TAGS, POSTTRAIN_TAGS, EmbodimentTag
from gr00t_client.flat import language_text
from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import BasePolicy, ObservationError, non_finite_rows
from gr00t_server.model.action_head import DEFAULT_RTC_RAMP_RATE
from gr00t_server.model.checkpoint import load_model, resolve_checkpoint_dir
from gr00t_server.processing.config import (EMBODIMENT_ID_NAME, PROCESSOR_CONFIG_NAME, STATISTICS_NAME, find_processor_dir,
                                           load_processor_config)
from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.processing.text import IMAGE_PAD_TOKEN

from .option_names import OptionNames

logger = logging.getLogger(__name__)

_POLICY_MODALITIES = ("video", "state", "action", "language")
_KNOWN_OPTIONS = {"seed", "noise", "rtc", "denoising_steps"}
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes
_RTC_KEYS = {"previous_action", "overlap_steps", "frozen_steps", "ramp_rate"}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _row_seeds(seed: Any, batch_size: int) -> List[int]:
    """Each row's seed from options["seed"]: an int s (row i: s + i) or a list of one int per row."""
    if isinstance(seed, (list, tuple, np.ndarray)):
        values = list(np.asarray(seed).reshape(-1)) if isinstance(seed, np.ndarray) else list(seed)
        if len(values) != batch_size or not all(_is_int(v) and _SEED_MIN <= int(v) <= _SEED_MAX for v in values):
            raise ValueError(f"options['seed'] as a list must hold one int from {_SEED_MIN} to {_SEED_MAX} per row "
                             f"({batch_size} here); got {seed!r}")
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


def _rtc_int(name: str, value: Any, high: int, bounds: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) <= high:
        raise ValueError(f"options['rtc']['{name}'] must be an int in {bounds} = [0, {high}], got {value!r}")
    return int(value)


def unsupported_tag_message(tag: Union[EmbodimentTag, str], supported: List[str]) -> str:
    """The reference's error text for a tag the checkpoint has no modality configs for (model.md §4.3)."""
    if isinstance(tag, EmbodimentTag):
        name, value = tag.name, tag.value
    else:
        name = value = str(tag)
    lines = [f"Embodiment tag '{name}' (value='{value}') is not supported by this checkpoint.\n\nSupported tags in this checkpoint:"]
    for supported_value in sorted(supported):
        enum_name = EmbodimentTag.reverse_lookup(supported_value)
        if enum_name != supported_value:
            lines.append(f"  {enum_name:30s} (--embodiment-tag {enum_name})")
        else:
            lines.append(f"  {supported_value:30s} (internal, no public enum)")
    message = "\n".join(lines)
    if isinstance(tag, EmbodimentTag) and tag in POSTTRAIN_TAGS:
        message += (
            f"\n\nHint: '{name}' is a posttrain tag that requires a finetuned checkpoint, not the base model. "
            "See the example READMEs for how to finetune and download checkpoints."
        )
    elif isinstance(tag, EmbodimentTag) and tag in FINETUNE_ONLY_TAGS:
        message += (
            f"\n\nHint: '{name}' is for finetuning custom robots. Use it with launch_finetune.py, "
            "not with the base model directly."
        )
    return message


def _resolve_tag(tag: Union[EmbodimentTag, str], supported: List[str]) -> Tuple[Union[EmbodimentTag, str], str]:
    """(tag object for messages, tag value); checkpoint-internal tags without an enum member are accepted."""
    if isinstance(tag, str) and tag.strip() in supported:
        try:
            return EmbodimentTag.resolve(tag), tag.strip()
        except ValueError:
            return tag.strip(), tag.strip()
    try:
        resolved = EmbodimentTag.resolve(tag)
    except ValueError as exc:
        # Built-in tags are matched by any spelling; a checkpoint's own tag too, when the spelling names only one.
        folded = [value for value in supported if isinstance(tag, str) and value.casefold() == tag.strip().casefold()]
        if len(folded) == 1:
            return folded[0], folded[0]
        raise ValueError(f"{str(exc).splitlines()[0]}; it is neither a built-in tag nor one of this checkpoint's tags "
                         f"{sorted(supported)}" + (" (give one exactly: they differ only in case)" if folded else "")) from None
    return resolved, resolved.value


def _instruction(language: Any) -> str:
    """One row's instruction: a string, or the first of a list of them (UTF-8 bytes are decoded). ObservationError for
    anything else, strict or not: a number or None was read as its repr, bytes failed deep in the tokenizer."""
    text = language[0] if isinstance(language, (list, tuple)) and language else language
    return language_text(text, "a language instruction", "must be a str (each row a list of one str)")


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    """A CPU or CUDA device that exists here; ValueError naming the device and what to use instead."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {str(device)!r} is not a torch device name; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: GR00T policies run on 'cpu', 'cuda' or 'cuda:N'")
    if resolved.type == "cpu":  # torch takes 'cpu:N'; safetensors then fails to read the weights onto it
        if resolved.index not in (None, 0):
            raise ValueError(f"device {str(device)!r} is not supported: the CPU is one device, 'cpu'")
        return torch.device("cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here; use device='cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {str(device)!r} was asked for but this machine has {count} CUDA device(s) "
                             f"(cuda:0{'' if count == 1 else f' to cuda:{count - 1}'})")
    return resolved


def _acting_clip_override(clip_outliers: Optional[bool], checkpoint_clips_states: bool) -> Optional[bool]:
    """The clip_outliers override when it makes the checkpoint act otherwise than its own setting (True always: it
    clips actions too; False when the checkpoint clips states), else None."""
    if clip_outliers is None or (not clip_outliers and not checkpoint_clips_states):
        return None
    return bool(clip_outliers)


class Gr00tPolicy(BasePolicy):
    """A GR00T N1.7 checkpoint (local folder or hub id) serving one embodiment.

    `Gr00tPolicy(model_path, embodiment_tag, device="cuda", strict=True, dtype=None)`; keywords in any order.
    `clip_outliers`: None keeps the checkpoint's processor setting, for states (actions decode as the reference
    does: a mean/std absolute key is not clipped, whatever the checkpoint says); True clips normalized states to
    [-1, 1] and every decoded absolute action key to its statistics range; False leaves states unclipped.
    `preprocess_device`: where frames are patchified (default: the model's device if a GPU).
    """

    supports_batching = True
    per_row_info_keys: frozenset[str] = frozenset()  # its info is {}: a batched call has nothing to split per row

    def __init__(
        self,
        model_path: Union[str, Path, EmbodimentTag, None] = None,
        embodiment_tag: Union[str, EmbodimentTag, Path, None] = None,
        device: Union[str, torch.device] = "cuda",
        strict: bool = True,
        dtype: Union[str, torch.dtype, None] = None,
        *,
        subfolder: Optional[str] = None,
        local_files_only: bool = False,
        clip_outliers: Optional[bool] = None,
        preprocess_device: Union[str, torch.device, None] = None,
    ) -> None:
        super().__init__(strict=strict)
        self._timing = threading.local()
        self._option_names = OptionNames(logger)  # unknown option names: refused when strict, else warned once
        if isinstance(model_path, EmbodimentTag):  # positional (embodiment_tag, model_path) like the reference
            model_path, embodiment_tag = embodiment_tag, model_path
        if model_path is None or embodiment_tag is None:
            raise ValueError("Gr00tPolicy needs both model_path and embodiment_tag")
        self.checkpoint_dir = resolve_checkpoint_dir(model_path, subfolder=subfolder, local_files_only=local_files_only)
        processor_config = load_processor_config(self.checkpoint_dir)
        supported = processor_config.embodiment_tags
        tag_obj, tag_value = _resolve_tag(embodiment_tag, supported)
        if tag_value not in supported:
            raise ValueError(unsupported_tag_message(tag_obj, supported))
        self.embodiment_tag = tag_obj
        self.embodiment_tag_value = tag_value
        self.device = _resolve_device(device)

        self.preprocess_device = _resolve_device(preprocess_device) if preprocess_device is not None else (
            self.device if self.device.type == "cuda" else torch.device("cpu")
        )
        self.processor = Gr00tN1d7Processor.from_pretrained(self.checkpoint_dir, local_files_only=local_files_only)
        # count_language_tokens' own tokenizer, made now: made on the first long prompt, it held the socket thread
        # (pings, info) for as long as a copy of the real tokenizer takes to build.
        self._counting_tokenizer = _independent_tokenizer(self.processor.tokenizer)
        self._counting_lock = threading.Lock()
        # One forward pass at a time: concurrent callers (a user's thread pool, one policy behind two servers) queue
        # here. On the CPU each calling thread brought its own OpenMP team onto the same cores (four callers on two
        # cores once spun for 25 minutes without finishing); on a GPU the calls queued on one stream anyway.
        self._model_lock = threading.Lock()
        checkpoint_clips_states = self.processor.config.clip_outliers
        if clip_outliers is not None:
            self.processor.config = dataclasses.replace(self.processor.config, clip_outliers=bool(clip_outliers))
        self.clip_actions_to_statistics = bool(clip_outliers)
        self._clip_override = _acting_clip_override(clip_outliers, checkpoint_clips_states)
        all_configs = self.processor.modality_configs(tag_value)
        self.modality_configs: Dict[str, ModalityConfig] = {k: v for k, v in all_configs.items() if k != "rl_info"}
        missing = [m for m in _POLICY_MODALITIES if m not in self.modality_configs]
        if missing:
            raise ValueError(f"checkpoint modality configs for {tag_value!r} lack {missing}")
        language = self.modality_configs["language"]
        if len(language.delta_indices) != 1:
            raise ValueError(f"Only one language delta index is supported; {tag_value!r} has {language.delta_indices}")
        self.language_key = language.modality_keys[0]
        self.processor.norm_params(tag_value)  # fail at load time, not at the first request, on bad statistics
        self.embodiment_id = self.processor.embodiment_id(tag_value)

        self.model, self.model_config = load_model(self.checkpoint_dir, device=self.device, dtype=dtype)
        self.model.eval()
        if next(self.model.parameters()).dtype == torch.float16:
            self.processor.model_float = "float16"
        self._check_model_matches_processor()
        self._identity: Optional[Dict[str, Any]] = None
        self.identity()  # now, at load: get_server_info answers it on the socket thread, which must not wait

    def _check_model_matches_processor(self) -> None:
        pc, mc = self.processor.config, self.model_config
        if pc.strict_action_padding_mask != mc.strict_action_padding_mask:
            raise RuntimeError(
                "Model and processor disagree on strict_action_padding_mask: "
                f"model={mc.strict_action_padding_mask}, processor={pc.strict_action_padding_mask}"
            )
        if pc.max_state_dim != mc.max_state_dim:
            raise ValueError(f"processor max_state_dim {pc.max_state_dim} != model max_state_dim {mc.max_state_dim}")
        if pc.max_action_dim != mc.max_action_dim:
            raise ValueError(f"processor max_action_dim {pc.max_action_dim} != model max_action_dim {mc.max_action_dim}")
        if pc.strict_action_padding_mask:
            logger.warning("strict_action_padding_mask=true is not implemented; actions are sampled without the mask")
        if not 0 <= self.embodiment_id < mc.max_num_embodiments:
            raise ValueError(
                f"embodiment {self.embodiment_tag_value!r} has projector index {self.embodiment_id}, outside "
                f"[0, {mc.max_num_embodiments}) of the model's max_num_embodiments"
            )
        frames = len(self.modality_configs["state"].delta_indices)
        if frames != mc.state_history_length:  # the state encoder takes exactly state_history_length frames
            raise ValueError(
                f"processor_config.json: modality_configs[{self.embodiment_tag_value!r}]['state']['delta_indices'] has "
                f"{frames} frames; expected config.json's state_history_length {mc.state_history_length}"
            )
        horizon = self.modality_configs["action"].horizon
        if horizon > mc.action_horizon:
            raise ValueError(
                f"embodiment {self.embodiment_tag_value!r} has action horizon {horizon}, more than the model's "
                f"action_horizon {mc.action_horizon}"
            )
        self._check_image_patches_match_vision_encoder()
        token_id = self.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
        if token_id != mc.image_token_id:
            raise ValueError(
                f"tokenizer maps {IMAGE_PAD_TOKEN} to id {token_id}, but config.json image_token_id is {mc.image_token_id}"
            )

    def _check_image_patches_match_vision_encoder(self) -> None:
        """preprocessor_config.json cuts images into the patches the backbone's vision encoder was built for; a
        mismatch failed every request with a tensor-size error."""
        vision = getattr(getattr(getattr(getattr(self.model, "backbone", None), "model", None), "config", None), "vision_config", None)
        if vision is None:  # a backend without the torch backbone (its export was checked against the same files)
            return
        patches = self.processor.vision_config
        pairs = (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"), ("merge_size", "spatial_merge_size"))
        for ours, theirs in pairs:
            expected = getattr(vision, theirs, None)
            if expected is not None and getattr(patches, ours) != expected:
                raise ValueError(
                    f"preprocessor_config.json: {ours} is {getattr(patches, ours)}, but the backbone's vision encoder "
                    f"(config.json) has {theirs} {expected}; the image processor files do not belong to this model"
                )

    # --- BasePolicy -------------------------------------------------------------------------------

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        """{video, state, action, language} modality configs of the selected embodiment (no rl_info)."""
        return dict(self.modality_configs)

    def identity(self) -> Dict[str, Any]:
        """Which model this is, the same wherever its checkpoint is copied and whether loaded in fp32 or bf16 (a
        float16 model's weights round otherwise, and it reads as another model): the hash of its config and a
        fingerprint of its weights (as ONNX exports record them), and a hash of the processor files that turn its
        outputs into actions (processor_config.json, statistics.json, embodiment_id.json: a checkpoint with the same
        weights and other statistics or projector indices acts otherwise), and `clip_outliers` when a serve-time
        override makes it clip otherwise than its files say (left out by default, as older servers reported it);
        get_server_info reports it so that an evaluation can tell one checkpoint's results from another's. Computed
        once."""
        if self._identity is None:
            from gr00t_server.backends.common import model_identity

            digest = hashlib.sha256()
            folder = find_processor_dir(self.checkpoint_dir)
            for name in (PROCESSOR_CONFIG_NAME, STATISTICS_NAME, EMBODIMENT_ID_NAME):
                path = folder / name
                if path.is_file():
                    digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
            self._identity = {"kind": "gr00t", **model_identity(self.model), "processor_sha256": digest.hexdigest()[:16]}
            if self._clip_override is not None:
                self._identity["clip_outliers"] = self._clip_override
        return dict(self._identity)

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Stateless policy: nothing to reset."""
        return {}

    def count_language_tokens(self, text: str) -> int:
        """Tokens of `text` by this checkpoint's tokenizer, for the server's --max-language-tokens (a count of words
        let 2,048 digits or CJK characters through as one word: thousands of tokens). Safe from the socket thread
        while the worker tokenizes: it uses its own copy of the tokenizer."""
        with self._counting_lock:
            return self._counting_tokenizer(text)

    def check_observation(self, observation: Dict[str, Any]) -> None:
        """The modality configs' checks, then what processing would refuse inside the call (frame sizes, states that
        normalize beyond the model's float or have the wrong width), the reference states of relative action keys (a
        degenerate rotation failed only after the whole model ran, and with batching on made every client's batch
        re-run alone), then the instructions (no special tokens). All in the observation's own row numbering."""
        super().check_observation(observation)
        self.processor.check_video(self.embodiment_tag_value, observation["video"])
        self.processor.normalize_state(self.embodiment_tag_value, observation["state"])
        self._check_reference_states(observation)
        self._check_instructions(observation)

    def _check_reference_states(self, observation: Mapping[str, Any]) -> None:
        try:
            self.processor.check_reference_states(self.embodiment_tag_value, observation["state"])
        except ValueError as exc:
            raise ObservationError(str(exc)) from None

    def _check_instructions(self, observation: Mapping[str, Any]) -> None:
        """ObservationError naming the language key, row and tokens when an instruction holds the backbone's special
        tokens (vision or chat placeholders): the model would read them as such, or fail inside transformers."""
        for row, language in enumerate(observation["language"][self.language_key]):
            found = self.processor.reserved_tokens_in(_instruction(language))
            if found:
                raise ObservationError(
                    f"language['{self.language_key}'] row {row} holds the backbone's reserved token(s) {found}; an "
                    "instruction must be plain text, without the tokenizer's special tokens")

    @property
    def last_timing(self) -> Dict[str, float]:
        """{"preprocess_ms", "model_ms", "postprocess_ms"} of this thread's last get_action ({} before one)."""
        return dict(getattr(self._timing, "stages", {}))

    def _get_action(
        self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        started = time.perf_counter()
        if not self.strict:  # a strict policy's check_observation made these checks, and more
            self._check_lenient_layout(observation)
        batch_size = self._batch_size(observation)
        if batch_size < 1:
            raise ObservationError(
                "observation has 0 rows (a batch of size 0); every video and state array needs at least one row on "
                "its first axis"
            )
        if not self.strict:  # a strict policy's check_observation made these checks
            self._check_batch_sizes(observation, batch_size)
            self._check_reference_states(observation)
            self._check_instructions(observation)
        rtc = self._parse_rtc((options or {}).get("rtc"), batch_size)
        video = {k: np.asarray(observation["video"][k]) for k in self.modality_configs["video"].modality_keys}
        raw_states = {k: np.asarray(observation["state"][k]) for k in self.modality_configs["state"].modality_keys}
        languages = [_instruction(text) for text in observation["language"][self.language_key]]
        inputs = self.processor.process_batch(
            self.embodiment_tag_value, video, raw_states, languages, device=self.preprocess_device
        )
        noise, generator = self._initial_noise(options, batch_size)
        rtc_arguments = self._rtc_model_arguments(rtc, raw_states) if rtc is not None else {}
        num_steps = self._denoising_steps((options or {}).get("denoising_steps"))
        preprocessed = time.perf_counter()
        with self._model_lock:  # a wait here (another thread's call) is in no stage
            model_started = time.perf_counter()
            with torch.inference_mode():
                output = self.model.get_action(inputs, noise=noise, generator=generator, num_steps=num_steps,
                                               **rtc_arguments)
            action_pred = output["action_pred"].float().cpu().numpy()  # waits for the GPU: model_ms is its real time
            post_started = time.perf_counter()
        action = self.processor.decode_action(
            action_pred, self.embodiment_tag_value, raw_states, clip_to_statistics=self.clip_actions_to_statistics
        )
        result = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in action.items()}
        finished = time.perf_counter()
        self._timing.stages = {
            "preprocess_ms": (preprocessed - started) * 1000.0,
            "model_ms": (post_started - model_started) * 1000.0,
            "postprocess_ms": (finished - post_started) * 1000.0,
        }
        return result, {}

    # --- helpers ----------------------------------------------------------------------------------

    def _batch_size(self, observation: Mapping[str, Any]) -> int:
        video_keys = self.modality_configs["video"].modality_keys
        if video_keys and video_keys[0] in observation.get("video", {}):
            return int(np.asarray(observation["video"][video_keys[0]]).shape[0])
        state_keys = self.modality_configs["state"].modality_keys
        return int(np.asarray(observation["state"][state_keys[0]]).shape[0])

    def _check_lenient_layout(self, observation: Any) -> None:
        """strict=False takes lists and other dtypes, but not a missing group or key, a None, an array without its
        batch and time axes, or a time axis other than the checkpoint's delta_indices: ObservationError naming the
        entry and what it needs (these failed as a KeyError, an IndexError, or an internal error with a traceback in
        the server's log, and a video T as a plausible action)."""
        if not isinstance(observation, Mapping):
            raise ObservationError(f"observation must be a dict with keys 'video', 'state', 'language'; got "
                                   f"{type(observation).__name__}")
        expected = (("video", self.modality_configs["video"].modality_keys, 5, "(B, T, H, W, 3)"),
                    ("state", self.modality_configs["state"].modality_keys, 3, "(B, T, D)"),
                    ("language", [self.language_key], 0, "a list of B rows, each a list of one str"))
        for group, keys, ndim, layout in expected:
            if not keys:
                continue
            values = observation.get(group)
            if not isinstance(values, Mapping):
                got = type(values).__name__ if group in observation else f"no '{group}' (keys {sorted(observation, key=str)})"
                raise ObservationError(f"observation['{group}'] must be a dict holding {keys}; got {got}")
            for key in keys:
                if key not in values:
                    raise ObservationError(f"{group} key '{key}' is missing from observation['{group}']; got keys "
                                           f"{sorted(values, key=str)}")
                value = values[key]
                if group == "language":
                    if not isinstance(value, (list, tuple, np.ndarray)) or np.ndim(value) == 0:
                        raise ObservationError(f"language['{key}'] must be {layout}; got {type(value).__name__}")
                    continue
                try:
                    shape = None if value is None else np.shape(value)
                except ValueError:  # a ragged list
                    shape = None
                if shape is None or len(shape) != ndim:
                    got = (type(value).__name__ if shape is None else
                           f"shape {shape}" if shape else f"a single {type(value).__name__} (no axes)")
                    raise ObservationError(f"{group}['{key}'] must have shape {layout}; got {got}")
                # Another T than the checkpoint's delta_indices gave the prompt more images per camera (or the state
                # vector other columns): a layout the model never saw, answered with a plausible action.
                horizon = len(self.modality_configs[group].delta_indices)
                if shape[1] != horizon:
                    raise ObservationError(
                        f"{group}['{key}'] has T={shape[1]} time steps (axis 1 of shape {shape}); this checkpoint's "
                        f"{group} delta_indices {list(self.modality_configs[group].delta_indices)} need T={horizon} "
                        f"(shape {layout})")

    def _check_batch_sizes(self, observation: Mapping[str, Any], batch_size: int) -> None:
        """ObservationError naming the first video, state or language entry whose rows differ from `batch_size`
        (torch failed deep in the model, naming no key)."""
        entries = [(f"video['{key}']", observation.get("video", {}).get(key)) for key in self.modality_configs["video"].modality_keys]
        entries += [(f"state['{key}']", observation.get("state", {}).get(key)) for key in self.modality_configs["state"].modality_keys]
        entries.append((f"language['{self.language_key}']", observation.get("language", {}).get(self.language_key)))
        for name, value in entries:
            rows = len(value) if isinstance(value, (list, tuple)) else np.shape(value)[0] if np.ndim(value) else None
            if value is not None and rows != batch_size:
                raise ObservationError(f"{name} has {rows} rows; the observation's batch size is {batch_size} (every "
                                       "video, state and language entry needs one row per batch element)")

    def _denoising_steps(self, value: Any) -> Optional[int]:
        """options["denoising_steps"] checked: None (the checkpoint's num_inference_timesteps) or an int in range."""
        if value is None:
            return None
        buckets = self.model_config.num_timestep_buckets
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= buckets:
            raise ValueError(f"options['denoising_steps'] must be an int in [1, {buckets}] (this checkpoint runs "
                             f"{self.model_config.num_inference_timesteps} by default), got {value!r}")
        return int(value)

    def _initial_noise(
        self, options: Optional[Mapping[str, Any]], batch_size: int
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Generator]]:
        """Initial flow noise from options (see module docstring); (None, None) means the global RNG."""
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
                    f"max_action_dim; {shape} is taken for B=1); got dtype {sent.dtype} shape {sent.shape}"
                )
            with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: refused just below
                array = np.ascontiguousarray(array, dtype=np.float32)
            rows = non_finite_rows(array)  # NaN noise is NaN actions; 1e39 is inf in float32
            if rows:
                raise ValueError(f"options['noise'] has non-finite values (NaN, inf, or beyond float32's range) in rows "
                                 f"{rows}; expected finite numbers (standard normal noise)")
            return torch.from_numpy(array), None
        if seed is not None:
            rows = [
                torch.randn(shape, generator=torch.Generator("cpu").manual_seed(_generator_seed(row_seed)), dtype=torch.float32)
                for row_seed in _row_seeds(seed, batch_size)
            ]
            return torch.stack(rows), None
        return None, None

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
        return RtcRequest(previous, overlap, frozen, float(ramp_rate))

    def _parse_previous_action(self, previous: Any, batch_size: int) -> Dict[str, np.ndarray]:
        """{key: float array (B, T, D_key)} for exactly the action keys, one T for all, finite values."""
        action_config = self.modality_configs["action"]
        keys = list(action_config.modality_keys)
        where = "options['rtc']['previous_action']"
        if not isinstance(previous, Mapping):
            raise ValueError(f"{where} must be a map with keys {keys}; got {type(previous).__name__}")
        missing, extra = [k for k in keys if k not in previous], sorted(set(previous) - set(keys), key=str)
        if missing or extra:
            raise ValueError(f"{where} must have exactly the action keys {keys}; missing {missing}, extra {extra}")
        norm_params = self.processor.norm_params(self.embodiment_tag_value).action
        dims = {key: params.dim for key, params in norm_params.items()}
        out: Dict[str, np.ndarray] = {}
        horizon: Optional[int] = None
        for key in keys:
            array = np.asarray(previous[key])
            t_bound = f"T = {horizon}" if horizon is not None else f"1 <= T <= {action_config.horizon}"
            expected = f"a float array of shape (B={batch_size}, T, {dims[key]}) with {t_bound}"
            if (
                array.dtype.kind != "f"
                or array.ndim != 3
                or array.shape[0] != batch_size
                or array.shape[2] != dims[key]
                or not 1 <= array.shape[1] <= action_config.horizon
                or (horizon is not None and array.shape[1] != horizon)
            ):
                raise ValueError(f"{where}['{key}'] must be {expected}; got dtype {array.dtype} shape {array.shape}")
            if not np.isfinite(array).all():
                raise ValueError(f"{where}['{key}'] contains NaN or infinite values")
            horizon = array.shape[1]
            out[key] = array.astype(np.float64)
        return out

    def _rtc_model_arguments(self, rtc: RtcRequest, raw_states: Mapping[str, np.ndarray]) -> Dict[str, Any]:
        """Model-level RTC arguments: the overlap rows encoded as rows [0, overlap) of a padded normalized chunk.

        They are normalized with the statistics of the rows they land on (and relative to the current state),
        so the frozen rows decode back to the given values; hence `action_horizon` = overlap at model level.
        """
        if rtc.overlap_steps == 0:  # nothing to inpaint: exactly the call without RTC
            return {}
        encoded = self.processor.encode_action(rtc.overlap_rows(), self.embodiment_tag_value, raw_states)
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


def _independent_tokenizer(tokenizer: Any) -> Callable[[str], int]:
    """A token counter that shares no state with `tokenizer` (a Rust fast tokenizer used from two threads at once
    fails with "Already borrowed"): a copy of its backend, or of the tokenizer itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_truncation()
        copy.no_padding()
        return lambda text: len(copy.encode(text, add_special_tokens=False).ids)
    import copy as copying

    own = copying.deepcopy(tokenizer)
    return lambda text: len(own(text, add_special_tokens=False)["input_ids"])
