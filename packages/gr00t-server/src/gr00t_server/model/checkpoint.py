"""Checkpoint IO: resolve a local directory or hub id, load safetensors strictly, save (optionally sharded)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from gr00t_client.cli_flags import home_expanded_path
from gr00t_server.checkpoint_json import read_checkpoint_json
from gr00t_server.file_identity import FileIdentity, file_identities, first_changed
from gr00t_server.git_lfs import git_lfs_pointer_problem
from gr00t_server.model.config import CONFIG_NAME, Gr00tN1d7Config
from gr00t_server.model.modeling import Gr00tN1d7, resolve_dtype
from gr00t_server.model.weights_file import WeightsFile, WeightsFileChangedError

logger = logging.getLogger(__name__)

SINGLE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Files a policy needs from a checkpoint directory (model.md §1.1).
CHECKPOINT_FILES = (
    CONFIG_NAME, SINGLE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, "model-*.safetensors",
    "processor_config.json", "statistics.json", "embodiment_id.json",
    # A training output's processor files sit in processor/ (find_processor_dir reads them there; a hub checkpoint
    # laid out so downloaded its weights and then failed for want of them).
    "processor/processor_config.json", "processor/statistics.json", "processor/embodiment_id.json",
)
# The tokenizer, chat template and image-processor files a checkpoint may carry, in its folder or processor/
# (processing.tokenizer.BACKBONE_FILE_PATTERNS, which resolve_tokenizer_dir prefers to the backbone's): by hub id
# without them the backbone's tokenizer was used, another prompt than the same folder's.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "additional_chat_templates/*.jinja",
)
CHECKPOINT_FILES += _TOKENIZER_FILES + tuple(f"processor/{name}" for name in _TOKENIZER_FILES)
# Keys that may be absent from, or extra in, a checkpoint without failing a strict load (model.md §2.9, §9).
IGNORABLE_KEYS = frozenset({
    "backbone.model.lm_head.weight",
    "backbone.model.model.language_model.norm.weight",
    "action_head.mask_token",
})
# Ignorable keys our own checkpoints leave out: lm_head is tied to embed_tokens.
_KEYS_NOT_SAVED = frozenset({"backbone.model.lm_head.weight"})
# The HF Trainer's state in a checkpoint-N (rng_state*.pth aside): not model weights.
_TRAINER_STATE_FILES = frozenset({
    "optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json",
})
_CHECKPOINT_STEP = re.compile(r"checkpoint-(\d+)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/[\w.\-]+)*$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, fetched or read."""


class CheckpointKeyError(CheckpointError):
    """The checkpoint's tensors do not match the model's state_dict (names or shapes)."""


# ----- locating a checkpoint -----

