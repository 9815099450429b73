"""GR00T N1.7 observation/action processing (model.md §3) as explicit, testable steps."""

from .checkpoint_files import find_processor_dir
from .checkpoint_statistics import load_statistics, parse_statistics
from .config import ProcessorConfig, load_processor_config, parse_modality_configs, processor_config_from_kwargs
from .embodiment_ids import load_embodiment_ids, merge_embodiment_ids
from .image import (
    eval_image_transform,
    eval_image_transform_batch,
    eval_image_transform_torchvision_style,
    eval_image_transform_torchvision_style_batch,
    fractional_center_crop,
    letter_box_pad,
    resize_area,
    smallest_max_size,
)
from .normalization import (
    KeyNormParams,
    mean_std_normalize,
    mean_std_unnormalize,
    minmax_normalize,
    minmax_unnormalize,
    sin_cos_encode,
)
from .processor import Gr00tN1d7Processor, ProcessedStep
from .text import build_conversation, expand_image_tokens, formalize_language, render_prompt
from .tokenizer import TokenizerNotFoundError, load_backbone_text_assets, load_tokenizer, resolve_tokenizer_dir
from .vision_patches import VisionPatchConfig, num_image_tokens, patchify_batch, patchify_image, patchify_images, smart_resize

__all__ = [
    "Gr00tN1d7Processor",
    "KeyNormParams",
    "ProcessedStep",
    "ProcessorConfig",
    "TokenizerNotFoundError",
    "VisionPatchConfig",
    "build_conversation",
    "eval_image_transform",
    "eval_image_transform_batch",
    "eval_image_transform_torchvision_style",
    "eval_image_transform_torchvision_style_batch",
    "expand_image_tokens",
    "find_processor_dir",
    "formalize_language",
    "fractional_center_crop",
    "letter_box_pad",
    "load_backbone_text_assets",
    "load_embodiment_ids",
    "load_processor_config",
    "load_statistics",
    "load_tokenizer",
    "mean_std_normalize",
    "mean_std_unnormalize",
    "merge_embodiment_ids",
    "minmax_normalize",
    "minmax_unnormalize",
    "num_image_tokens",
    "parse_modality_configs",
    "parse_statistics",
    "patchify_batch",
    "patchify_image",
    "patchify_images",
    "processor_config_from_kwargs",
    "render_prompt",
    "resize_area",
    "resolve_tokenizer_dir",
    "sin_cos_encode",
    "smallest_max_size",
    "smart_resize",
]
