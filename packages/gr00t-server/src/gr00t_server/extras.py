"""Optional dependencies of gr00t-server, imported on first use with a one-line error that names the extra."""

from __future__ import annotations

from typing import Any


class MissingExtraError(ImportError):
    """An optional dependency is not installed (the message names the pip extra that provides it) or is installed but
    failed to import (the message names the cause)."""


def require_lerobot_dataset(purpose: str = "replay serving") -> Any:
    """The `LeRobotDataset` class of gr00t-eval, which `purpose` needs (`gr00t-server[replay]`)."""
    try:
        from gr00t_eval.dataset import LeRobotDataset
    except ImportError as exc:
        name = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if name is None or not (name == "gr00t_eval" or name.startswith("gr00t_eval.")):  # installing it cannot help
            raise MissingExtraError(f"{purpose} needs gr00t-eval's dataset reader: gr00t_eval.dataset is installed but "
                                    f"failed to import ({exc})") from exc
        raise MissingExtraError(f"{purpose} needs gr00t-eval's dataset reader ({exc}): {replay_install_advice()}") from exc
    return LeRobotDataset


def replay_install_advice() -> str:
    """How to add gr00t-server's [replay] extra (gr00t-eval of the same release) without naming a gr00t package to an
    index: the names are unclaimed on PyPI, so `pip install 'gr00t-server[replay]'` had pip look gr00t-eval up there
    (it failed, or could install a stranger's package)."""
    from . import __version__

    return (f"install gr00t-eval {__version__} (the [replay] extra) from its wheel, e.g. pip install "
            f"gr00t_eval-{__version__}-py3-none-any.whl, or from git as the README's Install section shows; a bare "
            "'gr00t-server[replay]' or 'gr00t-eval' makes pip take gr00t-eval from a public index")