def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def split_hub_id(hub_id: str) -> tuple[str, Optional[str]]:
    """`owner/name/sub/folder` -> (`owner/name`, `sub/folder`); `owner/name` -> (`owner/name`, None)."""
    parts = hub_id.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"{hub_id!r} is not a hub id of the form owner/name[/subfolder]")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def _download(repo_id: str, subfolder: Optional[str], revision: Optional[str], local_files_only: bool = False) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    prefix = f"{subfolder}/" if subfolder else ""
    name = f"{repo_id!r}" + (f" (sub-folder {subfolder!r})" if subfolder else "")
    offline = _hub_offline() or local_files_only
    try:
        root = snapshot_download(
            repo_id,
            repo_type="model",
            revision=revision,
            allow_patterns=[prefix + pattern for pattern in CHECKPOINT_FILES],
            local_files_only=offline,
            etag_timeout=10,
        )
    except LocalEntryNotFoundError as exc:
        why = ("local_files_only is set" if local_files_only else "HF_HUB_OFFLINE is set" if offline else
               "the hub could not be reached")
        raise CheckpointError(
            f"checkpoint {name} is not a local directory, is not in the local hub cache, and {why}; "
            f"download it first or pass a local directory ({type(exc).__name__})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"hub repository {repo_id!r} does not exist or is not accessible") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"could not download checkpoint {name}: {type(exc).__name__}: {exc}") from exc
    return Path(root) / subfolder if subfolder else Path(root)


def resolve_checkpoint_dir(
    model_dir_or_hub_id: Union[str, Path], subfolder: Optional[str] = None, revision: Optional[str] = None,
    local_files_only: bool = False,
) -> Path:
    """Local directory holding config.json + weights; hub ids (optionally with a sub-folder) are downloaded (only
    looked up in the local hub cache with `local_files_only`, or with $HF_HUB_OFFLINE set)."""
    local = Path(home_expanded_path(model_dir_or_hub_id))
    if local.exists():
        directory = local / subfolder if subfolder else local
    else:
        text = str(model_dir_or_hub_id)
        if not _HUB_ID.match(text):
            raise CheckpointError(f"{text!r} is neither an existing directory nor a hub id (owner/name[/subfolder])")
        _refuse_missing_local_folder(local, text)
        repo_id, id_subfolder = split_hub_id(text)
        parts = [p for p in (id_subfolder, subfolder) if p]
        directory = _download(repo_id, "/".join(parts) or None, revision, local_files_only)
    if directory.is_file():
        raise CheckpointError(f"{directory} is a file; give the checkpoint folder that holds {CONFIG_NAME} and the weights")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if (directory / CONFIG_NAME).is_dir():
        raise CheckpointError(f"{directory / CONFIG_NAME} is a directory; expected the model's JSON config file")
    if (directory / CONFIG_NAME).is_symlink() and not (directory / CONFIG_NAME).exists():
        raise CheckpointError(f"{directory / CONFIG_NAME} is a broken link to {os.readlink(directory / CONFIG_NAME)}; "
                              "download or copy the checkpoint again")
    if not (directory / CONFIG_NAME).is_file():
        hint = _checkpoint_subfolders_hint(directory) or _trainer_state_hint(directory)
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}{hint}")
    return directory


def checkpoint_file_identities(directory: Path) -> dict[Path, FileIdentity]:
    """The identity (file_identity) of each file of `directory` a load reads (CHECKPOINT_FILES), taken before it
    reads them, for refuse_changed_files after."""
    paths = {path for pattern in CHECKPOINT_FILES for path in directory.glob(pattern) if path.is_file()}
    return file_identities(sorted(paths))


def refuse_changed_files(identities: dict[Path, FileIdentity], given: Union[str, Path]) -> None:
    """CheckpointError naming the first file of `identities` replaced or rewritten since (a newer checkpoint copied
    into the folder `given` while it loaded): the loaded files may come from two checkpoints."""
    changed = first_changed(identities)
    if changed is not None:
        raise CheckpointError(f"{changed} changed while the server loaded {given} (a newer checkpoint copied into "
                              "it?): the loaded files may come from two checkpoints; start again once it is written")


def _refuse_missing_local_folder(local: Path, text: str) -> None:
    """A relative path whose first folder is here (outputs/checkpoint-100 for outputs/checkpoint-1000) is a local path
    mistyped, not a hub id: sent to the Hub, it came back only as a hub repository that does not exist."""
    if local.is_absolute() or not Path(local.parts[0]).is_dir():
        return
    parent = local.parent
    while not parent.is_dir():
        parent = parent.parent
    steps = _by_step(path.name for path in parent.glob("checkpoint-*") if path.is_dir())
    there = f"; {parent} holds {steps}" if steps else ""
    raise CheckpointError(f"no local folder {text!r} ({local.absolute()}){there}; {local.parts[0]}/ is a folder "
                          f"here, so this is not looked up as a hub id (to fetch the hub id {text!r}, run from another "
                          "folder)")


def _checkpoint_subfolders_hint(directory: Path) -> str:
    """Names the immediate sub-folders that hold a config.json: a repository of several checkpoints (hf download
    --local-dir of one) keeps each in its own folder."""
    found = _by_step(path.parent.name for path in directory.glob(f"*/{CONFIG_NAME}") if path.is_file())
    if not found:
        return _hub_cache_hint(directory)
    latest = [name for name in found if _CHECKPOINT_STEP.fullmatch(name)]  # a training run's output folder
    example = f"e.g. {directory / latest[-1]} (the latest step)" if latest else f"e.g. {directory / found[0]}"
    return f"; its sub-folders {found} hold one: give the checkpoint folder itself, {example}"


