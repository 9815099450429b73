"""Open-loop plots: ground truth vs prediction per action dimension, inference points marked."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Collection, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from .extras import require
from .run_claim import NAME_MAX, partial_path
from .run_dir import remove_quietly

DEFAULT_PLOT_SUFFIX = ".jpeg"
# Panels per column of a figure; more action dims get more columns. One column of 170 panels was 68,000 pixels
# tall, past JPEG's 65,500 and Agg's 65,536.
MAX_PANEL_ROWS = 32
# File types matplotlib lists that it writes only with a program of another package: named apart in a refusal (it
# recommended .pgf, which a machine without xelatex then refused); a file of one of them is trial-written as any other.
NEEDS_EXTERNAL_TOOL = {".pgf": "a TeX installation (xelatex)"}
# Why a plot was not written over a file that is neither this run's nor accepted by check_plot_folder_free
_APPEARED = ("a file of that name appeared there during this run (a run sharing the plot folder wrote it, say); it is "
             "kept, and this run's plot was not written: expected a plot folder no other run writes to")


def plot_suffixes() -> List[str]:
    """The file suffixes matplotlib writes a figure to (.jpeg, .pdf, .png, ...), sorted."""
    require("matplotlib", "plots", "plotting open-loop results")
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


def is_plot_folder(path: str) -> bool:
    """Whether a plot path names a folder for the plots (an existing directory, or one written with a trailing '/')."""
    return path.endswith(("/", os.sep)) or Path(path).is_dir()


def check_plot_path(path: str, name: str = "plot_path", traj_ids: Sequence[int] = ()) -> None:
    """ValueError naming the setting `name` unless plots can be written at `path`: a plot folder, or a file name whose
    suffix matplotlib writes, and whose plot file of each of `traj_ids` is a name short enough, in a folder that exists
    or can be made, and is writable. Plots are drawn after each trajectory is scored: a path found unwritable then ended
    the run before the other trajectories."""
    folder = Path(path) if is_plot_folder(path) else Path(path).parent
    suffix = DEFAULT_PLOT_SUFFIX if is_plot_folder(path) else _file_suffix(path, name)
    if not is_plot_folder(path):
        _check_plot_name_lengths(path, traj_ids, name)
    _check_folder_writable(folder, path, name)
    _check_format_written(suffix, path, name)


def check_plot_folder_free(path: str, output_dir: Optional[str], name: str = "plot_path",
                           traj_ids: Sequence[int] = ()) -> FrozenSet[Tuple[int, int, int]]:
    """ValueError when the folder the plots of `path` go in holds another run's results.json, is claimed by a run
    still running, or holds a plot file of `traj_ids` already, unless it is `output_dir` (this run's own) or the plot
    file is one the results.json in `output_dir` names (the earlier run there, which --overwrite replaces): this run's
    plots would replace another run's (or any other file already there). An earlier plot of another run is removed by
    hand, or another plot path given. Returns the plot files accepted there (plot_identity): the only files outside
    `output_dir` the run's plots may replace (plot_trajectory's `replaceable`)."""
    from .output_files import OutputDirError
    from .results import RESULTS_FILENAME
    from .run_claim import refuse_live_claims

    folder = Path(path) if is_plot_folder(path) else Path(path).parent
    if output_dir is not None and folder.resolve() == Path(output_dir).resolve():
        return frozenset()
    try:
        refuse_live_claims(folder, name)
    except OutputDirError as exc:
        raise ValueError(f"{exc} (its plots there would be replaced by this run's)") from None
    if (folder / RESULTS_FILENAME).is_file():
        raise ValueError(f"{name} {path}: the plot folder {folder} holds another run's {RESULTS_FILENAME}, whose plots "
                         "this run's would replace; expected a folder no other run wrote (a new one, or this run's "
                         "--output-dir)")
    own = _plots_named_in(output_dir)  # the same command run again with --overwrite replaces its own plots
    accepted: Set[Tuple[int, int, int]] = set()
    for traj_id in traj_ids:
        plot = (folder / f"traj_{traj_id}{DEFAULT_PLOT_SUFFIX}" if is_plot_folder(path)
                else trajectory_plot_file(path, traj_id, len(traj_ids)))
        if plot.is_file() and plot.resolve() not in own:  # something else there fails only its plot, when drawn
            # Not said to be an earlier run's: the results.json that would name it is in that run's own output
            # folder, which this run cannot see (a file of the user's own is refused the same way).
            raise ValueError(f"{name} {path}: the plot of trajectory {traj_id} would replace {plot}, which is there "
                             "already (a file this run would replace); expected a plot path with no plot of these "
                             "trajectories (a new one, or this run's --output-dir): remove that file or give another "
                             "(--overwrite empties only --output-dir)")
        identity = plot_identity(plot) if plot.is_file() else None
        if identity is not None:
            accepted.add(identity)
    return frozenset(accepted)


def plot_identity(path: Path) -> Optional[Tuple[int, int, int]]:
    """The file at `path` as (device, inode, modification ns): another file put there since is another; None when
    there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns


