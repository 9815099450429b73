"""A random-weight GR00T N1.7 checkpoint in the released layout, for tests, demos and benchmarks.

Files: config.json, model.safetensors, processor_config.json, statistics.json, embodiment_id.json,
tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, added_tokens.json, special_tokens_map.json,
chat_template.jinja, preprocessor_config.json, and gr00t_test_checkpoint.json, which marks the folder as a test
checkpoint and lists these files, so that writing one again replaces exactly them. Any other non-empty folder (a
real checkpoint, say) is refused unless `overwrite=True` empties it; a LeRobot dataset (and the `dataset_path` read)
never is.
`Gr00tPolicy` loads it through the same code path as a user's checkpoint.

By default it holds the `new_embodiment` and `libero_sim` key sets. With `embodiment=` ("metaworld", "pusht", ...)
it holds one tag with the key set of that gr00t-eval env adapter, and with `dataset_path=` one tag with a recorded
LeRobot dataset's keys and statistics, so `serve --model-path` + `open-loop` + `rollout` run offline end to end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from gr00t_client.cli_flags import home_expanded_path
from gr00t_client.embodiment import EMBODIMENT_TAG_TO_PROJECTOR_INDEX
from gr00t_client.modality import ActionConfig, ModalityConfig

logger = logging.getLogger(__name__)

# (key, dim) per group; action configs as (rep, type, format, state_key).
_LIBERO_STATE = [("x", 1), ("y", 1), ("z", 1), ("roll", 1), ("pitch", 1), ("yaw", 1), ("gripper", 2)]
_LIBERO_ACTION = [("x", 1), ("y", 1), ("z", 1), ("roll", 1), ("pitch", 1), ("yaw", 1), ("gripper", 1)]

_SPECS: Dict[str, Dict[str, Any]] = {
    "libero_sim": {
        "video": ["image", "wrist_image"],
        "state": _LIBERO_STATE,
        "action": _LIBERO_ACTION,
        "action_configs": [("ABSOLUTE", "NON_EEF", "DEFAULT", None)] * len(_LIBERO_ACTION),
        "horizon": 16,
        "language": "annotation.human.action.task_description",
    },
    "new_embodiment": {
        "video": ["front"],
        "state": [("eef_9d", 9), ("gripper", 1), ("joints", 7)],
        "action": [("eef_9d", 9), ("gripper", 1), ("joints", 7)],
        "action_configs": [
            ("RELATIVE", "EEF", "XYZ_ROT6D", "eef_9d"),
            ("ABSOLUTE", "NON_EEF", "DEFAULT", None),
            ("RELATIVE", "NON_EEF", "DEFAULT", "joints"),
        ],
        "horizon": 16,
        "language": "annotation.human.task_description",
        "mean_std_state": ["joints"],
    },
}
_ABSOLUTE = ("ABSOLUTE", "NON_EEF", "DEFAULT", None)
_EVAL_LANGUAGE = "annotation.human.action.task_description"  # what gr00t-eval's adapters and recorder write

# The key sets of gr00t-eval's env adapters (gr00t_eval/rollout/adapters/), by --embodiment name; "ranges" pins a
# key's statistics to its physical range, so a random model's actions land where the env accepts them.
EMBODIMENT_SPECS: Dict[str, Dict[str, Any]] = {
    "metaworld": {
        "video": ["corner2"],
        "state": [("eef_pos", 3), ("gripper", 1), ("objects", 14), ("goal", 3)],
        "action": [("eef_delta", 3), ("gripper", 1)],
        "action_configs": [_ABSOLUTE] * 2,
        "horizon": 16,
        "language": _EVAL_LANGUAGE,
        "ranges": {"action": {"eef_delta": (-1.0, 1.0), "gripper": (-1.0, 1.0)}},
    },
    "pusht": {
        "video": ["image"],
        "state": [("agent_pos", 2)],
        "action": [("agent_pos", 2)],
        "action_configs": [_ABSOLUTE],
        "horizon": 16,
        "language": _EVAL_LANGUAGE,
        "ranges": {"state": {"agent_pos": (0.0, 512.0)}, "action": {"agent_pos": (0.0, 512.0)}},
    },
    "libero": _SPECS["libero_sim"],
    "new_embodiment": _SPECS["new_embodiment"],
}

_GENERIC_SPEC: Dict[str, Any] = {
    "video": ["image"],
    "state": [("state", 8)],
    "action": [("action", 7)],
    "action_configs": [("ABSOLUTE", "NON_EEF", "DEFAULT", None)],
    "horizon": 8,
    "language": "annotation.human.task_description",
}


def _spec(tag: str) -> Dict[str, Any]:
    return _SPECS.get(tag, _GENERIC_SPEC)


def spec_from_dataset(dataset_path: Union[str, Path], horizon: int = 16) -> Dict[str, Any]:
    """A key set with the dataset's cameras, state/action groups and first language key, and its statistics."""
    from .extras import require_lerobot_dataset

    dataset = require_lerobot_dataset("a test checkpoint made from a dataset")(dataset_path)
    from gr00t_eval.dataset.unfinished_recording import unfinished_recording_warning  # with the reader (extra)

    unfinished = unfinished_recording_warning(Path(dataset.root), dataset.num_episodes)
    if unfinished is not None:
        logger.warning("%s", unfinished)
    if not dataset.action_keys or not dataset.state_keys:
        raise ValueError(f"dataset {dataset_path} needs state and action groups in meta/modality.json for a checkpoint")
    stats = {
        kind: {key: {name: values.tolist() for name, values in dataset.group_stats(kind, key).items()} for key in keys}
        for kind, keys in (("state", dataset.state_keys), ("action", dataset.action_keys))
    }
    from .processing.checkpoint_statistics import parse_statistics
    from .processing.config import ProcessorConfig
    from .processing.norm_params import used_statistics

    spec = {
        "video": list(dataset.video_keys),
        "state": list(dataset.state_dims().items()),
        "action": list(dataset.action_dims().items()),
        "action_configs": [_ABSOLUTE] * len(dataset.action_keys),
        "horizon": horizon,
        "language": dataset.language_keys[0] if dataset.language_keys else _EVAL_LANGUAGE,
        "stats": stats,
    }
    # the checks serve makes, on the statistics the written config normalizes with (it warns of faults in the
    # others, as serve does): a checkpoint serve would refuse is not written
    kwargs = processor_kwargs_for(["dataset"], "", 0, 0, horizon, {"dataset": spec})
    config = ProcessorConfig(modality_configs={"dataset": modality_configs_for("dataset", spec)},
                             use_percentiles=kwargs["use_percentiles"],
                             use_relative_action=kwargs["use_relative_action"])
    stats_path = Path(dataset_path) / "meta" / "stats.json"
    try:
        parse_statistics({"dataset": stats}, used=used_statistics(config), source=str(stats_path))
    except ValueError as exc:
        raise ValueError(f"{stats_path}: {exc}; serve would refuse a checkpoint "
                         "made from these statistics") from None
    return spec


