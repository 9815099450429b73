"""Open-loop plots: ground truth vs prediction per action dimension, inference points marked."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from .extras import require

DEFAULT_PLOT_SUFFIX = ".jpeg"


def plot_suffixes() -> List[str]:
    """The file suffixes matplotlib writes a figure to (.jpeg, .pdf, .png, ...), sorted."""
    require("matplotlib", "plots", "plotting open-loop results")
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


def is_plot_folder(path: str) -> bool:
    """Whether a plot path names a folder for the plots (an existing directory, or one written with a trailing '/')."""
    return path.endswith(("/", os.sep)) or Path(path).is_dir()


def check_plot_path(path: str, name: str = "plot_path") -> None:
    """ValueError naming the setting `name` unless `path` is a plot folder or a file name whose suffix matplotlib
    writes: without a suffix it wrote PATH.png while PATH was reported; an unknown one failed after a trajectory ran."""
    if is_plot_folder(path):
        return
    suffix = Path(path).suffix
    supported = plot_suffixes()
    if suffix.lower() in supported:
        return
    problem = "has no file suffix" if not suffix else f"has suffix {suffix!r}, which matplotlib cannot write"
    raise ValueError(f"{name} {path} {problem}; expected a file name ending in one of {', '.join(supported)}, "
                     f"or a directory (an existing one, or PATH/) for traj_{{id}}{DEFAULT_PLOT_SUFFIX} plots")


def plot_trajectory(
    path: Union[str, Path],
    traj_id: int,
    ground_truth: np.ndarray,
    prediction: np.ndarray,
    inference_steps: Sequence[int],
    state: Optional[np.ndarray] = None,
    state_keys: Sequence[str] = (),
    action_keys: Sequence[str] = (),
    dim_labels: Optional[Sequence[str]] = None,
) -> Path:
    """Save one figure (one subplot per action dim) for a trajectory; the reference layout, one file per id."""
    matplotlib = require("matplotlib", "plots", "plotting open-loop results")
    matplotlib.use("Agg", force=False)  # headless: never open a window
    import matplotlib.pyplot as plt

    gt = np.asarray(ground_truth)
    pred = np.asarray(prediction)
    n_dims = gt.shape[1]
    labels = list(dim_labels) if dim_labels is not None else [f"Action {i}" for i in range(n_dims)]
    fig, axes = plt.subplots(nrows=n_dims, ncols=1, figsize=(8, max(4 * n_dims, 4)), squeeze=False)
    title = f"Trajectory {traj_id} - State: {', '.join(state_keys)} | Action: {', '.join(action_keys)}"
    fig.suptitle(textwrap.fill(title, 60), fontsize=16, color="blue")  # wrapped: long key lists stay on the page
    steps = np.arange(gt.shape[0])
    marks = [k for k in inference_steps if 0 <= k < gt.shape[0]]
    for dim, ax in enumerate(axes[:, 0]):
        if state is not None and np.shape(state) == gt.shape:
            ax.plot(steps, state[:, dim], label="state joints")
        ax.plot(steps, gt[:, dim], label="gt action")
        ax.plot(steps, pred[:, dim], label="pred action", linestyle="--")
        for i, k in enumerate(marks):
            ax.plot(k, gt[k, dim], "ro", label="inference point" if i == 0 else None)
        ax.set_title(labels[dim])
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
