"""The checks DatasetWriter.add_episode runs before any file of an episode is written: its groups, frames, step
columns and metadata against what the first episodes fixed, and its columns as the first episode's table types."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .meta import V3_BOOKKEEPING_COLUMNS, V3_BOOKKEEPING_PREFIXES
from .video import encoder_for, min_frame_side

_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class _EpisodeChecks:
    """DatasetWriter's checks of an episode (it sets the layout, `_schema` and the frame sizes a first episode fixes)."""

    def _first_schema_of(self, table: pa.Table, episode_index: int) -> pa.Table:
        """`table` in the first episode's column types (a float64 list where float32 came before), or ValueError
        naming the column and both types: a v3.0 file shared by episodes of two types could not be written at all
        (finalize() failed and every episode of the dataset was lost)."""
        if self._schema is None:
            self._schema = table.schema
            return table
        if table.schema == self._schema:
            return table
        for field in self._schema:
            got = table.schema.field(field.name).type
            if got != field.type:
                try:
                    cast = table.column(field.name).cast(field.type, safe=True)
                    _check_cast_loses_nothing(table.column(field.name), cast)
                    table = table.set_column(table.schema.get_field_index(field.name), field, cast)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                    raise ValueError(f"episode {episode_index}: column {field.name!r} holds {got}, and earlier episodes "
                                     f"{field.type}; give it the same type in every episode ({exc})") from None
        return table

    def _check_v3_metadata(self, metadata: Mapping[str, Any], episode_index: int) -> Dict[str, Any]:
        """ValueError naming the key when v3.0's episode list (one parquet table) cannot hold this episode's metadata
        beside the earlier episodes' (an int then a str, a list of mixed types, an empty map): it failed at
        finalize(), and every episode was lost. Returns each key's column type with this episode in; a value of the
        type the column already has is checked alone (all earlier values only when the type is new)."""
        types: Dict[str, Any] = {}
        for key, value in metadata.items():
            if value is None:
                continue
            try:
                column = pa.array([value])
                if self._metadata_types.get(key) != column.type:
                    column = pa.array([record.get(key) for record in self._episodes] + [value])
                    pq.write_table(pa.table({key: column}), pa.BufferOutputStream())
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ValueError(f"episode {episode_index}: metadata[{key!r}] = {value!r:.80} cannot be stored in a "
                                 f"v3.0 episode list beside the earlier episodes' values ({type(exc).__name__}: {exc}); "
                                 "give each key one type (not an empty map) in every episode") from None
            types[key] = column.type
        return types

    def _check_metadata_keys(self, metadata: Mapping[str, Any]) -> None:
        """ValueError naming a metadata key that is a column of LeRobot's episode list: the writer fills those itself
        (and in v3.0 the reader takes every `data/`, `videos/`, `meta/` and `stats/` column for its own)."""
        reserved = {"episode_index", "length", "tasks"}
        if reserved & set(metadata):
            raise ValueError(f"metadata keys {sorted(reserved & set(metadata))} are reserved by LeRobot")
        if self.layout != "v3.0":
            return
        for key in metadata:
            if key in V3_BOOKKEEPING_COLUMNS or str(key).startswith(V3_BOOKKEEPING_PREFIXES):
                raise ValueError(f"metadata key {key!r} is reserved by LeRobot v3.0: its episode list keeps "
                                 f"{sorted(V3_BOOKKEEPING_COLUMNS)} and the columns starting with "
                                 f"{', '.join(V3_BOOKKEEPING_PREFIXES)} for its own bookkeeping; rename the key")

    def _check_layout(self, frames, states, actions, step_columns, length: int) -> None:
        for kind, groups in (("states", states), ("actions", actions)):
            for key, value in groups.items():
                if value.shape[0] != length:
                    raise ValueError(f"{kind}['{key}'] has {value.shape[0]} steps; expected {length} like the first state group")
        for camera, value in frames.items():
            _check_camera_name(camera)
            if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
                raise ValueError(f"frames['{camera}'] must be uint8 (T, H, W, 3), got {getattr(value, 'dtype', type(value))} {getattr(value, 'shape', '')}")
            if value.shape[0] != length:
                raise ValueError(f"frames['{camera}'] has {value.shape[0]} frames; expected {length} (the episode length)")
            if value.shape[1] % 2 or value.shape[2] % 2:  # before any camera is encoded (v3.0 files are shared)
                raise ValueError(f"frames['{camera}'] has size {value.shape[1]}x{value.shape[2]}; the videos are "
                                 "yuv420p, whose height and width must be even")
            smallest = min_frame_side(self.video_codec)
            if min(value.shape[1:3]) < smallest:
                raise ValueError(f"frames['{camera}'] has size {value.shape[1]}x{value.shape[2]}; {self.video_codec} "
                                 f"videos ({encoder_for(self.video_codec)}) need a height and width of at least "
                                 f"{smallest} pixels")
            size = self._frame_sizes.setdefault(camera, value.shape[1:3])
            if value.shape[1:3] != size:
                raise ValueError(f"frames['{camera}'] has size {value.shape[1:3]}; earlier episodes had {size}")
        for name, value in step_columns.items():
            if (name in _INDEX_COLUMNS or name in ("observation.state", "action") or name.startswith("observation.images.")
                    or name == self.language_column):
                raise ValueError(f"step column {name!r} clashes with a LeRobot column")
            if np.asarray(value).shape[:1] != (length,):
                raise ValueError(f"step_columns['{name}'] must have {length} rows, got shape {np.asarray(value).shape}")
            if np.asarray(value).ndim > 2:
                raise ValueError(f"step_columns['{name}'] must be (T,) or (T, D), got shape {np.asarray(value).shape} "
                                 "(a parquet step cell holds a scalar or a flat list; flatten it)")
        shape = (list(frames), {k: v.shape[1] for k, v in states.items()}, {k: v.shape[1] for k, v in actions.items()}, sorted(step_columns))
        if self._cameras is None:
            self._cameras, self._state_dims, self._action_dims, self._step_columns = shape
            return
        expected = (self._cameras, self._state_dims, self._action_dims, self._step_columns)
        for label, got, want in zip(("cameras", "state dims", "action dims", "step columns"), shape, expected):
            if (sorted(got) if label == "cameras" else got) != (sorted(want) if label == "cameras" else want):
                raise ValueError(f"episode {len(self._episodes)}: {label} {got} differ from the first episode's {want}")