def _check_dataset_matches(embodiment: str, spec: Dict[str, Any], dataset_path: Union[str, Path]) -> None:
    expected = EMBODIMENT_SPECS[embodiment]
    for group in ("video", "state", "action"):
        want = [k if isinstance(k, str) else k[0] for k in expected[group]]
        got = [k if isinstance(k, str) else k[0] for k in spec[group]]
        if sorted(want) != sorted(got):
            raise ValueError(
                f"dataset {dataset_path} has {group} keys {got}, but embodiment {embodiment!r} uses {want}; "
                "record it with that env, or leave out --embodiment to take the dataset's keys"
            )


def modality_configs_for(tag: str, spec: Optional[Dict[str, Any]] = None) -> Dict[str, ModalityConfig]:
    """The modality configs a test checkpoint writes for `tag` (LIBERO-like, new_embodiment, or generic),
    or for an explicit key set `spec` (EMBODIMENT_SPECS, spec_from_dataset)."""
    spec = spec or _spec(tag)
    return {
        "video": ModalityConfig(delta_indices=[0], modality_keys=list(spec["video"])),
        "state": ModalityConfig(
            delta_indices=[0],
            modality_keys=[k for k, _ in spec["state"]],
            mean_std_embedding_keys=spec.get("mean_std_state"),
        ),
        "action": ModalityConfig(
            delta_indices=list(range(spec["horizon"])),
            modality_keys=[k for k, _ in spec["action"]],
            action_configs=[ActionConfig(rep=r, type=t, format=f, state_key=s) for r, t, f, s in spec["action_configs"]],
        ),
        "language": ModalityConfig(delta_indices=[0], modality_keys=[spec["language"]]),
    }