def _plots_named_in(output_dir: Optional[str]) -> Set[Path]:
    """The plot files the open-loop results.json in `output_dir` names (resolved; relative ones, as runs before
    absolute paths wrote them, against the working directory); empty when there is none or it cannot be read."""
    from .results import RESULTS_FILENAME

    if output_dir is None:
        return set()
    try:
        results = json.loads((Path(output_dir) / RESULTS_FILENAME).read_text(encoding="utf-8"))
        entries = results.get("trajectories") or {}
        return {Path(entry["plot_path"]).resolve() for entry in entries.values()
                if isinstance(entry, dict) and isinstance(entry.get("plot_path"), str)}
    except (OSError, ValueError, AttributeError):
        return set()


def trajectory_plot_file(path: str, traj_id: int, n_trajectories: int) -> Path:
    """The plot of `traj_id` when the plot path names a file: that file for a single trajectory, else
    PATH_traj{id}.SUFFIX."""
    plot = Path(path)
    return plot if n_trajectories == 1 else plot.with_name(f"{plot.stem}_traj{traj_id}{plot.suffix}")


def _check_plot_name_lengths(path: str, traj_ids: Sequence[int], name: str) -> None:
    """ValueError naming the longest plot file name of `traj_ids` when it is longer than NAME_MAX bytes: its save
    failed once its trajectory was scored."""
    names = {traj_id: trajectory_plot_file(path, traj_id, len(traj_ids)).name for traj_id in traj_ids}
    longest = max(names, key=lambda traj_id: len(os.fsencode(names[traj_id])), default=None)
    if longest is not None and len(os.fsencode(names[longest])) > NAME_MAX:
        raise ValueError(f"{name} {path}: the plot of trajectory {longest} would be named {names[longest]} "
                         f"({len(os.fsencode(names[longest]))} bytes), longer than a file name may be ({NAME_MAX} "
                         "bytes); expected a shorter file name, or a directory (PATH/) for "
                         f"traj_{{id}}{DEFAULT_PLOT_SUFFIX} plots")


def _file_suffix(path: str, name: str) -> str:
    """The suffix of plot file `path`, one of plot_suffixes(): without one matplotlib wrote PATH.png while PATH was
    reported."""
    suffix = Path(path).suffix
    supported = plot_suffixes()
    if suffix.lower() in supported:
        return suffix.lower()
    problem = "has no file suffix" if not suffix else f"has suffix {suffix!r}, which matplotlib cannot write"
    plain = [each for each in supported if each not in NEEDS_EXTERNAL_TOOL]
    tools = "".join(f"; {each} needs {tool}" for each, tool in NEEDS_EXTERNAL_TOOL.items() if each in supported)
    raise ValueError(f"{name} {path} {problem}; expected a file name ending in one of {', '.join(plain)}, "
                     f"or a directory (an existing one, or PATH/) for traj_{{id}}{DEFAULT_PLOT_SUFFIX} plots{tools}")


def _check_folder_writable(folder: Path, path: str, name: str) -> None:
    """ValueError unless `folder`'s nearest existing ancestor (itself, when it exists) is a directory a file can be
    written in. Creates nothing there: a run refused later must not leave the folder behind."""
    existing = folder
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {path}: {existing} is a file, so the plot folder {folder} cannot be made there; "
                         "expected a path whose existing part is a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"{name} {path}: cannot write in {existing} ({exc.strerror or exc}); expected a folder "
                         "this user can write the plots in") from None