def _by_step(names: Iterable[str]) -> list[str]:
    """Folder names sorted, checkpoint-N by the step N (checkpoint-500 before checkpoint-1000) after the others."""
    def key(name: str) -> tuple[int, int, str]:
        step = _CHECKPOINT_STEP.fullmatch(name)
        return (1, int(step.group(1)), name) if step else (0, 0, name)

    return sorted(names, key=key)


def _hub_cache_hint(directory: Path) -> str:
    """Points a hub-cache repository folder (models--owner--name) at its snapshots/<revision>/, which holds the files
    (the revision refs/main names first), and at its hub id."""
    snapshots = sorted(path.parent for path in directory.glob(f"snapshots/*/{CONFIG_NAME}") if path.is_file())
    if not snapshots:
        return ""
    main = directory / "refs" / "main"
    revision = main.read_text(encoding="utf-8").strip() if main.is_file() else ""
    snapshot = next((path for path in snapshots if path.name == revision), snapshots[0])
    parts = directory.name.split("--")
    hub_id = f" or the hub id {parts[1]}/{parts[2]}" if len(parts) == 3 and parts[0] == "models" else ""
    return (f"; it is a hub cache repository folder, whose checkpoint is in snapshots/<revision>/: give "
            f"{snapshot}{hub_id}")


# ----- reading weights -----

