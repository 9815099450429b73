"""Where a checkpoint's processor files live and how their JSON is read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from gr00t_server.checkpoint_json import read_checkpoint_json

PROCESSOR_CONFIG_NAME = "processor_config.json"
STATISTICS_NAME = "statistics.json"
EMBODIMENT_ID_NAME = "embodiment_id.json"
PROCESSOR_SUBFOLDER = "processor"

PathLike = Union[str, Path]


def _refuse_broken_link(path: Path) -> None:
    """FileNotFoundError naming the target of a link that points nowhere (an interrupted hub-cache download leaves
    them), which would otherwise read as a file that is not there."""
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{path} is a broken link to {os.readlink(path)}; download or copy the checkpoint again")


def find_processor_dir(checkpoint_dir: PathLike) -> Path:
    """The folder holding processor_config.json: the checkpoint root, else its `processor/` sub-folder."""
    root = Path(checkpoint_dir)
    for folder in (root, root / PROCESSOR_SUBFOLDER):
        _refuse_broken_link(folder / PROCESSOR_CONFIG_NAME)
        if (folder / PROCESSOR_CONFIG_NAME).is_dir():
            raise IsADirectoryError(f"{folder / PROCESSOR_CONFIG_NAME} is a directory; expected a JSON file")
    if (root / PROCESSOR_CONFIG_NAME).is_file():
        return root
    if (root / PROCESSOR_SUBFOLDER / PROCESSOR_CONFIG_NAME).is_file():
        return root / PROCESSOR_SUBFOLDER
    raise FileNotFoundError(
        f"No {PROCESSOR_CONFIG_NAME} in checkpoint {str(root)!r} (looked in the root and in "
        f"{PROCESSOR_SUBFOLDER}/); a GR00T N1.7 checkpoint needs processor_config.json and statistics.json"
        f"{_run_processor_hint(root)}"
    )


def _run_processor_hint(root: Path) -> str:
    """Points a training run's checkpoint-N (weights only) at the run's output folder's processor/, which the trainer
    copies into each checkpoint it saves."""
    run_processor = root.parent / PROCESSOR_SUBFOLDER
    if run_processor == root / PROCESSOR_SUBFOLDER or not (run_processor / PROCESSOR_CONFIG_NAME).is_file():
        return ""
    names = [name for name in (PROCESSOR_CONFIG_NAME, STATISTICS_NAME, EMBODIMENT_ID_NAME)
             if (run_processor / name).is_file()]
    return (f"; {run_processor} beside it holds the run's processor files: copy {', '.join(names)} into {root}, as the "
            "trainer does for each checkpoint it saves")


def _read_json(path: Path) -> Any:
    return read_checkpoint_json(path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
