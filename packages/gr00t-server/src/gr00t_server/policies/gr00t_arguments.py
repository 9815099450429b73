"""Gr00tPolicy's constructor arguments resolved: the embodiment tag (with the reference's error text for one the
checkpoint lacks), the device, its True/False arguments, and whether a clip_outliers override changes how the
checkpoint acts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
import torch

from gr00t_client.cli_flags import home_expanded_path
from gr00t_client.embodiment import FINETUNE_ONLY_TAGS, POSTTRAIN_TAGS, EmbodimentTag, resolve_tag
from gr00t_server.model.config import CONFIG_NAME
from gr00t_server.processing.config import load_processor_config


def unsupported_tag_message(tag: Union[EmbodimentTag, str], supported: List[str]) -> str:
    """The reference's error text for a tag the checkpoint has no modality configs for (model.md §4.3), each supported
    tag with the --embodiment-tag to copy."""
    if isinstance(tag, EmbodimentTag):
        name, value = tag.name, tag.value
    else:
        name = value = str(tag)
    lines = [f"Embodiment tag '{name}' (value='{value}') is not supported by this checkpoint.\n\nSupported tags in this checkpoint:"]
    for supported_value in sorted(supported):
        enum_name = EmbodimentTag.reverse_lookup(supported_value)
        label = enum_name if enum_name != supported_value else f"{supported_value} (the checkpoint's own tag)"
        lines.append(f"  {label:30s} (--embodiment-tag {supported_value})")  # the checkpoint's spelling: matched first
    message = "\n".join(lines)
    if isinstance(tag, EmbodimentTag) and tag in POSTTRAIN_TAGS:
        message += (
            f"\n\nHint: '{name}' is a posttrain tag that requires a checkpoint finetuned for it, not the base model; "
            "serve such a checkpoint, or one of the tags above."
        )
    elif isinstance(tag, EmbodimentTag) and tag in FINETUNE_ONLY_TAGS:
        message += (
            f"\n\nHint: '{name}' is the tag of custom robots finetuned from the base model; this checkpoint was not "
            "finetuned under it, so serve it with one of the tags above."
        )
    return message


def tag_given_first(model_path: Any, embodiment_tag: Any, subfolder: Optional[str] = None) -> bool:
    """Whether the two came in the reference's positional order (embodiment_tag, model_path): an EmbodimentTag first,
    or a first text that is a built-in tag or one of the second's tags while the second (its `subfolder`, if given) is
    a checkpoint folder (holds config.json). A folder merely named like the tag (a hub id with a robot's data folder
    here) swaps nothing."""
    if isinstance(model_path, EmbodimentTag):
        return True
    if not isinstance(model_path, str) or not isinstance(embodiment_tag, (str, os.PathLike)):
        return False
    checkpoint = Path(home_expanded_path(embodiment_tag)) / (subfolder or "")
    if not (checkpoint / CONFIG_NAME).is_file():
        return False
    tags = _checkpoint_tags(checkpoint)
    try:
        resolve_tag(model_path, tags)
    except ValueError:
        # A tag the checkpoint spells in several cases is refused by resolve_tag, but it is a tag all the same: the
        # swap must happen for its refusal to be the one shown, not "neither an existing directory nor a hub id"
        return any(tag.casefold() == model_path.strip().casefold() for tag in tags)
    return True


def _checkpoint_tags(checkpoint: Path) -> List[str]:
    """The tags `checkpoint`'s processor config has; none when it cannot be read (loading it then says why)."""
    try:
        return load_processor_config(checkpoint).embodiment_tags
    except (OSError, ValueError):
        return []


def _resolve_device(device: Union[str, torch.device], name: str = "device") -> torch.device:
    """A CPU or CUDA device that exists here; ValueError naming the argument (`name`: device, preprocess_device), the
    device and what to use instead."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name} {str(device)!r} is not a torch device name; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} {str(device)!r} is not supported: GR00T policies run on 'cpu', 'cuda' or 'cuda:N'")
    if resolved.type == "cpu":  # torch takes 'cpu:N'; safetensors then fails to read the weights onto it
        if resolved.index not in (None, 0):
            raise ValueError(f"{name} {str(device)!r} is not supported: the CPU is one device, 'cpu'")
        return torch.device("cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} {str(device)!r} was asked for but CUDA is not available here; use {name} 'cpu' "
                             f"({flag} cpu on the command line)")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"{name} {str(device)!r} was asked for but this machine has {count} CUDA device(s) "
                             f"(cuda:0{'' if count == 1 else f' to cuda:{count - 1}'})")
    return resolved


def checked_flag(name: str, value: Any, none_allowed: bool = False) -> Optional[bool]:
    """A True/False argument (numpy's bools too) as a bool; ValueError naming it otherwise, since bool("false") and
    bool("no") are True."""
    if value is None and none_allowed:
        return None
    if not isinstance(value, (bool, np.bool_)):
        expected = "True, False or None" if none_allowed else "True or False"
        raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    return bool(value)


def _acting_clip_override(clip_outliers: Optional[bool], checkpoint_clips_states: bool) -> Optional[bool]:
    """The clip_outliers override when it makes the checkpoint act otherwise than its own setting (True always: it
    clips actions too; False when the checkpoint clips states), else None."""
    if clip_outliers is None or (not clip_outliers and not checkpoint_clips_states):
        return None
    return bool(clip_outliers)