def shard_index(directory: Path) -> Optional[dict[str, str]]:
    """The checked weight_map {tensor name: shard file} of the checkpoint's shard index; None without an index, or
    when a single model.safetensors is there too (which transformers, and so the reference, loads instead)."""
    index_path = directory / WEIGHTS_INDEX_NAME
    if not index_path.is_file():
        return None
    if (directory / SINGLE_WEIGHTS_NAME).is_file():  # transformers loads the single file first: the same weights
        logger.warning("%s holds both %s and %s; loading %s, as transformers does (remove the stale one)", directory,
                       SINGLE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, SINGLE_WEIGHTS_NAME)
        return None
    try:
        index = read_checkpoint_json(index_path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no 'weight_map' object {{tensor name: shard file}}")
    bad = [(key, name) for key, name in weight_map.items() if not isinstance(name, str) or not name]
    if bad:
        raise CheckpointError(f"{index_path}: weight_map[{bad[0][0]!r}] is {json.dumps(bad[0][1])}; expected a shard file name")
    outside = [name for name in weight_map.values() if Path(name).name != name]
    if outside:
        raise CheckpointError(f"{index_path}: weight_map names {outside[0]!r}; shards must be files in the checkpoint folder")
    return weight_map


def weight_files(directory: Path, weight_map: Optional[dict[str, str]]) -> list[Path]:
    """Safetensors files of a checkpoint: the shards its index's `weight_map` (shard_index) names, or the single file."""
    if weight_map is not None:
        files = [directory / name for name in sorted(set(weight_map.values()))]
    elif (directory / SINGLE_WEIGHTS_NAME).exists():
        files = [directory / SINGLE_WEIGHTS_NAME]
    elif (directory / SINGLE_WEIGHTS_NAME).is_symlink():  # an interrupted copy of a hub cache, say
        raise CheckpointError(_broken_link(directory / SINGLE_WEIGHTS_NAME) + "; copy the weights again")
    else:
        raise CheckpointError(f"{directory} has neither {WEIGHTS_INDEX_NAME} nor {SINGLE_WEIGHTS_NAME}"
                              f"{_no_weights_hint(directory)}")
    folders = [path for path in files if path.is_dir()]
    if folders:  # a half-finished copy or download can leave a folder where the weights belong
        raise CheckpointError(f"{folders[0]} is a directory; expected a safetensors file")
    broken = [path for path in files if path.is_symlink() and not path.exists()]
    if broken:  # a hub-cache snapshot links each shard to its blob once that is downloaded
        raise CheckpointError(_broken_link(broken[0]) + "; download or copy it again")
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise CheckpointError(f"weight shards listed in {WEIGHTS_INDEX_NAME} are missing: {missing}; download or copy "
                              "them again")
    return files


def _broken_link(path: Path) -> str:
    """`path` is a broken link to its target, and the target's unfinished download where the hub cache has one."""
    target = os.readlink(path)
    unfinished = Path(os.path.normpath(path.parent / target)).with_name(Path(target).name + ".incomplete")
    running = (f" (its download {unfinished} is unfinished: still running, or interrupted)" if unfinished.is_file()
               else "")
    return f"{path} is a broken link to {target}{running}"


def _no_weights_hint(directory: Path) -> str:
    """Why a folder has no weights file: a hub download still running or interrupted, shards copied without their
    index (a copy cut short), or weights in a format not read."""
    unfinished = _unfinished_hub_downloads(directory)
    if unfinished:
        more = f" (and {len(unfinished) - 1} more)" if len(unfinished) > 1 else ""
        return (f"; {unfinished[0]}{more} in its hub cache is a download still running, or interrupted (a file is "
                "linked into the snapshot once its download is complete): wait for it to finish, or download it again")
    shards = sorted(path.name for path in directory.glob("model-*.safetensors"))
    if shards:
        return (f"; its {len(shards)} shard file(s) ({', '.join(shards[:3])}) have no {WEIGHTS_INDEX_NAME} to say "
                "which tensor is in which (a copy cut short?): download or copy the checkpoint again")
    names = sorted(path.name for path in directory.iterdir())
    others = [name for name in names if name.endswith((".bin", ".pt", ".pth")) and not _is_trainer_state(name)]
    if others:
        return f" ({', '.join(others[:3])} there: only safetensors weights are read; convert them)"
    return _trainer_state_hint(directory)


def _trainer_state_hint(directory: Path) -> str:
    """Names a checkpoint-N holding the trainer's state but not the model's files (its save cut short, or running)."""
    trainer_state = sorted(path.name for path in directory.iterdir() if _is_trainer_state(path.name))
    if not trainer_state:
        return ""
    return (f"; it looks like a trainer checkpoint ({', '.join(trainer_state[:3])} there are the trainer's state, "
            "not model weights) with its weights missing or still being written: wait for the save to finish, or "
            "give another checkpoint")


def _is_trainer_state(name: str) -> bool:
    """The HF Trainer's optimizer, scheduler, RNG and argument files in a checkpoint-N (model.md §1.1), not weights."""
    return name in _TRAINER_STATE_FILES or (name.startswith("rng_state") and name.endswith(".pth"))


def _unfinished_hub_downloads(directory: Path) -> list[Path]:
    """The blobs/<hash>.incomplete files of the hub-cache repository whose snapshots/<revision>/ holds `directory`:
    huggingface_hub links a file into the snapshot only once its blob is complete."""
    for folder in (directory, *directory.parents):
        if folder.parent.name == "snapshots":
            return sorted((folder.parent.parent / "blobs").glob("*.incomplete"))
    return []


def read_state_dict(
    files: list[Path], device: Union[str, torch.device], dtype: torch.dtype, weight_map: Optional[dict[str, str]] = None
) -> dict[str, torch.Tensor]:
    """Read every tensor of `files` onto `device`, casting floating tensors to `dtype`. A tensor in two files, or
    (with the index's `weight_map`) in another shard than the index names, is a CheckpointError: one copy would
    silently win; so is a floating tensor holding NaN or inf."""
    device = torch.device(device)
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for path in files:
        try:  # safetensors says "No such file or directory" for a file it may not read: say what is wrong
            with open(path, "rb"):
                pass
        except PermissionError:
            info = path.stat()
            raise CheckpointError(f"{path}: permission denied (mode {info.st_mode & 0o777:o}, owner uid {info.st_uid}); "
                                  "make the weights readable by the user serving them (chmod a+r)") from None
        try:
            with WeightsFile(path) as handle:
                for key in handle.keys():
                    if key in source:
                        raise CheckpointError(f"tensor {key!r} is in both {source[key]} and {path.name}; a checkpoint "
                                              "holds each tensor once")
                    listed = (weight_map or {}).get(key)
                    if listed is not None and listed != path.name:
                        raise CheckpointError(f"{path.name} holds tensor {key!r}, which {WEIGHTS_INDEX_NAME} places in "
                                              f"{listed}")
                    source[key] = path.name
                    state[key] = _read_tensor(handle, path, key, dtype, device)
                handle.check_unchanged()
        except WeightsFileChangedError as exc:
            raise CheckpointError(str(exc)) from None
        except SafetensorError as exc:
            pointer = git_lfs_pointer_problem(path)
            if pointer:
                raise CheckpointError(pointer) from None
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise CheckpointError(f"{path} is not a valid safetensors file ({reason}); the file is truncated or damaged, "
                                  "download or copy it again") from None
    return state


def _read_tensor(handle: WeightsFile, path: Path, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Tensor `key` of the open file `path` on `device`, checked finite and cast to `dtype` when floating; torch failing
    to allocate it (its CPU allocator's RuntimeError, CUDA's OutOfMemoryError) is a MemoryError naming the file, tensor
    and size."""
    tensor = None
    try:
        tensor = handle.get_tensor(key).to(device)  # a tensor of its own: no copy where it is read onto the CPU
        # Before the cast: a NaN or inf weight (a diverged fine-tune) else surfaced at warm-up naming no tensor.
        # float8 (an FP8 export) has no isfinite: checked as float32, which holds its NaN exactly
        checked = tensor.float() if tensor.is_floating_point() and tensor.element_size() == 1 else tensor
        if tensor.is_floating_point() and not bool(torch.isfinite(checked).all()):
            bad = int((~torch.isfinite(checked)).sum())
            raise CheckpointError(f"{path}: tensor {key!r} holds {bad} non-finite value(s) (NaN or inf) of "
                                  f"{tensor.numel()}; expected finite weights (a diverged training run? take an earlier "
                                  "checkpoint)")
        if not tensor.is_floating_point():
            return tensor
        cast = tensor.to(dtype=dtype)
        _refuse_overflow_of_cast(path, key, tensor, cast)
        return cast
    except RuntimeError as exc:
        if isinstance(exc, CheckpointError) or not _allocation_failed(exc):
            raise
        shape = handle.shape(key)
        target = tensor.dtype if tensor is not None and not tensor.is_floating_point() else dtype
        nbytes = target.itemsize
        for length in shape:
            nbytes *= length
        size = f"{nbytes / 2**20:.0f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"
        # One line: the CLI reports a MemoryError as out of memory, with what to check in that command's flags
        raise MemoryError(f"{path}: tensor {key!r} {list(shape)} ({size} as {target}) could not be allocated on "
                          f"{device}") from exc


def _refuse_overflow_of_cast(path: Path, key: str, tensor: torch.Tensor, cast: torch.Tensor) -> None:
    """CheckpointError naming the file, tensor, its largest |value| and the served dtype when the finite `tensor`, of a
    wider range than that dtype (float64 as float32 or bf16, float32 as float16), became inf in `cast`: it loaded, and
    every call then blamed float16 or a backend for the model's non-finite output."""
    if torch.finfo(tensor.dtype).max <= torch.finfo(cast.dtype).max or bool(torch.isfinite(cast).all()):
        return
    largest = float(tensor.abs().max())
    fits_fp32 = cast.dtype != torch.float32 and largest <= torch.finfo(torch.float32).max
    remedy = ("serve it in fp32 (--dtype fp32)" if fits_fp32
              else "a weight this large is likely damaged (a diverged training run? take an earlier checkpoint)")
    raise CheckpointError(f"{path}: tensor {key!r} holds |values| up to {largest:.3g}, beyond the range of "
                          f"{cast.dtype}, the dtype it is served in (+-{torch.finfo(cast.dtype).max:.4g}); {remedy}")


def _allocation_failed(exc: RuntimeError) -> bool:
    """Whether torch failed to allocate memory: CUDA's (or another accelerator's) OutOfMemoryError, or a RuntimeError
    from the CPU allocator or a mapping of the weights file (ENOMEM)."""
    text = str(exc)
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "DefaultCPUAllocator" in text
            or "Cannot allocate memory" in text)


@contextlib.contextmanager
def _allocation_failure_named(what: str) -> Iterator[None]:
    """torch failing to allocate memory in the block (see `_allocation_failed`) as a MemoryError saying that `what`
    could not allocate the size torch asked for."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, CheckpointError) or not _allocation_failed(exc):
            raise
        asked = re.search(r"allocate (\d+) bytes", str(exc))
        size = f" {int(asked.group(1)) / 2**20:.0f} MiB" if asked else ""
        raise MemoryError(f"{what} could not allocate{size} on the CPU") from exc


def check_state_dict(model: nn.Module, state: dict[str, Any], directory: Optional[Path] = None,
                     weight_map: Optional[dict[str, str]] = None) -> None:
    """Raise `CheckpointKeyError` naming missing/unexpected keys, shape mismatches and integer or bool tensors where
    the model has floating ones (ignorable keys aside); for missing keys, the checkpoint `directory`'s weights file or
    shard index, and shards in it that the index (`weight_map`) does not list."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state) - IGNORABLE_KEYS)
    unexpected = sorted(set(state) - set(expected) - IGNORABLE_KEYS)
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {expected[key]}"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != expected[key]
    ]
    model_state = model.state_dict()
    wrong_kind = [  # an int or bool tensor where the model has floats: torch failed deep in the first forward
        f"{key}: checkpoint {state[key].dtype} vs model {model_state[key].dtype}"
        for key in sorted(set(expected) & set(state))
        if model_state[key].is_floating_point() and not state[key].is_floating_point()
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}{_weights_read(directory, weight_map)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_first(mismatched)}")
    if wrong_kind:
        problems.append(f"{len(wrong_kind)} tensor(s) not floating point: {_first(wrong_kind)}")
    if problems:
        raise CheckpointKeyError("checkpoint does not match the model config: " + "; ".join(problems))