def _key_stats(rng: np.random.Generator, shape: Tuple[int, ...], spread: float = 1.0) -> Dict[str, List]:
    center = rng.uniform(-0.5, 0.5, size=shape)
    half = rng.uniform(0.2, 1.0, size=shape) * spread
    lo, hi = center - half, center + half
    return {
        "min": lo.tolist(),
        "max": hi.tolist(),
        "mean": center.tolist(),
        "std": (half / 2.0).tolist(),
        "q01": (lo + 0.05 * half).tolist(),
        "q99": (hi - 0.05 * half).tolist(),
    }


def _range_stats(lo: float, hi: float, dim: int) -> Dict[str, List]:
    def row(value: float) -> List[float]:
        return [float(value)] * dim

    return {"min": row(lo), "max": row(hi), "mean": row((lo + hi) / 2), "std": row((hi - lo) / 4), "q01": row(lo), "q99": row(hi)}


def statistics_for(tag: str, seed: int = 0, spec: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """statistics.json entry: per-dim state/action stats (a dataset's own, a key's physical range, or synthetic),
    per-step [T][D] relative stats for RELATIVE actions."""
    spec = spec or _spec(tag)
    if "stats" in spec:
        return {kind: dict(spec["stats"][kind]) for kind in ("state", "action")}
    rng = np.random.default_rng(seed)
    ranges = spec.get("ranges", {})
    out: Dict[str, Any] = {
        kind: {
            k: _range_stats(*ranges[kind][k], d) if k in ranges.get(kind, {}) else _key_stats(rng, (d,)) for k, d in spec[kind]
        }
        for kind in ("state", "action")
    }
    relative = {
        key: _key_stats(rng, (spec["horizon"], dim), spread=0.1)
        for (key, dim), (rep, *_rest) in zip(spec["action"], spec["action_configs"])
        if rep == "RELATIVE"
    }
    if relative:
        out["relative_action"] = relative
    return out


def _embodiment_ids(tags: Sequence[str]) -> Dict[str, int]:
    ids: Dict[str, int] = {}
    used = set(EMBODIMENT_TAG_TO_PROJECTOR_INDEX.values())
    free = (i for i in range(32) if i not in used)
    for tag in tags:
        ids[tag] = EMBODIMENT_TAG_TO_PROJECTOR_INDEX[tag] if tag in EMBODIMENT_TAG_TO_PROJECTOR_INDEX else next(free)
    return ids


def processor_kwargs_for(
    tags: Sequence[str],
    model_name: str,
    max_state_dim: int,
    max_action_dim: int,
    max_action_horizon: int,
    specs: Optional[Mapping[str, Dict[str, Any]]] = None,
    strict_action_padding_mask: bool = False,
) -> Dict[str, Any]:
    """processor_kwargs with the released checkpoints' values (model.md §1.4) and the tags' modality configs.

    `strict_action_padding_mask` is written only when true: the released upstream processor (626af89) has no
    such argument and refuses a processor_config.json that carries it.
    """
    specs = specs or {}
    kwargs: Dict[str, Any] = {
        "modality_configs": {
            tag: {m: c.to_json_dict() for m, c in modality_configs_for(tag, specs.get(tag)).items()} for tag in tags
        },
        "image_crop_size": [230, 230],
        "image_target_size": [256, 256],
        "use_albumentations": True,
        "random_rotation_angle": None,
        "color_jitter_params": None,
        "shortest_image_edge": 256,
        "crop_fraction": 0.95,
        "letter_box_transform": False,
        "model_name": model_name,
        "model_type": "qwen",
        "formalize_language": True,
        "max_state_dim": max_state_dim,
        "max_action_dim": max_action_dim,
        "max_action_horizon": max_action_horizon,
        "use_percentiles": True,
        "use_mean_std": False,
        "clip_outliers": True,
        "apply_sincos_state_encoding": False,
        "use_relative_action": True,
        "exclude_state": False,
        "state_dropout_prob": 0.0,
    }
    if strict_action_padding_mask:
        kwargs["strict_action_padding_mask"] = True
    return kwargs


def _killed_at_its_first_marker(out: Path, entries: List[Path]) -> bool:
    """Whether `out` holds what a run killed writing its first marker leaves: the marker's temporary, no marker, and
    nothing a test checkpoint is made of (the run had written none of its files; the others were there, kept, when it
    began, or a user's put there since, which a rerun keeps too). Removes the temporary then."""
    names = {entry.name for entry in entries}
    if MARKER_TEMPORARY not in names or TEST_CHECKPOINT_MARKER in names or names & TEST_CHECKPOINT_FILES:
        return False
    _remove(out / MARKER_TEMPORARY)
    return True


def _newest_marker(out: Path) -> Tuple[Path, Any]:
    """(file, content) of the marker of the test checkpoint in `out`: its temporary where that holds a whole marker
    (written after the marker and renamed over it: a kill before the rename left the newer content beside it, which
    says the file the marker names was finished), else the marker itself; its content None when unreadable."""
    temporary = out / MARKER_TEMPORARY
    content = _read_marker(temporary)
    if isinstance(content, dict):
        return temporary, content
    return out / TEST_CHECKPOINT_MARKER, _read_marker(out / TEST_CHECKPOINT_MARKER)


def _read_marker(path: Path) -> Any:
    """The JSON a test checkpoint's marker (or its temporary) holds; None when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_marker(marker: Path, data: Any) -> None:
    """Write the marker's `data` whole: beside it (MARKER_TEMPORARY), then renamed over it."""
    temporary = marker.with_name(MARKER_TEMPORARY)
    _write_json(temporary, data)
    os.replace(temporary, marker)


def _write_json(path: Path, data: Any) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # a full disk's write names no file


TEST_CHECKPOINT_MARKER = "gr00t_test_checkpoint.json"
# The marker's next content, written whole beside it and renamed over it: a kill -9 mid-write left an empty marker,
# and the rerun refused the run's own folder as holding no test checkpoint. Always this run's own, whatever its time.
MARKER_TEMPORARY = f".{TEST_CHECKPOINT_MARKER}.tmp"
# Every file make_test_checkpoint writes beside its marker: the only names a run after an interrupted one removes.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "chat_template.jinja")  # build_test_tokenizer's, written in one step
# The files in the order a run writes them, a step's at once (_checkpoint_steps): a run killed while its marker named a
# step had written only the steps before it, and perhaps part of that one.
CHECKPOINT_STEPS = (("config.json",), ("model.safetensors",), TOKENIZER_FILES, ("preprocessor_config.json",),
                    ("processor_config.json",), ("statistics.json",), ("embodiment_id.json",))
TEST_CHECKPOINT_FILES = frozenset(name for step in CHECKPOINT_STEPS for name in step)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _refuse_what_overwrite_keeps(out: Path) -> None:
    """FileExistsError when `out`, a folder with content that is not a test checkpoint's, is, holds or lies inside a
    LeRobot dataset, or holds a gr00t-eval run still running: --overwrite would delete it, so neither that nor a
    refusal that suggests it (gr00t-eval's rule for --output-dir, gr00t_client.input_folders)."""
    from gr00t_client.input_folders import dataset_kind, input_around

    found = input_around(out, dataset_kind, also=_live_run_check(out))
    if found is not None:
        where, what = found
        raise FileExistsError(f"{out} {where} {what}; --overwrite never deletes one: name a new directory for the "
                              "test checkpoint")


def _live_run_check(out: Path) -> Optional[Callable[[Path, Sequence[str]], None]]:
    """gr00t-eval's check for a run still running in a folder of `out` (run_dir.refuse_live_runs_in), raising
    FileExistsError; None where gr00t-eval (the [replay] extra) is not installed, as no gr00t-eval run's claim can be
    judged without it."""
    try:
        from gr00t_eval.output_files import OutputDirError
        from gr00t_eval.run_dir import refuse_live_runs_in
    except ModuleNotFoundError as exc:
        if exc.name is None or not (exc.name == "gr00t_eval" or exc.name.startswith("gr00t_eval.")):
            raise
        return None

    def refuse(folder: Path, names: Sequence[str]) -> None:
        try:
            refuse_live_runs_in(folder, names)
        except OutputDirError as exc:
            raise FileExistsError(f"{out} holds the output of another run, which --overwrite would delete: {exc}; "
                                  "name a new directory for the test checkpoint") from None

    return refuse


def _refuse_output_in_dataset(out: Path, dataset_path: Union[str, Path]) -> None:
    """FileExistsError when `out` is, contains or lies inside `dataset_path`, the dataset the checkpoint is made from:
    its files would be replaced (or mixed with the checkpoint's), --overwrite or not."""
    output, dataset = out.resolve(), Path(home_expanded_path(dataset_path)).resolve()
    if output == dataset:
        relation = "is"
    elif output in dataset.parents:
        relation = "contains"
    elif dataset in output.parents:
        relation = "lies inside"
    else:
        return
    raise FileExistsError(f"the output folder {out} {relation} the --dataset-path (dataset_path) {dataset_path} that "
                          "the checkpoint is made from; writing there would replace or mix in with the dataset's files "
                          "(--overwrite never deletes it): name a new directory outside the dataset")


def _make_output_folder(out: Path) -> None:
    """Make the folder `out` (and its parents) unless it is there; refuse a file or a dangling link in its place."""
    from gr00t_client.cli_flags import broken_link_problem

    problem = broken_link_problem("output folder", out)
    if problem is not None:
        raise FileNotFoundError(problem)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive flock on the folder `out` (as keygen does) while the block runs; FileExistsError at once when
    another make-test-checkpoint holds it: its marker reads as an interrupted run's until it ends."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: written unlocked
        yield
        return
    try:
        descriptor = os.open(out, os.O_RDONLY)
    except OSError as exc:  # a folder this user may write but not list: written unlocked
        logger.debug("make-test-checkpoint: %s cannot be opened to lock it (%s); writing without the lock", out, exc)
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"another make-test-checkpoint is writing into {out}; wait for it to finish, or name "
                                  "another directory") from None
        except OSError as exc:  # a file system without locks (NFS without lockd, some FUSE mounts)
            logger.warning("make-test-checkpoint: %s cannot be locked (%s); a second run into it at once could remove "
                           "this one's files", out, exc.strerror or exc)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _files_a_killed_run_wrote(marker: Dict[str, Any]) -> frozenset:
    """The files an interrupted run may have written, by the step its marker names as `writing`: those of the steps
    before it and its own; none where it named none yet ([]: killed before its first file) or one no run writes; every
    test checkpoint file for the marker of an older make-test-checkpoint, which named no step. A user's checkpoint
    moved in since with its file times kept (mv, cp -a) was taken for the killed run's, and deleted."""
    if "writing" not in marker:
        return TEST_CHECKPOINT_FILES
    writing = marker["writing"]
    written: set = set()
    for step in CHECKPOINT_STEPS:
        written.update(step)
        if isinstance(writing, list) and writing and writing[0] in step:
            return frozenset(written)
    return frozenset()


