"""Backend names, the backend error and what a failed export left, importable without torch (the CLI parser needs
them, and an export interrupted while torch loads says what it left)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

EXPORT_METADATA = "export_metadata.json"
EXPORT_MODES = ("dit_only", "action_head", "full_pipeline")
PRECISIONS = ("bf16", "fp16", "fp32")


class BackendError(ValueError):
    """An inference backend cannot start: not installed, or its files do not fit this model or GPU."""


def left_as_it_was(folder: Path, own: Optional[list[str]]) -> str:
    """What a failed export says it left in `folder`: the earlier export (`own`: its files; None when the export
    stopped before reading them: whether `folder` holds export metadata), or nothing (none was)."""
    if own is None:
        own = [EXPORT_METADATA] if (folder / EXPORT_METADATA).exists() else []
    if own:
        return f"the earlier export in {folder} is unchanged"
    return f"nothing was written (there was no export in {folder} before)"
