"""Gr00tN1d7Processor: one observation step -> model inputs, a batch -> collated tensors, model output -> actions
(and back: actions -> the model's normalized action space, for real-time chunking)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Union

import numpy as np

from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import ObservationError, non_finite_rows

from ..fork_locks import renew_locks_after_fork
from . import actions
from . import normalization as norm
from .checkpoint_files import EMBODIMENT_ID_NAME, PROCESSOR_CONFIG_NAME, STATISTICS_NAME, find_processor_dir
from .checkpoint_statistics import Statistics, load_statistics
from .config import ProcessorConfig, load_processor_config
from .embodiment_ids import embodiment_id_path, load_embodiment_ids
from .image import (MAX_LETTER_BOX_PIXELS, check_frame_size, eval_image_transform_batch,
                    eval_image_transform_torchvision_style_batch)
from .norm_params import EmbodimentNormParams, compute_norm_params, used_statistics
from .text import (IMAGE_PAD_TOKEN, build_conversation, expand_image_tokens, formalize_language, render_prompt,
                   reserved_tokens)
from .token_cache import TokenCache
from .tokenizer import load_tokenizer, load_vision_config, resolve_tokenizer_dir
from .video_checks import VideoChecks
from .vision_patches import (PREPROCESSOR_CONFIG_NAME, ReusedRows, VisionPatchConfig, num_image_tokens, patchify_batch,
                             patchify_images)

logger = logging.getLogger(__name__)

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PROMPT_CACHE_SIZE = 256  # rendered chat prompts kept per processor (instructions repeat across a rollout)


@dataclass
class ProcessedStep:
    """One processed observation: padded normalized state, transformed frames, prompt, embodiment id."""

    state: np.ndarray  # (T, max_state_dim) float32
    images: List[np.ndarray]  # uint8 (H', W', 3), time-major then view order
    prompt: str  # chat-rendered text with one <|image_pad|> per image (expanded at collation)
    embodiment_id: int


# The files AutoTokenizer reads the backbone tokenizer from (the chat template is read separately).
TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                        "added_tokens.json")


class Gr00tN1d7Processor(VideoChecks):
    """The GR00T N1.7 processing pipeline of model.md §3, as explicit steps."""

    def __init__(
        self,
        config: ProcessorConfig,
        statistics: Statistics,
        embodiment_ids: Mapping[str, int],
        tokenizer: Any,
        vision_config: VisionPatchConfig = VisionPatchConfig(),
        statistics_errors: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.config = config
        self.statistics = statistics
        self.statistics_errors = dict(statistics_errors or {})  # tag -> why its statistics cannot be used
        self.embodiment_ids = dict(embodiment_ids)
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        renew_locks_after_fork(self)  # a forked child tokenizes under no lock a parent thread held at the fork
        self.vision_config = vision_config
        self._reused_rows = ReusedRows()  # process_batch's CPU pixel rows: tens of MB of fresh pages per call otherwise
        # file name -> the file this processor was read from (from_pretrained; none when built in memory)
        self.source_files: Dict[str, Path] = {}
        self._norm_cache: Dict[str, EmbodimentNormParams] = {}
        self._anchor_cache: Dict[str, Dict[str, List[str]]] = {}
        self._prompt_cache: Dict[tuple, str] = {}
        self._token_cache = TokenCache()  # rows tokenized lately, under _tokenizer_lock
        # (tag, state key or camera) already warned about: a robot loop's every step would repeat the warning
        self._warned: Dict[str, set] = {"state": set(), "video": set()}
        # The dtype the model computes in ("float16" from Gr00tPolicy's --dtype fp16): a normalized state beyond its
        # range is refused naming the state, not met as NaN actions blamed on an action key.
        self.model_float = "float32"
        # A serving policy's per-request limits (Gr00tPolicy sets the server's): the pixels of a letter-boxed square,
        # and the rows whose 16:9 frames make the most vision tokens one call may (None: no such budget).
        self.max_image_pixels = MAX_LETTER_BOX_PIXELS
        self.max_rows: Optional[int] = None
        if tokenizer is not None:
            tokenizer.padding_side = "left"
        self.reserved_tokens = reserved_tokens(tokenizer)
        # A formalized instruction is lower-case without punctuation: only such tokens can occur in one.
        self._reserved_plain_tokens = tuple(token for token in self.reserved_tokens
                                            if formalize_language(token) == token)
        if self.statistics_errors:
            logger.warning("embodiments %s cannot be served: their statistics are invalid (%s)",
                           sorted(self.statistics_errors), next(iter(self.statistics_errors.values())))
        missing_stats = [tag for tag in config.modality_configs if tag not in statistics and tag not in self.statistics_errors]
        if missing_stats:
            logger.warning("statistics.json has no entry for embodiments %s", missing_stats)
        extra = sorted(set(statistics) - set(config.modality_configs))
        if extra:
            logger.info("ignoring statistics for embodiments without modality configs: %s", extra)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: Union[str, Path], local_files_only: bool = False,
                        embodiment_tag: Optional[str] = None) -> "Gr00tN1d7Processor":
        """Load processor_config.json, statistics.json, embodiment_id.json and the backbone tokenizer and image
        processor settings (preprocessor_config.json); `source_files` names the files read. An embodiment_id.json
        that is not read giving `embodiment_tag` (the tag served) another index is refused (load_embodiment_ids)."""
        config = load_processor_config(checkpoint_dir)
        tokenizer_dir = resolve_tokenizer_dir(checkpoint_dir, config.model_name, local_files_only=local_files_only)
        tokenizer, vision_config = load_tokenizer(tokenizer_dir), load_vision_config(tokenizer_dir)
        errors: Dict[str, str] = {}
        statistics = load_statistics(checkpoint_dir, errors, used_statistics(config))
        embodiment_ids = load_embodiment_ids(checkpoint_dir, config.embodiment_tags, served_tag=embodiment_tag)
        processor = cls(config, statistics, embodiment_ids, tokenizer, vision_config, errors)
        processor_dir = find_processor_dir(checkpoint_dir)
        read = {PROCESSOR_CONFIG_NAME: processor_dir / PROCESSOR_CONFIG_NAME,
                STATISTICS_NAME: processor_dir / STATISTICS_NAME,
                EMBODIMENT_ID_NAME: embodiment_id_path(checkpoint_dir),
                PREPROCESSOR_CONFIG_NAME: tokenizer_dir / PREPROCESSOR_CONFIG_NAME,
                **{name: tokenizer_dir / name for name in TOKENIZER_FILE_NAMES}}
        processor.source_files = {name: path for name, path in read.items() if path.is_file()}
        return processor

    # --- per-embodiment lookups -------------------------------------------------------------------

    def modality_configs(self, tag: str) -> Dict[str, ModalityConfig]:
        """All modality configs of an embodiment (including extras such as rl_info)."""
        try:
            return self.config.modality_configs[tag]
        except KeyError:
            raise KeyError(f"embodiment {tag!r} has no modality configs; supported: {self.config.embodiment_tags}") from None

    def embodiment_id(self, tag: str) -> int:
        """Projector index of an embodiment (embodiment_id.json merged with the built-in table)."""
        try:
            return int(self.embodiment_ids[tag])
        except KeyError:
            raise KeyError(f"embodiment {tag!r} has no projector index in embodiment_id.json or the built-in table") from None

    def norm_params(self, tag: str) -> EmbodimentNormParams:
        """Normalization parameters of an embodiment, computed once."""
        if tag not in self._norm_cache:
            self._norm_cache[tag] = self._compute_norm_params(tag)
        return self._norm_cache[tag]

    def relative_anchors(self, tag: str) -> Dict[str, List[str]]:
        """{state key: relative action keys decoded against it} of an embodiment, computed once (as norm_params)."""
        if tag not in self._anchor_cache:
            self._anchor_cache[tag] = actions.relative_anchors(self.modality_configs(tag)["action"], self.norm_params(tag))
        return self._anchor_cache[tag]

    def unread_state_keys(self, tag: str) -> FrozenSet[str]:
        """State keys whose values nothing reads: with exclude_state the model gets zeros, and no relative action key
        is decoded against them (relative_anchors). Their widths still count; their values are not checked."""
        if not self.config.exclude_state:
            return frozenset()
        return frozenset(self.modality_configs(tag)["state"].modality_keys) - set(self.relative_anchors(tag))

    def _compute_norm_params(self, tag: str) -> EmbodimentNormParams:
        if tag in self.statistics_errors:
            raise ValueError(self.statistics_errors[tag])
        source = str(self.source_files.get(STATISTICS_NAME, STATISTICS_NAME))
        if tag not in self.statistics:
            # Invalid tags are top-level keys too: one embodiment's groups written at the top level said "has []".
            raise KeyError(f"{source} has no statistics for embodiment {tag!r}; its top-level keys are "
                           f"{sorted(set(self.statistics) | set(self.statistics_errors))}, expected the layout "
                           "{embodiment_tag: {state: ..., action: ...}}; copy or download the checkpoint's "
                           "statistics.json again")
        return compute_norm_params(tag, self.statistics[tag], self.modality_configs(tag), self.config, source)

    # --- observation steps ------------------------------------------------------------------------

    def normalize_state(self, tag: str, states: Mapping[str, np.ndarray]) -> np.ndarray:
        """{key: (T, D)} raw states -> (T, max_state_dim) float32, normalized, concatenated, zero-padded."""
        configs = self.modality_configs(tag)
        state_config = configs["state"]
        params = self.norm_params(tag).state
        anchors = self.relative_anchors(tag)
        unread = self.unread_state_keys(tag)
        groups = []
        for key in state_config.modality_keys:
            if key not in states:
                raise KeyError(f"Joint group '{key}' not found in state dict for embodiment '{tag}'")
            value = np.asarray(states[key], np.float64)
            if key in unread:  # the model gets zeros (below): a NaN placeholder or another unit is served, as upstream
                with np.errstate(all="ignore"):  # normalize_state_key for its width check and its (sin/cos) width
                    groups.append(norm.normalize_state_key(key, value, params[key], state_config,
                                                           self.config.apply_sincos_state_encoding, False))
                continue
            rows = non_finite_rows(value)  # an inf on a clipped key would end at +-1: a plausible, wrong action
            if rows:
                raise ObservationError(f"State key '{key}' of '{tag}' has non-finite values (NaN or inf) in rows "
                                       f"{rows}; send finite states")
            # A float64 1e300 passed as finite, clipped to +-1 on a min/max key, and a relative action decoded
            # against it became inf in the actions' float32 cast.
            beyond = np.abs(value) > _FLOAT32_MAX
            if beyond.any():
                raise ObservationError(
                    f"State key '{key}' of '{tag}' has values beyond float32's range (largest |value| "
                    f"{np.max(np.abs(value)):.3g}, float32 holds up to {_FLOAT32_MAX:.3g}) in rows "
                    f"{actions.flagged_rows(beyond)}; states must fit float32, the float of the model's inputs and actions")
            sincos = self.config.apply_sincos_state_encoding and key in (state_config.sin_cos_embedding_keys or [])
            normalized = norm.normalize_state_key(
                key, value, params[key], state_config, self.config.apply_sincos_state_encoding, self.config.clip_outliers
            )
            # Before the model-float check: its "serve in bf16 or fp32" would only meet this refusal in another float
            actions.check_state_outliers(tag, key, value, normalized, params[key], state_config, sincos,
                                         anchors=key in anchors)
            # A key that anchors a relative action: the action is decoded against the raw value, whatever the model saw
            # of it (+-1 clipped, sin/cos, a std-0 column's raw value, a column of one value's 0): a 1e30 state made a
            # finite 1e30 target. Judged by its raw size against the statistics' magnitude, not in units of their
            # range: a column that barely varied in training (a rot6d entry within +-5e-6) puts a real 0.6 degree roll
            # thousands of ranges out. After normalize_state_key, whose width check names the key.
            if key in anchors:
                actions.check_anchor_magnitude(tag, key, value, params[key], anchors[key], state_config, sincos,
                                               self.config.clip_outliers)
            # A finite but huge state (1e38; 1e5 for a float16 model) overflows the model's float once normalized:
            # the model then makes NaN actions whose error blamed an action key. Refuse it here, naming the state.
            with np.errstate(over="ignore"):
                overflow = ~np.isfinite(normalized.astype(self.model_float))
            if overflow.any():
                raise ObservationError(
                    f"State key '{key}' of '{tag}' normalizes to values beyond {self.model_float} in rows "
                    f"{actions.flagged_rows(overflow)} (largest |value| {np.max(np.abs(value)):.3g}, normalized "
                    f"{np.max(np.abs(normalized)):.3g}, against this checkpoint's statistics); send the state in the "
                    "units the model was trained on" + (", or serve in bf16 or fp32" if self.model_float == "float16" else "")
                )
            if (tag, key) not in self._warned["state"]:
                warning = actions.state_range_warning(tag, key, value, normalized, params[key], state_config, sincos)
                if warning:
                    self._warned["state"].add((tag, key))
                    logger.warning(warning)
            groups.append(normalized)
        state = np.concatenate(groups, axis=-1)
        if self.config.exclude_state:
            state = np.zeros_like(state)
        return norm.pad_last_dim(state, self.config.max_state_dim, "state").astype(np.float32)

    def transform_frames(self, tag: str, video: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        """{view: (T, H, W, 3)} -> eval-transformed frames, time-major then view order."""
        per_view = self.transform_video_batch(tag, {key: np.asarray(value)[None] for key, value in video.items()})
        horizon = next(iter(per_view)).shape[1] if per_view else 0
        return [view[0, t] for t in range(horizon) for view in per_view]

    def transform_video_batch(self, tag: str, video: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        """{view: uint8 (B, T, H, W, 3)} -> per view, in modality-key order, the transformed (B, T, h, w, 3) frames.

        All B * T frames of a view go through one batched transform.
        """
        self.check_video(tag, video)
        out = []
        for key in self.modality_configs(tag)["video"].modality_keys:
            frames = np.asarray(video[key])
            flat = self.transform_image_batch(frames.reshape((-1,) + frames.shape[2:]))
            out.append(flat.reshape(frames.shape[:2] + flat.shape[1:]))
        return out

    def transform_image(self, image: np.ndarray) -> np.ndarray:
        """Eval transform of one uint8 (H, W, 3) frame with this checkpoint's image settings (model.md §3.4)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image frames must be uint8 (H, W, 3), got dtype {image.dtype} shape {image.shape}")
        return self.transform_image_batch(image[None])[0]

    def transform_image_batch(self, frames: np.ndarray) -> np.ndarray:
        """Eval transform of uint8 (N, H, W, 3) frames of one camera, together (model.md §3.4)."""
        cfg = self.config
        if frames.ndim == 4:
            check_frame_size(frames.shape[1], frames.shape[2], cfg.letter_box_transform,
                             shortest_edge=self._scaled_shortest_edge(), max_pixels=self.max_image_pixels)
        if not cfg.use_albumentations:
            if cfg.image_target_size is None or cfg.image_crop_size is None:
                raise ValueError("use_albumentations=false needs image_target_size and image_crop_size")
            return eval_image_transform_torchvision_style_batch(
                frames, cfg.image_target_size, cfg.image_crop_size, cfg.letter_box_transform
            )
        return eval_image_transform_batch(
            frames, cfg.shortest_image_edge, cfg.resolved_crop_fraction, cfg.letter_box_transform, cfg.image_target_size
        )

    def reserved_tokens_in(self, language: str) -> List[str]:
        """The backbone's special tokens (self.reserved_tokens) in the instruction as the prompt would hold it: with
        formalize_language off, '<|image_pad|>' in it was read as one more image placeholder, '<|video_pad|>' broke
        the rope index inside transformers."""
        if not self.config.formalize_language:
            return [token for token in self.reserved_tokens if token in language]
        if not self._reserved_plain_tokens:  # the usual case: every special token holds punctuation ('<|...|>')
            return []
        text = formalize_language(language)
        return [token for token in self._reserved_plain_tokens if token in text]

    def instruction_text(self, language: str) -> str:
        """The instruction as the tokenizer gets it: formalized when the checkpoint's formalize_language is on."""
        return formalize_language(language) if self.config.formalize_language else language

    def build_prompt(self, language: str, num_images: int) -> str:
        """Formalize the instruction and render the chat template with `num_images` images before it (cached)."""
        cache_key = (language, num_images)
        prompt = self._prompt_cache.get(cache_key)
        if prompt is None:
            prompt = render_prompt(build_conversation(num_images, self.instruction_text(language)), self.tokenizer)
            if len(self._prompt_cache) >= _PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            self._prompt_cache[cache_key] = prompt
        return prompt

    def process_step(
        self, tag: str, video: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray], language: str
    ) -> ProcessedStep:
        """One unbatched observation -> ProcessedStep."""
        frames = self.transform_frames(tag, video)
        return ProcessedStep(
            state=self.normalize_state(tag, state),
            images=frames,
            prompt=self.build_prompt(language, len(frames)),
            embodiment_id=self.embodiment_id(tag),
        )

    # --- batch ------------------------------------------------------------------------------------

    def collate(self, steps: Sequence[ProcessedStep]) -> Dict[str, Any]:
        """Tokenize (left padding) and pack: input_ids, attention_mask, pixel_values, image_grid_thw, state, embodiment_id."""
        import torch

        if not steps:
            raise ValueError("collate needs at least one processed step")
        images = [img for step in steps for img in step.images]
        pixel_values, grids = patchify_images(images, self.vision_config)
        counts = [len(step.images) for step in steps]
        return {
            **self._tokenize([step.prompt for step in steps], counts, grids),
            "pixel_values": pixel_values,
            "image_grid_thw": grids,
            "state": torch.from_numpy(np.stack([step.state for step in steps]).astype(np.float32)),
            "embodiment_id": torch.tensor([step.embodiment_id for step in steps], dtype=torch.int64),
        }

    def process_batch(
        self,
        tag: str,
        video: Mapping[str, np.ndarray],
        state: Mapping[str, np.ndarray],
        languages: Sequence[str],
        device: Any = None,
        normalized_state: Optional[np.ndarray] = None,
    ) -> Dict[str, Any]:
        """A batched observation -> model inputs, equal to `collate` of B `process_step`s, without a per-row loop.

        `video` {view: uint8 (B, T, H, W, 3)}, `state` {key: (B, T, D)}, one instruction per row. Frames are
        transformed per view in one call and patchified in one call (on `device`: e.g. the model's GPU).
        `normalized_state`: normalize_state(tag, state), when the caller has it already.
        """
        import torch

        per_view = self.transform_video_batch(tag, video)
        batch_size, horizon = per_view[0].shape[:2] if per_view else (len(languages), 0)
        if len(languages) != batch_size:
            raise ValueError(f"got {len(languages)} language instructions for a batch of {batch_size} observations")
        images_per_row = horizon * len(per_view)
        if len({view.shape[2:] for view in per_view}) <= 1 and per_view:
            # (B, T, V, h, w, 3): rows, then time-major, then view order, as process_step orders them.
            frames = np.stack(per_view, axis=2).reshape((-1,) + per_view[0].shape[2:])
            pixel_values, grids = patchify_batch(frames, self.vision_config, device, self._reused_rows)
        else:
            frames_list = [per_view[v][b, t] for b in range(batch_size) for t in range(horizon) for v in range(len(per_view))]
            pixel_values, grids = patchify_images(frames_list, self.vision_config, device)
        prompts = [self.build_prompt(language, images_per_row) for language in languages]
        states = self.normalize_state(tag, state) if normalized_state is None else normalized_state
        return {
            **self._tokenize(prompts, [images_per_row] * batch_size, grids),
            "pixel_values": pixel_values,
            "image_grid_thw": grids,
            "state": torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)),
            "embodiment_id": torch.full((batch_size,), self.embodiment_id(tag), dtype=torch.int64),
        }

    def _renew_locks(self) -> None:
        """In a forked child (fork_locks): a fresh tokenizer lock."""
        self._tokenizer_lock = threading.Lock()

    def _tokenize(self, prompts: Sequence[str], image_counts: Sequence[int], grids: Any) -> Dict[str, Any]:
        """Expand each prompt's image tokens from its images' grids, then tokenize with left padding.

        Rows tokenized lately come from the TokenCache (a rollout repeats its instruction and frame size every step);
        a batch with a new row is tokenized whole.
        """
        import torch

        grid_rows = np.asarray(grids.cpu() if hasattr(grids, "cpu") else grids)
        keys, cursor = [], 0
        for prompt, count in zip(prompts, image_counts):
            tokens = tuple(num_image_tokens(g, self.vision_config.merge_size) for g in grid_rows[cursor : cursor + count])
            cursor += count
            keys.append((prompt, tokens))
        with self._tokenizer_lock:  # one tokenizer object: its padding settings are shared by every calling thread
            rows = self._token_cache.batch(keys, self.tokenizer)
            if rows is None:
                texts = [expand_image_tokens(prompt, tokens, IMAGE_PAD_TOKEN) for prompt, tokens in keys]
                self.tokenizer.padding_side = "left"
                encoded = self.tokenizer(texts, padding=True, return_tensors="np")
                input_ids = np.asarray(encoded["input_ids"], dtype=np.int64)
                attention_mask = np.asarray(encoded["attention_mask"], dtype=np.int64)
                self._token_cache.keep(keys, input_ids, attention_mask)
            else:
                input_ids, attention_mask = rows
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}

    # --- action decoding --------------------------------------------------------------------------

    def decode_action(
        self,
        action: np.ndarray,
        tag: str,
        raw_states: Optional[Mapping[str, np.ndarray]] = None,
        clip_to_statistics: bool = False,
        inpainted: Optional[np.ndarray] = None,
    ) -> Dict[str, np.ndarray]:
        """(B, H_max, D_max) normalized model output -> {key: float32 (B, H_e, D_key)} absolute actions.

        Min/max keys always land inside their statistics range (the reference clips to [-1, 1] first);
        `clip_to_statistics` also clips mean/std keys to [low, high] (q01/q99 or min/max, as normalization uses).
        `inpainted`: the normalized RTC start rows (B, overlap, D_max) as the model got them (in its compute dtype, so
        a frozen row comes back as given); the output guard judges those rows by how far the model moved them, not by
        the caller's values.
        """
        return actions.decode_action(action, tag, self.modality_configs(tag), self.norm_params(tag), self.config,
                                     raw_states, clip_to_statistics, inpainted)

    def state_outliers(self, tag: str, raw_states: Mapping[str, np.ndarray], rows: Sequence[int]) -> List[str]:
        """For each state key whose values in `rows` normalize beyond +-STATE_OUTLIER_LIMIT: its name, largest
        normalized and raw |value| in those rows, and its statistics' range."""
        unread = self.unread_state_keys(tag)  # the model never saw them: no cause of its answer
        return actions.state_outliers({key: value for key, value in raw_states.items() if key not in unread}, rows,
                                      self.modality_configs(tag).get("state"), self.norm_params(tag).state, self.config)

    def check_reference_states(self, tag: str, raw_states: Mapping[str, np.ndarray]) -> None:
        """ValueError unless every relative action key's reference state can anchor it (finite, for xyz+rot6d a
        real rotation, for a 4x4 pose an invertible matrix): the checks decode_action makes, here before the model
        runs rather than after it."""
        actions.check_reference_states(tag, self.modality_configs(tag)["action"], self.norm_params(tag), raw_states)

    def encode_action(
        self, action: Mapping[str, np.ndarray], tag: str, raw_states: Optional[Mapping[str, np.ndarray]] = None,
        clip: bool = True,
    ) -> np.ndarray:
        """Inverse of `decode_action`: {key: (B, T, D_key)} absolute actions -> (B, T, max_action_dim) float32.

        Row t is normalized with step t's statistics; relative keys are first expressed relative to the last
        step of their raw reference state. Min/max values outside the statistics range are clipped to [-1, 1],
        so they decode to the range's edge (unless not `clip`: what an outlier check looks at).
        """
        return actions.encode_action(action, tag, self.modality_configs(tag)["action"], self.norm_params(tag),
                                     self.config.max_action_dim, raw_states, clip)