def _interrupted_run_strays(marker_file: Path, entries: List[Path], kept: List[Any], written: frozenset) -> List[Path]:
    """The `entries` (beside those `kept`) that an interrupted run cannot have written: not among the files it may
    have `written` (_files_a_killed_run_wrote), or modified after its marker (written again before each file it wrote,
    naming it: only that one can be newer and its own; `marker_file` is the marker read, or its temporary); the
    others it removes."""
    marker_time = marker_file.stat().st_mtime_ns
    own = [entry for entry in entries if entry.name not in kept and entry.name != TEST_CHECKPOINT_MARKER]
    strays = [entry for entry in own if entry.name != MARKER_TEMPORARY
              and (entry.name not in written or entry.lstat().st_mtime_ns > marker_time)]
    if not strays:
        for entry in own:
            _remove(entry)
    return strays


def _interrupted_run_holds(strays: List[Path], writing: Any) -> str:
    """What the refusal says `out` holds beside an interrupted run's files: `strays`, where all are what its marker
    says it was `writing` (the only files of its own a kill -9 leaves newer than the marker), those by name."""
    holds = "holds the files of an interrupted make-test-checkpoint run and "
    if isinstance(writing, list) and all(stray.name in writing for stray in strays):
        names = ", ".join(stray.name for stray in strays)
        return (f"{holds}{names}, the file{'s' if len(strays) > 1 else ''} it was writing when it was killed, or put "
                "there since: this run cannot tell which")
    return (f"{holds}these, which are not its own or are newer than its last step (put there since, or the file it "
            "was writing when killed)")


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Make the folder `out`, held under _writer_lock, ready for a test checkpoint: empty; an earlier test checkpoint's
    files removed (an interrupted one's only where nothing else is there); any other content refused
    (FileExistsError) unless `overwrite`, which empties the folder; never a folder that is, holds or lies inside a
    LeRobot dataset."""
    entries = sorted(out.iterdir())
    if not entries:
        return
    if _killed_at_its_first_marker(out, entries):
        return
    holds = "holds no test checkpoint written by make-test-checkpoint"
    marker_file, marker = _newest_marker(out)
    if isinstance(marker, dict):
        files = marker.get("files")
        if marker.get("complete") and isinstance(files, list) and all(
                isinstance(f, str) and f and "/" not in f and "\\" not in f and f not in (".", "..") for f in files):
            # exactly what the earlier run wrote; other files stay
            for name in [*files, TEST_CHECKPOINT_MARKER, MARKER_TEMPORARY]:
                _remove(out / name)
            return
        kept = marker.get("kept")
        if marker.get("complete") is False and isinstance(kept, list):  # an interrupted earlier run
            strays = _interrupted_run_strays(marker_file, entries, kept, _files_a_killed_run_wrote(marker))
            if not strays:
                return
            entries = strays  # a user's files put there since, or the file a killed run was writing
            holds = _interrupted_run_holds(strays, marker.get("writing"))
    _refuse_what_overwrite_keeps(out)
    if not overwrite:
        shown = ", ".join(entry.name for entry in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"{out} is not empty ({shown}) and {holds}; writing one "
            "would replace its files with random weights. Name a new directory, or pass --overwrite "
            "(overwrite=True) to empty it first"
        )
    for entry in sorted(out.iterdir()):
        _remove(entry)


def make_test_checkpoint(
    out_dir: Union[str, Path],
    size: str = "tiny",
    embodiment_tags: Sequence[str] = ("new_embodiment", "libero_sim"),
    seed: int = 0,
    *,
    embodiment: Optional[str] = None,
    dataset_path: Optional[Union[str, Path]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a random-weight checkpoint (`size` "tiny" or "small") for `embodiment_tags`; return its folder.

    With `embodiment` (a name in EMBODIMENT_SPECS) and/or `dataset_path` (a recorded LeRobot dataset, whose keys and
    statistics are used), the checkpoint holds one tag, the first of `embodiment_tags`, with that key set.
    `seed` (0 to 2**32 - 1) seeds the weights. `out_dir` must be new, empty, or hold an earlier test checkpoint
    (whose files are replaced); anything else is refused with FileExistsError unless `overwrite` empties it.
    """
    # a blank one (os.environ.get("CKPT", "")) is the current folder to Path(): overwrite=True emptied it
    if not str(out_dir).strip():
        raise ValueError(f"make_test_checkpoint: out_dir is empty ({str(out_dir)!r}): an unset variable? Expected the "
                         "folder to write the checkpoint into (use '.' for the current one)")
    out = Path(home_expanded_path(out_dir))  # '~/ckpt' is in the home folder, where every reader looks for it
    # Path(os.environ.get("CKPT", "")) is Path('.'), past the blank check: only the str '.' means to empty this folder
    if overwrite and out_dir != "." and out.resolve() == Path.cwd().resolve():
        raise ValueError(f"make_test_checkpoint: out_dir {str(out_dir)!r} is the current folder and overwrite=True "
                         "would empty it: an unset variable? (a Path('') is '.'). Expected another folder; pass the "
                         "str '.' to mean the current one")
    if dataset_path is not None and not str(dataset_path).strip():
        raise ValueError(f"make_test_checkpoint: dataset_path is empty ({str(dataset_path)!r}): an unset variable? "
                         "Expected a recorded LeRobot dataset directory (use '.' for the current one, or None for "
                         "`embodiment`'s keys or the default key sets)")
    if dataset_path is not None:
        _refuse_output_in_dataset(out, dataset_path)
    if size not in ("tiny", "small"):
        raise ValueError(f"unknown test checkpoint size {size!r}; expected one of ['small', 'tiny']")
    if not 0 <= seed < 2**32:  # torch.manual_seed keeps 32 bits: seeds 2**32 apart would write the same weights
        raise ValueError(f"test checkpoint seed must be a whole number from 0 to 2**32 - 1, got {seed}")
    tags = [str(getattr(t, "value", t)) for t in embodiment_tags]
    if not tags:
        raise ValueError("make_test_checkpoint needs at least one embodiment tag")
    specs = _key_set_specs(tags[0], embodiment, dataset_path)  # before torch: a wrong name fails at once
    from gr00t_server.processing.tokenizer import refuse_non_utf8_path

    refuse_non_utf8_path(out, "the checkpoint folder")  # before any file: the tokenizer would be written half-way
    if specs:
        tags = tags[:1]

    from gr00t_server.model.presets import small_config, tiny_config

    config = {"tiny": tiny_config, "small": small_config}[size]()
    _make_output_folder(out)
    with _writer_lock(out):
        _prepare_output(out, overwrite)
        _write_checkpoint_files(out, config, tags, specs, size, seed)
    logger.info("wrote %s test checkpoint for %s to %s", size, tags, out)
    return out


def _write_checkpoint_files(out: Path, config: Any, tags: List[str], specs: Dict[str, Dict[str, Any]], size: str,
                            seed: int) -> None:
    """Write the checkpoint's files into the prepared folder `out`, its marker (complete: false) written again before
    each file, naming it: after a kill -9 only the file it names can be newer than it, so a later run tells the
    files of an interrupted one from those put there since."""
    import torch

    from gr00t_server.model.modeling import Gr00tN1d7

    marker = out / TEST_CHECKPOINT_MARKER
    kept = sorted(p.name for p in out.iterdir())  # files beside an earlier test checkpoint's: not ours to list
    # Written over once every file is there; until then it names what was here before, for a run after a Ctrl-C.
    _write_marker(marker, {"complete": False, "kept": kept, "writing": []})
    try:
        torch.manual_seed(seed)
        model = Gr00tN1d7(config)
        for names, write in _checkpoint_steps(out, model, tags, specs, seed):
            _write_marker(marker, {"complete": False, "kept": kept, "writing": list(names)})
            write()
    except BaseException:  # a Ctrl-C or a failed write: the half-written file is this run's, for the next to remove
        os.utime(marker)
        raise
    files = sorted(p.name for p in out.iterdir() if p.name != TEST_CHECKPOINT_MARKER and p.name not in kept)
    _write_marker(marker, {"complete": True, "size": size, "seed": seed, "tags": tags, "files": files})


def _checkpoint_steps(out: Path, model: Any, tags: List[str], specs: Dict[str, Dict[str, Any]],
                      seed: int) -> List[Tuple[Sequence[str], Callable[[], Any]]]:
    """A test checkpoint's files in the order they are written: (the names a step writes into `out`, the step)."""
    from gr00t_server.processing.test_assets import build_test_tokenizer
    from gr00t_server.processing.vision_patches import VisionPatchConfig

    config = model.config

    def processor_config() -> Dict[str, Any]:
        kwargs = processor_kwargs_for(
            tags, config.model_name, config.max_state_dim, config.max_action_dim, config.action_horizon, specs,
            strict_action_padding_mask=bool(getattr(config, "strict_action_padding_mask", False)),
        )
        return {"processor_class": "Gr00tN1d7Processor", "processor_kwargs": kwargs}

    json_files = {
        "preprocessor_config.json": lambda: VisionPatchConfig().to_dict(),
        "processor_config.json": processor_config,
        "statistics.json": lambda: {tag: statistics_for(tag, seed + i, specs.get(tag)) for i, tag in enumerate(tags)},
        "embodiment_id.json": lambda: _embodiment_ids(tags),
    }
    writes: Dict[str, Callable[[], Any]] = {
        "config.json": lambda: config.save(out),
        "model.safetensors": lambda: _save_weights(model, out),
        TOKENIZER_FILES[0]: lambda: build_test_tokenizer(out, special_token_ids=_special_token_ids(config)),
        **{name: _json_writer(out / name, data) for name, data in json_files.items()},
    }
    return [(step, writes[step[0]]) for step in CHECKPOINT_STEPS]  # in CHECKPOINT_STEPS' order, which a rerun reads


def _json_writer(path: Path, data: Callable[[], Any]) -> Callable[[], Any]:
    """The step that writes `data()` as JSON to `path`."""
    return lambda: _write_json(path, data())


def _save_weights(model: Any, out: Path) -> None:
    """The weights of `model` written into `out` (model.safetensors); a full disk as an OSError naming the folder."""
    from gr00t_server.model.checkpoint import save_weights

    try:
        save_weights(model, out)
    except Exception as exc:  # safetensors' own error type (no OSError) for a full disk: one line naming the folder
        if type(exc).__name__ != "SafetensorError":
            raise
        raise OSError(f"writing the weights into {out} failed: {exc}") from exc


def _special_token_ids(config: Any) -> Dict[str, int]:
    """The test tokenizer's special token ids: the defaults, with the ids `config` gives the image and video tokens."""
    from gr00t_server.processing.test_assets import DEFAULT_SPECIAL_TOKEN_IDS

    backbone = config.backbone_cfg or {}
    special_ids = dict(DEFAULT_SPECIAL_TOKEN_IDS)
    special_ids.update(
        {
            "<|image_pad|>": config.image_token_id,
            "<|video_pad|>": backbone.get("video_token_id", special_ids["<|video_pad|>"]),
            "<|vision_start|>": backbone.get("vision_start_token_id", special_ids["<|vision_start|>"]),
            "<|vision_end|>": backbone.get("vision_end_token_id", special_ids["<|vision_end|>"]),
        }
    )
    return special_ids


def _key_set_specs(tag: str, embodiment: Optional[str], dataset_path: Optional[Union[str, Path]]) -> Dict[str, Dict[str, Any]]:
    """{tag: key set} for an --embodiment / --dataset-path checkpoint; {} for the default key sets."""
    if embodiment is not None and embodiment not in EMBODIMENT_SPECS:
        raise ValueError(f"unknown embodiment {embodiment!r}; expected one of {sorted(EMBODIMENT_SPECS)}")
    if dataset_path is not None:
        spec = spec_from_dataset(dataset_path)
        if embodiment is not None:
            _check_dataset_matches(embodiment, spec, dataset_path)
        return {tag: spec}
    if embodiment is not None:
        return {tag: EMBODIMENT_SPECS[embodiment]}
    return {}


def example_observation(
    checkpoint_dir: Union[str, Path], embodiment_tag: str, batch_size: int = 1, seed: int = 0, image_size: Tuple[int, int] = (256, 256)
) -> Dict[str, Any]:
    """A random nested observation {video, state, language} matching a checkpoint's configs and statistics."""
    from gr00t_server.processing.checkpoint_statistics import load_statistics
    from gr00t_server.processing.config import load_processor_config
    from gr00t_server.processing.norm_params import used_statistics

    processor_config = load_processor_config(checkpoint_dir)
    configs: Mapping[str, ModalityConfig] = processor_config.modality_configs[embodiment_tag]
    # another tag's bad statistics aside, and those of keys serving this one does not use
    stats = load_statistics(checkpoint_dir, {}, used_statistics(processor_config))[embodiment_tag]["state"]
    ranges = {k: _sample_state_range(stats[k], processor_config.use_percentiles) for k in configs["state"].modality_keys}
    rng = np.random.default_rng(seed)
    h, w = image_size
    video_t, state_t = configs["video"].horizon, configs["state"].horizon
    return {
        "video": {
            k: rng.integers(0, 256, size=(batch_size, video_t, h, w, 3), dtype=np.uint8) for k in configs["video"].modality_keys
        },
        "state": {
            k: rng.uniform(low, high, size=(batch_size, state_t, len(low))).astype(np.float32)
            for k, (low, high) in ranges.items()
        },
        "language": {k: [["Pick up the bowl."] for _ in range(batch_size)] for k in configs["language"].modality_keys},
    }


def _sample_state_range(key_stats: Mapping[str, np.ndarray], use_percentiles: bool) -> Tuple[np.ndarray, np.ndarray]:
    """The range example states are drawn from: the one normalization uses (q01/q99 or min/max), else mean +- std."""
    low_name, high_name = ("q01", "q99") if use_percentiles else ("min", "max")
    if low_name in key_stats and high_name in key_stats:
        return key_stats[low_name], key_stats[high_name]
    return key_stats["mean"] - key_stats["std"], key_stats["mean"] + key_stats["std"]
