"""GR00T N1.7 observation/action processing (model.md §3) as explicit, testable steps.

The public names are loaded on first use (PEP 562). Imported here, they closed an import cycle across threads: this
package imported processor and its modules, while another thread's import of one of those modules first needs this
package; a first import from several threads at once failed ("cannot import name 'Gr00tN1d7Processor' from partially
initialized module", KeyError 'gr00t_server.processing').
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Dict, List

# Public name -> the module (relative to this package) that defines it.
_EXPORTS: Dict[str, str] = {
    "find_processor_dir": "checkpoint_files",
    "load_statistics": "checkpoint_statistics", "parse_statistics": "checkpoint_statistics",
    "ProcessorConfig": "config", "load_processor_config": "config", "parse_modality_configs": "config",
    "processor_config_from_kwargs": "config",
    "load_embodiment_ids": "embodiment_ids", "merge_embodiment_ids": "embodiment_ids",
    "eval_image_transform": "image", "eval_image_transform_batch": "image",
    "eval_image_transform_torchvision_style": "image", "eval_image_transform_torchvision_style_batch": "image",
    "fractional_center_crop": "image", "letter_box_pad": "image", "resize_area": "image", "smallest_max_size": "image",
    "KeyNormParams": "normalization", "mean_std_normalize": "normalization", "mean_std_unnormalize": "normalization",
    "minmax_normalize": "normalization", "minmax_unnormalize": "normalization", "sin_cos_encode": "normalization",
    "Gr00tN1d7Processor": "processor", "ProcessedStep": "processor",
    "build_conversation": "text", "expand_image_tokens": "text", "formalize_language": "text", "render_prompt": "text",
    "TokenizerNotFoundError": "tokenizer", "load_backbone_text_assets": "tokenizer", "load_tokenizer": "tokenizer",
    "resolve_tokenizer_dir": "tokenizer",
    "VisionPatchConfig": "vision_patches", "num_image_tokens": "vision_patches", "patchify_batch": "vision_patches",
    "patchify_image": "vision_patches", "patchify_images": "vision_patches", "smart_resize": "vision_patches",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .checkpoint_files import find_processor_dir as find_processor_dir
    from .checkpoint_statistics import (load_statistics as load_statistics, parse_statistics as parse_statistics)
    from .config import (ProcessorConfig as ProcessorConfig, load_processor_config as load_processor_config,
                         parse_modality_configs as parse_modality_configs,
                         processor_config_from_kwargs as processor_config_from_kwargs)
    from .embodiment_ids import (load_embodiment_ids as load_embodiment_ids,
                                 merge_embodiment_ids as merge_embodiment_ids)
    from .image import (eval_image_transform as eval_image_transform,
                        eval_image_transform_batch as eval_image_transform_batch,
                        eval_image_transform_torchvision_style as eval_image_transform_torchvision_style,
                        eval_image_transform_torchvision_style_batch as eval_image_transform_torchvision_style_batch,
                        fractional_center_crop as fractional_center_crop, letter_box_pad as letter_box_pad,
                        resize_area as resize_area, smallest_max_size as smallest_max_size)
    from .normalization import (KeyNormParams as KeyNormParams, mean_std_normalize as mean_std_normalize,
                                mean_std_unnormalize as mean_std_unnormalize, minmax_normalize as minmax_normalize,
                                minmax_unnormalize as minmax_unnormalize, sin_cos_encode as sin_cos_encode)
    from .processor import (Gr00tN1d7Processor as Gr00tN1d7Processor, ProcessedStep as ProcessedStep)
    from .text import (build_conversation as build_conversation, expand_image_tokens as expand_image_tokens,
                       formalize_language as formalize_language, render_prompt as render_prompt)
    from .tokenizer import (TokenizerNotFoundError as TokenizerNotFoundError,
                            load_backbone_text_assets as load_backbone_text_assets, load_tokenizer as load_tokenizer,
                            resolve_tokenizer_dir as resolve_tokenizer_dir)
    from .vision_patches import (VisionPatchConfig as VisionPatchConfig, num_image_tokens as num_image_tokens,
                                 patchify_batch as patchify_batch, patchify_image as patchify_image,
                                 patchify_images as patchify_images, smart_resize as smart_resize)


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first access (see the module docstring); a submodule by its name
    (`processing.image`), as the eager imports made every one an attribute."""
    module = _EXPORTS.get(name)
    if module is None:
        if name in _submodules():
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def _submodules() -> List[str]:
    """The package's public submodules (`image`, `processor`, ...)."""
    return [module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")]


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_submodules()))
