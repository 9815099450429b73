"""Gr00tPolicy: a GR00T N1.7 checkpoint behind the BasePolicy API (model.md §1.2, §3, §4.3).

Sampling noise, so that a batch gives the same rows as separate calls:
- options={"seed": s}: row i of the batch starts from `torch.randn((H, D_max), generator=Generator("cpu").
  manual_seed(s + i))` in float32, then cast to the model dtype/device. A batch with seed s therefore equals
  B single calls with seeds s, s+1, ..., s+B-1 (and a single call with seed s equals row 0).
- options={"noise": array (B, H, D_max) or (H, D_max)}: the initial noise, used as given.
- neither: noise from torch's global RNG (like the reference).
Keys starting with "_" (e.g. "_session_id", added by servers) are ignored.
Caveat inherited from the reference: the VL self-attention has no padding mask, so rows whose prompts need
left padding (different token counts in one batch) can differ slightly from their single-call result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from gr00t_client.embodiment import FINETUNE_ONLY_TAGS, POSTTRAIN_TAGS, EmbodimentTag
from gr00t_client.modality import ModalityConfig
from gr00t_client.policy import BasePolicy
from gr00t_server.model.checkpoint import load_model, resolve_checkpoint_dir
from gr00t_server.processing.config import load_processor_config
from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.processing.text import IMAGE_PAD_TOKEN

logger = logging.getLogger(__name__)

_POLICY_MODALITIES = ("video", "state", "action", "language")


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
    resolved = EmbodimentTag.resolve(tag)
    return resolved, resolved.value


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here; use device='cpu'")
    return device


class Gr00tPolicy(BasePolicy):
    """A GR00T N1.7 checkpoint (local folder or hub id) serving one embodiment.

    `Gr00tPolicy(model_path, embodiment_tag, device="cuda", strict=True, dtype=None)`; keywords in any order.
    """

    supports_batching = True

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
    ) -> None:
        super().__init__(strict=strict)
        if isinstance(model_path, EmbodimentTag):  # positional (embodiment_tag, model_path) like the reference
            model_path, embodiment_tag = embodiment_tag, model_path
        if model_path is None or embodiment_tag is None:
            raise ValueError("Gr00tPolicy needs both model_path and embodiment_tag")
        self.checkpoint_dir = resolve_checkpoint_dir(model_path, subfolder=subfolder)
        processor_config = load_processor_config(self.checkpoint_dir)
        supported = processor_config.embodiment_tags
        tag_obj, tag_value = _resolve_tag(embodiment_tag, supported)
        if tag_value not in supported:
            raise ValueError(unsupported_tag_message(tag_obj, supported))
        self.embodiment_tag = tag_obj
        self.embodiment_tag_value = tag_value
        self.device = _resolve_device(device)

        self.processor = Gr00tN1d7Processor.from_pretrained(self.checkpoint_dir, local_files_only=local_files_only)
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
        self._check_model_matches_processor()

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
        horizon = self.modality_configs["action"].horizon
        if horizon > mc.action_horizon:
            raise ValueError(
                f"embodiment {self.embodiment_tag_value!r} has action horizon {horizon}, more than the model's "
                f"action_horizon {mc.action_horizon}"
            )
        token_id = self.processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
        if token_id != mc.image_token_id:
            raise ValueError(
                f"tokenizer maps {IMAGE_PAD_TOKEN} to id {token_id}, but config.json image_token_id is {mc.image_token_id}"
            )

    # --- BasePolicy -------------------------------------------------------------------------------

    def get_modality_config(self) -> Dict[str, ModalityConfig]:
        """{video, state, action, language} modality configs of the selected embodiment (no rl_info)."""
        return dict(self.modality_configs)

    def reset(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Stateless policy: nothing to reset."""
        return {}

    def _get_action(
        self, observation: Dict[str, Any], options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        batch_size = self._batch_size(observation)
        steps = []
        raw_states: Dict[str, List[np.ndarray]] = {k: [] for k in self.modality_configs["state"].modality_keys}
        for row in range(batch_size):
            video = {k: np.asarray(observation["video"][k][row]) for k in self.modality_configs["video"].modality_keys}
            state = {k: np.asarray(observation["state"][k][row]) for k in self.modality_configs["state"].modality_keys}
            for key, value in state.items():
                raw_states[key].append(value)
            language = observation["language"][self.language_key][row]
            text = language[0] if isinstance(language, (list, tuple)) else str(language)
            steps.append(self.processor.process_step(self.embodiment_tag_value, video, state, text))
        inputs = self.processor.collate(steps)
        noise, generator = self._initial_noise(options, batch_size)
        with torch.inference_mode():
            output = self.model.get_action(inputs, noise=noise, generator=generator)
        action_pred = output["action_pred"].float().cpu().numpy()
        batched_states = {k: np.stack(v) for k, v in raw_states.items()}
        action = self.processor.decode_action(action_pred, self.embodiment_tag_value, batched_states)
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in action.items()}, {}

    # --- helpers ----------------------------------------------------------------------------------

    def _batch_size(self, observation: Mapping[str, Any]) -> int:
        video_keys = self.modality_configs["video"].modality_keys
        if video_keys and video_keys[0] in observation.get("video", {}):
            return int(np.asarray(observation["video"][video_keys[0]]).shape[0])
        state_keys = self.modality_configs["state"].modality_keys
        return int(np.asarray(observation["state"][state_keys[0]]).shape[0])

    def _initial_noise(
        self, options: Optional[Mapping[str, Any]], batch_size: int
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Generator]]:
        """Initial flow noise from options (see module docstring); (None, None) means the global RNG."""
        options = {k: v for k, v in (options or {}).items() if not str(k).startswith("_")}
        unknown = sorted(set(options) - {"seed", "noise"})
        if unknown:
            logger.debug("Gr00tPolicy ignores unknown options %s", unknown)
        seed, noise = options.get("seed"), options.get("noise")
        if seed is not None and noise is not None:
            raise ValueError("options may contain 'seed' or 'noise', not both")
        shape = (self.model_config.action_horizon, self.model_config.max_action_dim)
        if noise is not None:
            array = np.asarray(noise)
            if array.ndim == 2:
                array = array[None]
            if array.dtype.kind != "f" or array.shape != (batch_size,) + shape:
                raise ValueError(
                    f"options['noise'] must be a float array of shape {(batch_size,) + shape} (B, action_horizon, "
                    f"max_action_dim); got dtype {array.dtype} shape {array.shape}"
                )
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), None
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"options['seed'] must be an int, got {seed!r}")
            rows = [
                torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed) + row), dtype=torch.float32)
                for row in range(batch_size)
            ]
            return torch.stack(rows), None
        return None, None
