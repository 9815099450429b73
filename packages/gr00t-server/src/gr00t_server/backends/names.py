"""Backend names and the backend error, importable without torch (the CLI parser needs them)."""

EXPORT_MODES = ("dit_only", "action_head", "full_pipeline")
PRECISIONS = ("bf16", "fp16", "fp32")


class BackendError(ValueError):
    """An inference backend cannot start: not installed, or its files do not fit this model or GPU."""