def _check_format_written(suffix: str, path: str, name: str) -> None:
    """ValueError unless matplotlib writes a small figure with text as `suffix` here: .pgf is among its file types
    and needs a TeX installation (xelatex), found missing only when the first plot was drawn."""
    require("matplotlib", "plots", "plotting open-loop results")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], label="trial")
    figure.suptitle("trial")
    try:
        figure.savefig(io.BytesIO(), format=suffix.lstrip("."))
    except Exception as exc:  # noqa: BLE001 - any failure to write the trial plot refuses the format
        raise ValueError(f"{name} {path}: matplotlib cannot write {suffix} plots on this machine "
                         f"({type(exc).__name__}: {exc}); expected a suffix it writes here, such as "
                         f"{DEFAULT_PLOT_SUFFIX} or .png") from None


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
    replaceable: Optional[Collection[Tuple[int, int, int]]] = None,
) -> Path:
    """Save one figure (one subplot per action dim) for a trajectory into `path`'s folder, which must be there; the
    reference layout, one file per id (more than MAX_PANEL_ROWS dims fill several columns of subplots).
    `replaceable`: the files (plot_identity) it may replace, None for any; another file there is kept:
    FileExistsError."""
    require("matplotlib", "plots", "plotting open-loop results")
    gt = np.asarray(ground_truth)
    pred = np.asarray(prediction)
    n_dims = gt.shape[1]
    labels = list(dim_labels) if dim_labels is not None else [f"Action {i}" for i in range(n_dims)]
    fig, panels = _panel_grid(n_dims)
    title = f"Trajectory {traj_id} - State: {', '.join(state_keys)} | Action: {', '.join(action_keys)}"
    fig.suptitle(textwrap.fill(title, 60), fontsize=16, color="blue",  # wrapped: long key lists stay on the page
                 parse_math=False)  # key names are drawn as written, never as mathtext
    steps = np.arange(gt.shape[0])
    marks = [k for k in inference_steps if 0 <= k < gt.shape[0]]
    for dim, ax in enumerate(panels):
        # a NaN column is an action dim with no state of its own key (open_loop.evaluate_trajectory): no line
        if state is not None and np.shape(state) == gt.shape and not np.isnan(state[:, dim]).all():
            ax.plot(steps, state[:, dim], label="state joints")
        ax.plot(steps, gt[:, dim], label="gt action")
        ax.plot(steps, pred[:, dim], label="pred action", linestyle="--")
        if marks:  # one artist for all the points: one per point took minutes at --execution-horizon 1
            ax.plot(marks, gt[marks, dim], "ro", label="inference point")
        ax.set_title(labels[dim], parse_math=False)
        ax.legend()
    fig.tight_layout()
    path = Path(path)  # its folder is the caller's to make: a run's output folder gone meanwhile is not made again
    _save_aside(fig, path, replaceable=replaceable)
    return path


def _save_aside(fig: Any, path: Path, replaceable: Optional[Collection[Tuple[int, int, int]]] = None) -> None:
    """Save `fig` as `path`, written aside and renamed (as episode videos are): a stop or a failure mid-save leaves no
    truncated plot under the name, an earlier plot there whole, and no temporary. A file there that is not
    `replaceable` (None: any is) is kept: FileExistsError (a run sharing the plot folder wrote it meanwhile)."""
    from matplotlib import rcParams

    partial = partial_path(path)
    file_format = path.suffix.lstrip(".").lower() or rcParams["savefig.format"]  # the temporary's .tmp names no format
    try:
        fig.savefig(partial, format=file_format)
        identity = plot_identity(path)
        if replaceable is None or (identity is not None and identity in replaceable) or path.is_dir():
            os.replace(partial, path)  # a folder in the way fails as it always did (IsADirectoryError)
            return
        try:
            os.link(partial, path)  # like O_EXCL: fails on a name that exists
        except FileExistsError:
            raise FileExistsError(_APPEARED) from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise FileExistsError(_APPEARED) from None
            os.replace(partial, path)
    finally:
        remove_quietly(partial)


def _panel_grid(n_dims: int) -> Tuple[Any, List[Any]]:
    """A figure of `n_dims` subplots, 8 x 4 inches each, in columns of at most MAX_PANEL_ROWS; the subplots in dim
    order (down each column, then the next). Drawn with Agg and without pyplot (as video.py's captions are): the
    host program's backend and its pyplot figures are left alone, and no window opens."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_cols = max(1, math.ceil(n_dims / MAX_PANEL_ROWS))
    n_rows = max(1, math.ceil(n_dims / n_cols))
    fig = Figure(figsize=(8 * n_cols, 4 * n_rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows=n_rows, ncols=n_cols, squeeze=False)
    panels = list(axes.flatten(order="F"))
    for unused in panels[n_dims:]:
        unused.set_visible(False)
    return fig, panels[:n_dims]
