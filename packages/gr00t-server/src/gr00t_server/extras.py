"""Optional dependencies of gr00t-server, imported on first use with a one-line error that names the extra."""

from __future__ import annotations

from typing import Any


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that provides it."""


def require_lerobot_dataset(purpose: str = "replay serving") -> Any:
    """The `LeRobotDataset` class of gr00t-eval, which `purpose` needs (`gr00t-server[replay]`)."""
    try:
        from gr00t_eval.dataset import LeRobotDataset
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs gr00t-eval's dataset reader ({exc}): pip install 'gr00t-server[replay]'"
        ) from exc
    return LeRobotDataset