def _check_camera_name(camera: Any) -> None:
    """ValueError naming a camera that cannot be one folder name under videos/: its name is part of its videos' path
    (observation.images.<camera>), where '/' or '..' would lead outside the dataset."""
    name = str(camera)
    if not name:
        raise ValueError("camera name '' must not be empty")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"camera name {camera!r} must be one folder name: not '.' or '..', without '/' or '\\'")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ValueError(f"camera name {camera!r} holds a control character (a newline, a tab, NUL); use printable "
                         "characters")


def _check_task_text(task: str, episode_index: int) -> None:
    """ValueError naming the task when it holds a lone surrogate (what os.fsdecode makes of a non-UTF-8 byte): no
    UTF-8 file can hold it, so v3.0's finalize() failed (every episode lost) and a v2.1 dataset could not be read."""
    try:
        task.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"episode {episode_index}: task {task!r:.200} holds a lone surrogate at position {exc.start} "
                         "(no UTF-8 text); expected text that UTF-8 can hold (decode the bytes it came from as "
                         "UTF-8)") from None


def _float_groups(groups: Mapping[str, np.ndarray], kind: str) -> Dict[str, np.ndarray]:
    if not groups:
        raise ValueError(f"{kind} must name at least one group")
    out = {}
    for key, value in groups.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{kind}['{key}'] must be numeric (T, D), got dtype {array.dtype}")
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(f"{kind}['{key}'] must have shape (T, D), got {array.shape}")
        if array.shape[1] == 0:  # modality.json cannot describe an empty slice: the reader refused the dataset
            raise ValueError(f"{kind}['{key}'] has shape {array.shape}, no values per step; a group needs D >= 1 "
                             "(leave out a group that has no values)")
        with np.errstate(over="ignore", invalid="ignore"):
            cast = array.astype(np.float32)
        bad = ~np.isfinite(cast).all(axis=1)
        if bad.any():  # NaN/inf, or finite float64 beyond float32 (1e39 became inf): stats.json turned to NaN
            step = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{kind}['{key}'] has a value float32 cannot hold finitely at step {step} "
                             f"({array[step].tolist()!r:.120}; {int(bad.sum())} step(s) in all); states and actions "
                             "are stored as float32 and must be finite numbers")
        out[key] = cast
    return out


def _check_cast_loses_nothing(original: Any, cast: Any) -> None:
    """ValueError when casting a later episode's column to the first episode's type changed a value: pyarrow's safe
    cast checks integer overflow and truncation, not float overflow (1e300 into float32 became inf) nor a cast to
    bool (ints and floats became True for any non-zero value). Float-to-float rounding to the column's precision is
    kept; every other cast must give back the original values when cast back."""
    before, after = original.combine_chunks(), cast.combine_chunks()
    while pa.types.is_list(before.type) or pa.types.is_large_list(before.type) or pa.types.is_fixed_size_list(before.type):
        before, after = before.flatten(), after.flatten()
    if pa.types.is_floating(before.type) and pa.types.is_floating(after.type):
        was = np.isfinite(before.to_numpy(zero_copy_only=False))
        now = np.isfinite(after.to_numpy(zero_copy_only=False))
        if (was & ~now).any():
            raise ValueError(f"{int((was & ~now).sum())} finite value(s) are out of {after.type}'s range")
        return
    back = after.cast(before.type, safe=False)
    same = pc.fill_null(pc.equal(back, before), True).to_numpy(zero_copy_only=False)
    if not same.all():
        kept = "True/False" if pa.types.is_boolean(after.type) else "what that type holds"
        raise ValueError(f"{int((~same).sum())} value(s) would change (a {after.type} column keeps only {kept})")


def _to_table(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """The episode's columns as a table: (T, D) as lists, (T,) and (T, 1) as scalars (LeRobot declares a one-value
    feature as shape [1] and reads it as a scalar: a list column of width 1 failed its whole dataset's load)."""
    arrays = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim == 2:
            arrays[name] = pa.array(list(values), type=pa.list_(pa.from_numpy_dtype(values.dtype)))
        elif values.dtype.kind in "OUS":
            arrays[name] = pa.array([str(v) for v in values], type=pa.string())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


def _json_metadata(metadata: Mapping[str, Any]) -> Dict[str, Any]:
    """Episode metadata as JSON values: numpy scalars and arrays become Python ones; ValueError naming the key for
    anything JSON cannot hold (an object, NaN or infinity)."""
    out: Dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be str, got {key!r}")
        if isinstance(value, (np.generic, np.ndarray)):
            value = value.tolist()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata[{key!r}] = {value!r} cannot be stored in the episode list ({exc}); pass "
                             "str, int, float (finite), bool, None, or lists and dicts of those") from None
        out[key] = value
    return out
