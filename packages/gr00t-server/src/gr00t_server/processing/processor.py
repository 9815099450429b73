"""Gr00tN1d7Processor: one observation step -> model inputs, a batch -> collated tensors, model output -> actions
(and back: actions -> the model's normalized action space, for real-time chunking)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from gr00t_client.modality import ActionConfig, ActionRepresentation, ActionType, ModalityConfig
from gr00t_client.policy import NonFiniteActionError, ObservationError, non_finite_rows

from . import normalization as norm
from .config import ProcessorConfig, Statistics, load_embodiment_ids, load_processor_config, load_statistics
from .image import check_frame_size, eval_image_transform_batch, eval_image_transform_torchvision_style_batch
from .text import (IMAGE_PAD_TOKEN, build_conversation, expand_image_tokens, formalize_language, render_prompt,
                   reserved_tokens)
from .tokenizer import load_backbone_text_assets
from .vision_patches import VisionPatchConfig, num_image_tokens, patchify_batch, patchify_images

logger = logging.getLogger(__name__)

_PROMPT_CACHE_SIZE = 256  # rendered chat prompts kept per processor (instructions repeat across a rollout)
# A normalized state this far beyond its statistics' range (about [-1, 1]) is in other units than the training data's,
# and the likelier cause of a non-finite model output than the weights.
STATE_OUTLIER_LIMIT = 1e3


@dataclass
class ProcessedStep:
    """One processed observation: padded normalized state, transformed frames, prompt, embodiment id."""

    state: np.ndarray  # (T, max_state_dim) float32
    images: List[np.ndarray]  # uint8 (H', W', 3), time-major then view order
    prompt: str  # chat-rendered text with one <|image_pad|> per image (expanded at collation)
    embodiment_id: int


@dataclass(frozen=True)
class EmbodimentNormParams:
    """Per-key normalization parameters of one embodiment (state, action, relative action)."""

    state: Dict[str, norm.KeyNormParams]
    action: Dict[str, norm.KeyNormParams]
    relative_action: Dict[str, Dict[str, np.ndarray]]  # key -> {"min", "max"} as (H, D)


def _check_relative_decodable(tag: str, key: str, spec: ActionConfig, state: Mapping[str, norm.KeyNormParams],
                              action_dim: int) -> None:
    """ValueError unless relative action `key` can be decoded: its reference state is a state key of the same width
    (statistics.json's), and an EEF pose has its format's width."""
    where = f"processor_config.json: relative action key '{key}' of '{tag}'"
    state_key = spec.state_key or key
    if state_key not in state:
        raise ValueError(f"{where} is decoded against state key '{state_key}' (its action_configs state_key), which is "
                         f"not one of the state keys {list(state)}")
    if state[state_key].dim != action_dim:
        raise ValueError(f"{where} has {action_dim} values but its reference state '{state_key}' has "
                         f"{state[state_key].dim} (statistics.json); a relative action is decoded against a state of "
                         "its own width")
    pose_width = norm.POSE_WIDTHS[spec.format.name]
    if spec.type is ActionType.EEF and action_dim != pose_width:
        raise ValueError(f"{where} has {action_dim} values but its action_configs format {spec.format.name} is an "
                         f"end-effector pose of {pose_width}")


class Gr00tN1d7Processor:
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
        self.vision_config = vision_config
        self._norm_cache: Dict[str, EmbodimentNormParams] = {}
        self._prompt_cache: Dict[tuple, str] = {}
        # The dtype the model computes in ("float16" from Gr00tPolicy's --dtype fp16): a normalized state beyond its
        # range is refused naming the state, not met as NaN actions blamed on an action key.
        self.model_float = "float32"
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
    def from_pretrained(cls, checkpoint_dir: Union[str, Path], local_files_only: bool = False) -> "Gr00tN1d7Processor":
        """Load processor_config.json, statistics.json, embodiment_id.json and the backbone tokenizer."""
        config = load_processor_config(checkpoint_dir)
        tokenizer, vision_config = load_backbone_text_assets(checkpoint_dir, config.model_name, local_files_only)
        errors: Dict[str, str] = {}
        statistics = load_statistics(checkpoint_dir, errors)
        return cls(config, statistics, load_embodiment_ids(checkpoint_dir), tokenizer, vision_config, errors)

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

    def _compute_norm_params(self, tag: str) -> EmbodimentNormParams:
        if tag in self.statistics_errors:
            raise ValueError(self.statistics_errors[tag])
        if tag not in self.statistics:
            raise KeyError(f"statistics.json has no statistics for embodiment {tag!r}; has {sorted(self.statistics)}")
        stats = self.statistics[tag]
        configs = self.modality_configs(tag)
        pct = self.config.use_percentiles
        state: Dict[str, norm.KeyNormParams] = {}
        for key in configs["state"].modality_keys if "state" in configs else []:
            if key not in stats.get("state", {}):
                raise KeyError(f"Joint group '{key}' not found in state statistics for embodiment '{tag}'")
            state[key] = norm.key_norm_params(stats["state"][key], pct, f"state key '{key}' of '{tag}'",
                                              mean_std=key in (configs["state"].mean_std_embedding_keys or []))
        action: Dict[str, norm.KeyNormParams] = {}
        relative: Dict[str, Dict[str, np.ndarray]] = {}
        action_config = configs.get("action")
        for index, key in enumerate(action_config.modality_keys if action_config else []):
            if key not in stats.get("action", {}):
                raise KeyError(f"Action key '{key}' not found in action statistics for embodiment '{tag}'")
            z_scored = key in (action_config.mean_std_embedding_keys or []) and not self._is_relative(action_config, index)
            params = norm.key_norm_params(stats["action"][key], pct, f"action key '{key}' of '{tag}'", mean_std=z_scored)
            if "min" in stats["action"][key]:  # the output width comes from the absolute min (model.md §1.5)
                params = norm.KeyNormParams(params.low, params.high, params.mean, params.std, int(stats["action"][key]["min"].shape[-1]))
            action[key] = params
            if self._is_relative(action_config, index):
                if "relative_action" not in stats:
                    raise ValueError(
                        f"Relative action statistics required for embodiment '{tag}' but 'relative_action' not found in statistics"
                    )
                if key not in stats["relative_action"]:
                    raise ValueError(
                        f"Relative action statistics required for key '{key}' in embodiment '{tag}' but not found"
                    )
                relative[key] = norm.relative_stats_for_horizon(
                    stats["relative_action"][key], action_config.horizon, f"key '{key}' of '{tag}'"
                )
                lacking = [name for name in ("mean", "std") if name not in relative[key]]
                if key in (action_config.mean_std_embedding_keys or []) and lacking:  # at load, not after every call
                    raise ValueError(f"Relative action statistics for key '{key}' of '{tag}' lack '{lacking[0]}' (the key "
                                     "is in mean_std_embedding_keys)")
                width = relative[key]["min"].shape[-1]
                if width != params.dim:
                    raise ValueError(
                        f"statistics.json: relative_action key '{key}' of '{tag}' has {width} values per step but "
                        f"action key '{key}' has {params.dim}"
                    )
                _check_relative_decodable(tag, key, action_config.action_configs[index], state, params.dim)
        state_config = configs.get("state")
        sincos = set()
        if state_config is not None and self.config.apply_sincos_state_encoding:
            sincos = set(state_config.sin_cos_embedding_keys or [])
        total = sum(params.dim * (2 if key in sincos else 1) for key, params in state.items())  # sin and cos: 2 values
        if total > self.config.max_state_dim:  # else every request fails
            raise ValueError(
                f"statistics.json: the state keys of {tag!r} have {total} dimensions together, more than "
                f"processor_config.json's max_state_dim {self.config.max_state_dim}"
            )
        total = sum(params.dim for params in action.values())
        if total > self.config.max_action_dim:
            raise ValueError(
                f"statistics.json: the action keys of '{tag}' have {total} dimensions together, more than the "
                f"processor's max_action_dim {self.config.max_action_dim}"
            )
        return EmbodimentNormParams(state=state, action=action, relative_action=relative)

    def _is_relative(self, action_config: ModalityConfig, index: int) -> bool:
        if not self.config.use_relative_action or action_config.action_configs is None:
            return False
        return action_config.action_configs[index].rep == ActionRepresentation.RELATIVE

    # --- observation steps ------------------------------------------------------------------------

    def normalize_state(self, tag: str, states: Mapping[str, np.ndarray]) -> np.ndarray:
        """{key: (T, D)} raw states -> (T, max_state_dim) float32, normalized, concatenated, zero-padded."""
        state_config = self.modality_configs(tag)["state"]
        params = self.norm_params(tag).state
        groups = []
        for key in state_config.modality_keys:
            if key not in states:
                raise KeyError(f"Joint group '{key}' not found in state dict for embodiment '{tag}'")
            value = np.asarray(states[key], np.float64)
            rows = non_finite_rows(value)  # an inf on a clipped key would end at +-1: a plausible, wrong action
            if rows:
                raise ObservationError(f"State key '{key}' of '{tag}' has non-finite values (NaN or inf) in rows "
                                       f"{rows}; send finite states")
            normalized = norm.normalize_state_key(
                key, value, params[key], state_config, self.config.apply_sincos_state_encoding, self.config.clip_outliers
            )
            # A finite but huge state (1e38; 1e5 for a float16 model) overflows the model's float once normalized:
            # the model then makes NaN actions whose error blamed an action key. Refuse it here, naming the state.
            with np.errstate(over="ignore"):
                overflow = ~np.isfinite(normalized.astype(self.model_float))
            if overflow.any():
                rows = np.flatnonzero(overflow.reshape(overflow.shape[0], -1).any(axis=1)).tolist()[:8] if overflow.ndim > 1 else [0]
                raise ObservationError(
                    f"State key '{key}' of '{tag}' normalizes to values beyond {self.model_float} in rows {rows} (largest "
                    f"|value| {np.max(np.abs(value)):.3g}, normalized {np.max(np.abs(normalized)):.3g}, against this "
                    "checkpoint's statistics); send the state in the units the model was trained on"
                    + (", or serve in bf16 or fp32" if self.model_float == "float16" else "")
                )
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

    def check_video(self, tag: str, video: Mapping[str, np.ndarray]) -> None:
        """Refuse, from shapes alone, video the transform cannot take: a missing view, a layout other than uint8
        (B, T, H, W, 3), views of different (B, T), a frame size the image processor refuses."""
        video_config = self.modality_configs(tag)["video"]
        horizon = None
        for key in video_config.modality_keys:
            if key not in video:
                raise KeyError(f"Video key '{key}' not found in observation for embodiment '{tag}'")
            frames = np.asarray(video[key])
            if frames.ndim != 5:
                raise ObservationError(f"Video key '{key}' must be (B, T, H, W, 3) here, got shape {frames.shape}")
            if frames.dtype != np.uint8 or frames.shape[-1] != 3:  # named as sent, before a size check misreads it
                hint = (" (channels first? send channels last, e.g. frames.transpose(0, 1, 3, 4, 2))"
                        if frames.shape[2] == 3 and frames.shape[-1] != 3 else
                        " (floats in [0, 1]? send (frames * 255).round().astype(np.uint8))" if frames.dtype.kind == "f"
                        else "")
                raise ObservationError(f"Video key '{key}' must be uint8 (B, T, H, W, 3) with values 0-255; got "
                                       f"{frames.dtype} {frames.shape}{hint}")
            if horizon is None:
                horizon = frames.shape[:2]
            elif frames.shape[:2] != horizon:
                raise ObservationError(f"Video key '{key}' has (B, T) = {frames.shape[:2]}; other views have {horizon}")
            # Before any resize: a thin frame would be scaled up to gigabytes (shape only, cheap).
            check_frame_size(frames.shape[2], frames.shape[3], self.config.letter_box_transform, f"Video key '{key}'",
                             self._scaled_shortest_edge())

    def _scaled_shortest_edge(self) -> Optional[int]:
        """The side a frame's shortest side is scaled to, keeping its aspect ratio (None: resized to a fixed size)."""
        cfg = self.config
        return cfg.shortest_image_edge if cfg.use_albumentations else None

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
                             shortest_edge=self._scaled_shortest_edge())
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

    def build_prompt(self, language: str, num_images: int) -> str:
        """Formalize the instruction and render the chat template with `num_images` images before it (cached)."""
        cache_key = (language, num_images)
        prompt = self._prompt_cache.get(cache_key)
        if prompt is None:
            text = formalize_language(language) if self.config.formalize_language else language
            prompt = render_prompt(build_conversation(num_images, text), self.tokenizer)
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
    ) -> Dict[str, Any]:
        """A batched observation -> model inputs, equal to `collate` of B `process_step`s, without a per-row loop.

        `video` {view: uint8 (B, T, H, W, 3)}, `state` {key: (B, T, D)}, one instruction per row. Frames are
        transformed per view in one call and patchified in one call (on `device`: e.g. the model's GPU).
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
            pixel_values, grids = patchify_batch(frames, self.vision_config, device)
        else:
            frames_list = [per_view[v][b, t] for b in range(batch_size) for t in range(horizon) for v in range(len(per_view))]
            pixel_values, grids = patchify_images(frames_list, self.vision_config, device)
        prompts = [self.build_prompt(language, images_per_row) for language in languages]
        states = self.normalize_state(tag, state)
        return {
            **self._tokenize(prompts, [images_per_row] * batch_size, grids),
            "pixel_values": pixel_values,
            "image_grid_thw": grids,
            "state": torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)),
            "embodiment_id": torch.full((batch_size,), self.embodiment_id(tag), dtype=torch.int64),
        }

    def _tokenize(self, prompts: Sequence[str], image_counts: Sequence[int], grids: Any) -> Dict[str, Any]:
        """Expand each prompt's image tokens from its images' grids, then tokenize with left padding."""
        import torch

        grid_rows = np.asarray(grids.cpu() if hasattr(grids, "cpu") else grids)
        texts, cursor = [], 0
        for prompt, count in zip(prompts, image_counts):
            tokens = [num_image_tokens(g, self.vision_config.merge_size) for g in grid_rows[cursor : cursor + count]]
            cursor += count
            texts.append(expand_image_tokens(prompt, tokens, IMAGE_PAD_TOKEN))
        self.tokenizer.padding_side = "left"
        encoded = self.tokenizer(texts, padding=True, return_tensors="np")
        return {
            "input_ids": torch.from_numpy(np.asarray(encoded["input_ids"], dtype=np.int64)),
            "attention_mask": torch.from_numpy(np.asarray(encoded["attention_mask"], dtype=np.int64)),
        }

    # --- action decoding --------------------------------------------------------------------------

    def decode_action(
        self,
        action: np.ndarray,
        tag: str,
        raw_states: Optional[Mapping[str, np.ndarray]] = None,
        clip_to_statistics: bool = False,
    ) -> Dict[str, np.ndarray]:
        """(B, H_max, D_max) normalized model output -> {key: float32 (B, H_e, D_key)} absolute actions.

        Min/max keys always land inside their statistics range (the reference clips to [-1, 1] first);
        `clip_to_statistics` also clips mean/std keys to [low, high] (q01/q99 or min/max, as normalization uses).
        """
        action = np.asarray(action, np.float64)
        if action.ndim == 2:
            action = action[None]
        action_config = self.modality_configs(tag)["action"]
        params = self.norm_params(tag)
        dims = {key: p.dim for key, p in params.action.items()}
        parts = norm.split_action(action, action_config.modality_keys, dims, action_config.horizon)
        for key, part in parts.items():  # before unnormalizing: its clip to [-1, 1] made an inf a plausible q99 action
            rows = non_finite_rows(part)
            if rows:
                outliers = self.state_outliers(tag, raw_states or {}, rows)
                cause = (f" Likely cause: {'; '.join(outliers)}, far outside the range the model was trained on; send "
                         "states in the units of the checkpoint's statistics." if outliers else
                         " Check the weights (gr00t-server verify) and, for a float16 model, values beyond its range "
                         "(65504): serve in bf16 or fp32.")
                raise NonFiniteActionError(
                    f"the model's output for action key '{key}' of '{tag}' holds non-finite values (NaN or inf) in rows "
                    f"{rows}, before unnormalization; the action was not sent.{cause}", key=key, rows=rows)
        mean_std_keys = set(action_config.mean_std_embedding_keys or [])
        out: Dict[str, np.ndarray] = {}
        for index, key in enumerate(action_config.modality_keys):
            if key in params.relative_action:
                rel = params.relative_action[key]
                if key in mean_std_keys:  # upstream checks mean/std keys first, with the relative statistics
                    rows = parts[key].shape[1]
                    where = f"key '{key}' of '{tag}'"
                    value = norm.mean_std_unnormalize(parts[key], norm.relative_stat(rel, "mean", rows, where),
                                                      norm.relative_stat(rel, "std", rows, where))
                else:
                    value = norm.minmax_unnormalize(parts[key], rel["min"], rel["max"])
                spec = action_config.action_configs[index]
                state_key = spec.state_key or key
                if raw_states is None:
                    raise ValueError(
                        f"State dict required for relative->absolute conversion of key '{key}' in embodiment '{tag}'"
                    )
                if state_key not in raw_states:
                    raise KeyError(f"Reference state key '{state_key}' not found in state dict for embodiment '{tag}'")
                value = norm.decode_relative(key, value, raw_states[state_key], spec.type.name, spec.format.name)
            else:
                value = norm.unnormalize_action_key(parts[key], params.action[key], key in mean_std_keys)
                if clip_to_statistics and key in mean_std_keys:
                    value = np.clip(value, params.action[key].low, params.action[key].high)
            out[key] = value.astype(np.float32)
        return out

    def state_outliers(self, tag: str, raw_states: Mapping[str, np.ndarray], rows: Sequence[int]) -> List[str]:
        """For each state key whose values in `rows` normalize beyond +-STATE_OUTLIER_LIMIT: its name, largest
        normalized and raw |value| in those rows, and its statistics' range."""
        state_config = self.modality_configs(tag).get("state")
        params = self.norm_params(tag).state
        found = []
        for key in state_config.modality_keys if state_config else []:
            value = np.asarray(raw_states.get(key, np.zeros((0,))), np.float64)
            picked = value[[row for row in rows if row < len(value)]] if value.ndim == 3 else value
            if picked.size == 0 or picked.shape[-1] != params[key].dim:
                continue
            with np.errstate(all="ignore"):
                normalized = norm.normalize_state_key(key, picked, params[key], state_config,
                                                      self.config.apply_sincos_state_encoding,
                                                      self.config.clip_outliers)
            largest = float(np.max(np.abs(normalized)))
            if largest > STATE_OUTLIER_LIMIT:
                low, high = float(np.min(params[key].low)), float(np.max(params[key].high))
                found.append(f"state key '{key}' normalizes to |values| up to {largest:.3g} in those rows (raw "
                             f"{float(np.max(np.abs(picked))):.3g}; its statistics' range is [{low:.3g}, {high:.3g}])")
        return found

    def check_reference_states(self, tag: str, raw_states: Mapping[str, np.ndarray]) -> None:
        """ValueError unless every relative action key's reference state can anchor it (finite, for xyz+rot6d a
        real rotation, for a 4x4 pose an invertible matrix): the checks decode_action makes, here before the model
        runs rather than after it."""
        action_config = self.modality_configs(tag)["action"]
        params = self.norm_params(tag)
        for index, key in enumerate(action_config.modality_keys):
            if key not in params.relative_action:
                continue
            spec = action_config.action_configs[index]
            state = raw_states.get(spec.state_key or key)
            if state is None:  # decode_action names the missing key; the observation checks do first
                continue
            reference = norm._last_reference_step(key, state, params.action[key].dim, "relative->absolute")
            norm._check_reference_pose(key, reference, spec.type.name, spec.format.name, spec.state_key or key)

    def encode_action(
        self, action: Mapping[str, np.ndarray], tag: str, raw_states: Optional[Mapping[str, np.ndarray]] = None
    ) -> np.ndarray:
        """Inverse of `decode_action`: {key: (B, T, D_key)} absolute actions -> (B, T, max_action_dim) float32.

        Row t is normalized with step t's statistics; relative keys are first expressed relative to the last
        step of their raw reference state. Min/max values outside the statistics range are clipped to [-1, 1],
        so they decode to the range's edge.
        """
        action_config = self.modality_configs(tag)["action"]
        params = self.norm_params(tag)
        missing = [key for key in action_config.modality_keys if key not in action]
        if missing:
            raise KeyError(f"Action keys {missing} not found in actions to encode for embodiment '{tag}'")
        mean_std_keys = set(action_config.mean_std_embedding_keys or [])
        parts: List[np.ndarray] = []
        batch_rows: Optional[tuple] = None
        for index, key in enumerate(action_config.modality_keys):
            value = np.asarray(action[key], np.float64)
            dim = params.action[key].dim
            if value.ndim != 3 or value.shape[-1] != dim or value.shape[1] > action_config.horizon:
                raise ValueError(
                    f"Action key '{key}' must have shape (B, T, {dim}) with T <= action horizon "
                    f"{action_config.horizon}; got {value.shape}"
                )
            if batch_rows is not None and value.shape[:2] != batch_rows:
                raise ValueError(f"Action key '{key}' has (B, T) = {value.shape[:2]}; earlier keys have {batch_rows}")
            batch_rows = value.shape[:2]
            if key in params.relative_action:
                parts.append(self._encode_relative_key(tag, index, key, value, raw_states))
            else:
                parts.append(norm.normalize_action_key(value, params.action[key], key in mean_std_keys))
        encoded = np.concatenate(parts, axis=-1)
        return norm.pad_last_dim(encoded, self.config.max_action_dim, "action").astype(np.float32)

    def _encode_relative_key(
        self, tag: str, index: int, key: str, value: np.ndarray, raw_states: Optional[Mapping[str, np.ndarray]]
    ) -> np.ndarray:
        """Absolute (B, T, D) -> relative to the reference state, normalized with the first T relative-stat rows."""
        spec = self.modality_configs(tag)["action"].action_configs[index]
        state_key = spec.state_key or key
        if raw_states is None:
            raise ValueError(
                f"State dict required for absolute->relative conversion of key '{key}' in embodiment '{tag}'"
            )
        if state_key not in raw_states:
            raise KeyError(f"Reference state key '{state_key}' not found in state dict for embodiment '{tag}'")
        relative = norm.encode_relative(key, value, raw_states[state_key], spec.type.name, spec.format.name)
        stats = self.norm_params(tag).relative_action[key]
        rows, where = value.shape[1], f"key '{key}' of '{tag}'"
        if key in set(self.modality_configs(tag)["action"].mean_std_embedding_keys or []):
            return norm.mean_std_normalize(relative, norm.relative_stat(stats, "mean", rows, where),
                                           norm.relative_stat(stats, "std", rows, where))
        return norm.minmax_normalize(relative, norm.relative_stat(stats, "min", rows, where),
                                     norm.relative_stat(stats, "max", rows, where))