def _weights_read(directory: Optional[Path], weight_map: Optional[dict[str, str]]) -> str:
    """Where missing keys were looked for; a shard beside the index that it does not list (a stale index) holds them,
    most likely, and is never read."""
    if directory is None:
        return ""
    if weight_map is None:
        return f" (read from {directory / SINGLE_WEIGHTS_NAME})"
    listed = set(weight_map.values())
    unlisted = sorted(path.name for path in directory.glob("*.safetensors")
                      if path.name not in listed and path.name != SINGLE_WEIGHTS_NAME)
    where = f" (read from the {len(listed)} shard(s) {directory / WEIGHTS_INDEX_NAME} lists)"
    if unlisted:
        where += (f"; {', '.join(unlisted)} in {directory} {'is' if len(unlisted) == 1 else 'are'} not listed in "
                  f"{WEIGHTS_INDEX_NAME} and so not read: the index is stale, write it again with every shard")
    return where


def _first(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# nn.Module.register_parameter is process-wide: the patch is installed while any thread loads, and only registrations
# made by a loading thread go to meta (a module another thread builds meanwhile keeps real parameters).
_ORIGINAL_REGISTER_PARAMETER = nn.Module.register_parameter
_meta_patch_lock = threading.Lock()
_meta_patch_users = 0
_loading = threading.local()


def _register_parameter(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
    _ORIGINAL_REGISTER_PARAMETER(module, name, param)
    if getattr(_loading, "depth", 0) and param is not None and param.device.type != "meta":
        module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


def _use_meta_patch(delta: int) -> None:
    global _meta_patch_users
    with _meta_patch_lock:
        _meta_patch_users += delta
        installed = nn.Module.register_parameter is _register_parameter
        if _meta_patch_users and not installed:
            nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]
        elif not _meta_patch_users and installed:
            nn.Module.register_parameter = _ORIGINAL_REGISTER_PARAMETER  # type: ignore[method-assign]


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Register the parameters this thread creates on the meta device (buffers stay real: some, such as rotary
    inverse frequencies, are computed at construction and not in the checkpoint), so building a model costs no
    memory. Safe to use from several threads at once."""
    _use_meta_patch(+1)
    _loading.depth = getattr(_loading, "depth", 0) + 1
    try:
        yield
    finally:
        _loading.depth -= 1
        _use_meta_patch(-1)


def _fill_ignorable_parameters(model: Gr00tN1d7) -> None:
    """Tie lm_head to embed_tokens and give an absent (unused) final norm unit weights."""
    qwen = model.backbone.model
    qwen.lm_head.weight = qwen.model.language_model.embed_tokens.weight
    norm = qwen.model.language_model.norm
    if norm.weight.device.type == "meta":
        embed = qwen.model.language_model.embed_tokens.weight
        norm.weight = nn.Parameter(torch.ones(norm.weight.shape, dtype=embed.dtype, device=embed.device))


def load_model(
    model_dir_or_hub_id: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Union[str, torch.dtype, None] = None,
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    read_files: Optional[dict[Path, FileIdentity]] = None,
) -> tuple[Gr00tN1d7, Gr00tN1d7Config]:
    """Load a GR00T N1.7 checkpoint strictly; returns the model in eval mode on `device` in `dtype`.

    `dtype=None` means bfloat16 on CUDA and float32 on CPU (see `resolve_dtype`). `read_files`: the checkpoint files'
    identities (checkpoint_file_identities), taken by a caller that reads more of them around the load and refuses
    changed files itself once it has read them all (Gr00tPolicy); None: taken here, and a file changed while the model
    loaded is refused here (CheckpointError).
    """
    given = resolve_checkpoint_dir(model_dir_or_hub_id, subfolder=subfolder, revision=revision)
    # Every file is read through the folder as it is now: a `latest` link re-pointed meanwhile mixed two checkpoints
    directory = given.resolve()
    identities = checkpoint_file_identities(directory) if read_files is None else None
    config = Gr00tN1d7Config.from_json_file(directory / CONFIG_NAME)
    torch_dtype = resolve_dtype(device, dtype)
    # Each parameter is allocated, then moved to meta: the largest (the embedding, 1.2 GB) must fit once
    with parameters_on_meta(), _allocation_failure_named(f"{directory / CONFIG_NAME}: building its model"):
        model = Gr00tN1d7(config)
    weight_map = shard_index(directory)
    state = read_state_dict(weight_files(directory, weight_map), device, torch_dtype, weight_map)
    check_state_dict(model, state, directory, weight_map)
    expected = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    _fill_ignorable_parameters(model)
    model.to(device=device, dtype=torch_dtype)
    model.requires_grad_(False)
    model.eval()
    if identities is not None:  # else the caller's check, once it has read the files it reads after the model
        refuse_changed_files(identities, given)
    logger.info("loaded GR00T N1.7 checkpoint %s on %s (%s)", given, device, torch_dtype)
    return model, config


# ----- writing weights -----

def parse_size(size: Union[int, str]) -> int:
    """`"50MB"`, `"2GB"`, `"500KiB"` or an int -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot parse shard size {size!r}; use e.g. '500MB' or an int number of bytes")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(match.group(1)) * units[(match.group(2) or "B").lower()])


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def _save_readable(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file, then the mode config.json got beside it (0666 under the umask): safetensors creates its file 0600,
    so a checkpoint made by one user could not be served by another."""
    save_file(state, str(path), metadata=metadata)
    os.chmod(path, (path.parent / CONFIG_NAME).stat().st_mode & 0o666)


def save_model(model: Gr00tN1d7, out_dir: Union[str, Path], max_shard_size: Union[int, str, None] = None) -> Path:
    """Write `config.json` and `model.safetensors` (or index + shards when `max_shard_size` is set)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save(out_dir)
    return save_weights(model, out_dir, max_shard_size)


def save_weights(model: Gr00tN1d7, out_dir: Union[str, Path], max_shard_size: Union[int, str, None] = None) -> Path:
    """Write save_model's weights alone into the folder `out_dir`: `model.safetensors`, or index + shards."""
    out_dir = Path(out_dir)
    state = {
        key: tensor.detach().to("cpu").contiguous()
        for key, tensor in model.state_dict().items()
        if key not in _KEYS_NOT_SAVED
    }
    metadata = {"format": "pt"}
    for stale in [out_dir / SINGLE_WEIGHTS_NAME, out_dir / WEIGHTS_INDEX_NAME, *out_dir.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    shards = [state] if max_shard_size is None else _shards(state, parse_size(max_shard_size))
    if len(shards) == 1 and max_shard_size is None:
        _save_readable(state, out_dir / SINGLE_WEIGHTS_NAME, metadata)
        return out_dir
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _save_readable(shard, out_dir / name, metadata)
        weight_map.update({key: name for key in shard})
    total_size = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out_dir
