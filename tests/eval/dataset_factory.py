"""Build small, fully known LeRobot datasets on disk for tests (real parquet files and real mp4s)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gr00t_eval.dataset import DatasetWriter

STATE_DIMS = {"arm": 3, "gripper": 1}
ACTION_DIMS = {"arm": 3, "gripper": 1}
CAMERAS = ("image", "wrist_image")
TASKS = ("pick the red cube", "open the drawer")


def frame_colour(episode: int, camera: int, step: int) -> np.ndarray:
    """The solid RGB colour of a frame: any two steps (< 64) differ by >= 28 in some channel."""
    return np.array(
        [16 + 28 * (step % 8), 16 + 28 * ((step // 8) % 8), 16 + 28 * ((episode * 2 + camera) % 8)], np.uint8
    )


def episode_frames(episode: int, camera: int, length: int, size=(32, 32)) -> np.ndarray:
    """uint8 (T, H, W, 3) solid-colour frames of one camera."""
    colours = np.stack([frame_colour(episode, camera, t) for t in range(length)])
    return np.broadcast_to(colours[:, None, None, :], (length, *size, 3)).copy()


def group_values(episode: int, length: int, dims: Mapping[str, int], offset: float) -> Dict[str, np.ndarray]:
    """Distinct float32 (T, D) values per group: episode*1000 + offset + step + dim/10 (+ group number)."""
    out, base = {}, 0
    for key, dim in dims.items():
        steps = np.arange(length, dtype=np.float32)[:, None]
        cols = (base + np.arange(dim, dtype=np.float32)[None, :]) / 10
        out[key] = (episode * 1000 + offset + steps + cols).astype(np.float32)
        base += dim
    return out


def expected_states(episode: int, length: int, dims: Mapping[str, int] = STATE_DIMS) -> Dict[str, np.ndarray]:
    return group_values(episode, length, dims, offset=0.0)


def expected_actions(episode: int, length: int, dims: Mapping[str, int] = ACTION_DIMS) -> Dict[str, np.ndarray]:
    return group_values(episode, length, dims, offset=500.0)


def add_known_episode(writer: DatasetWriter, episode: int, length: int = 3, task: str = "t",
                      cameras: Sequence[str] = ("cam",), size=(16, 16)) -> int:
    """Add episode `episode` of `length` steps with the known states, actions and frames (none when `cameras` is
    empty) to `writer`; its index."""
    frames = {cam: episode_frames(episode, c, length, size) for c, cam in enumerate(cameras)}
    return writer.add_episode(frames, expected_states(episode, length), expected_actions(episode, length), task)


def make_dataset(
    root: Path,
    *,
    lengths: Sequence[int] = (6, 9, 4),
    cameras: Sequence[str] = CAMERAS,
    size=(32, 32),
    fps: int = 10,
    codec: str = "h264",
    layout: str = "v2.1",
    state_dims: Mapping[str, int] = STATE_DIMS,
    action_dims: Mapping[str, int] = ACTION_DIMS,
    episodes_per_file: Optional[int] = None,
    language_column: str = "task_index",
    gop: int = 4,
) -> Path:
    """Write a dataset whose every value is known: episode e has lengths[e] steps, task TASKS[e % 2], seed 100+e."""
    writer = DatasetWriter(
        root, fps, video_codec=codec, layout=layout, episodes_per_file=episodes_per_file,
        language_column=language_column, gop=gop,
    )
    with writer:
        for episode, length in enumerate(lengths):
            writer.add_episode(
                frames={cam: episode_frames(episode, c, length, size) for c, cam in enumerate(cameras)},
                states=expected_states(episode, length, state_dims),
                actions=expected_actions(episode, length, action_dims),
                task=TASKS[episode % len(TASKS)],
                step_columns={"next.reward": np.arange(length, dtype=np.float32) / 10},
                metadata={"seed": 100 + episode},
            )
    return Path(root)


def copy_with_actions_negated(root: Path, target: Path) -> Path:
    """A copy of dataset `root` at `target` whose recorded actions are negated (a broken sign convention): only its
    data files differ, every file under meta/ is the original's."""
    shutil.copytree(root, target)
    for path in sorted((Path(target) / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        column = table.schema.get_field_index("action")
        field = table.schema.field(column)
        negated = (-np.asarray(table.column("action").to_pylist(), np.float32)).tolist()
        pq.write_table(table.set_column(column, field, pa.array(negated, type=field.type)), path)
    return Path(target)


def slice_past_the_data(root: Path, shape: Any = "as written") -> None:
    """modality.json reads 'gripper' from [3:5] of the 4-wide 'action' column; info.json declares `shape` for it
    ("as written": [4], untouched; None: no shape at all)."""
    modality_path, info_path = root / "meta" / "modality.json", root / "meta" / "info.json"
    modality = json.loads(modality_path.read_text())
    modality["action"]["gripper"] = {"start": 3, "end": 5}
    modality_path.write_text(json.dumps(modality))
    if shape == "as written":
        return
    info = json.loads(info_path.read_text())
    info["features"]["action"].pop("names", None)
    if shape is None:
        del info["features"]["action"]["shape"]
    else:
        info["features"]["action"]["shape"] = shape
    info_path.write_text(json.dumps(info))
