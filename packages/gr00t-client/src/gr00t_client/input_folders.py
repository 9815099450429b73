"""Folders a command reads (a LeRobot dataset, a model checkpoint), which a command emptying its output folder must
never delete: shared by gr00t-eval's --output-dir checks and gr00t-server's make-test-checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

DATASET_KIND = "a LeRobot dataset (meta/info.json)"


def dataset_kind(folder: Path) -> Optional[str]:
    """DATASET_KIND when `folder` is a LeRobot dataset (it holds meta/info.json), else None."""
    return DATASET_KIND if (folder / "meta" / "info.json").is_file() else None


def input_kind(folder: Path) -> Optional[str]:
    """What input `folder` is: a LeRobot dataset, a model checkpoint, or None."""
    if dataset_kind(folder) is not None:
        return DATASET_KIND
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors*")):
        return "a model checkpoint (config.json and safetensors weights)"
    return None


def input_around(path: Path, kind: Callable[[Path], Optional[str]] = input_kind) -> Optional[Tuple[str, str]]:
    """(where, what) for the first input (by `kind`) that `path` lies inside ("lies inside ANCESTOR,"), is ("is") or
    holds below its top, in hidden folders too ("holds, in SUB/,"), the tools' own `.gr00t*` folders aside; None when
    there is none."""
    for ancestor in path.resolve().parents:
        what = kind(ancestor)
        if what is not None:
            return f"lies inside {ancestor},", what
    for folder, subfolders, _files in os.walk(path, followlinks=False):
        what = kind(Path(folder))
        if what is not None:
            relative = Path(folder).relative_to(path)
            return ("is" if str(relative) == "." else f"holds, in {relative}/,"), what
        # hidden ones too: a dataset in .cache/ was emptied
        subfolders[:] = [name for name in subfolders if not name.startswith(".gr00t")]
    return None
