"""What export, engine build and serving agree on: sub-module names, files, metadata and model identity."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from gr00t_client.input_folders import EXPORT_WORK_PREFIX
from torch import nn

WORK_PREFIX = EXPORT_WORK_PREFIX  # an export's hidden work folders in its output: <prefix><kind>-<pid>-<token>-<random>
ENGINE_METADATA = "engine_metadata.json"
# Dynamic axes that run along the prompt (chat template, vision tokens and the instruction).
PROMPT_AXES = ("seq_len", "vl_seq_len")
MODEL_VERSION = "n1d7"
OPSET_VERSION = 19
from gr00t_server.backends.names import (  # noqa: F401 (re-exported)
    EXPORT_METADATA,
    EXPORT_MODES,
    PRECISIONS,
    BackendError,
)
from gr00t_server.file_identity import FileIdentity, file_identity, first_changed

# Sub-modules in execution order (model.md §7.1); which ones each export mode covers.
SUBMODULES = ("vit", "llm", "vl_self_attention", "state_encoder", "action_encoder", "dit", "action_decoder")
MODE_SUBMODULES: dict[str, tuple[str, ...]] = {
    "dit_only": ("dit",),
    "action_head": ("vl_self_attention", "state_encoder", "action_encoder", "dit", "action_decoder"),
    "full_pipeline": SUBMODULES,
}

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISION_OF_DTYPE = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def onnx_file_name(submodule: str, precision: str) -> str:
    """File name used by the reference exporter (`dit_bf16.onnx`, `vit_fp32.onnx`, `state_encoder.onnx`)."""
    if submodule in ("vit", "llm", "dit"):
        return f"{submodule}_{precision}.onnx"
    return f"{submodule}.onnx"


def engine_file_name(onnx_name: str) -> str:
    """`dit_bf16.onnx` -> `dit_bf16.engine`."""
    return Path(onnx_name).stem + ".engine"


def config_sha256(config: Any) -> str:
    """Hash of the model's config.json content (architecture identity)."""
    text = config.to_json_string() if hasattr(config, "to_json_string") else json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@torch.no_grad()
def weights_fingerprint(model: nn.Module, samples_per_tensor: int = 256, loaded_in: Optional[torch.dtype] = None) -> str:
    """Hash of a strided sample of every parameter, rounded to bfloat16 (first to `loaded_in` when given: the
    fingerprint the same weights give loaded in that dtype).

    Rounding to bf16 makes the fingerprint the same whether the checkpoint was loaded in fp32 or bf16,
    while a different finetune of the same architecture changes it.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::stride][:samples_per_tensor].to(device="cpu", dtype=loaded_in or torch.bfloat16)
        sample = sample.to(torch.bfloat16)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def model_identity(model: nn.Module) -> dict[str, str]:
    """`{"config_sha256", "weights_fingerprint"}` recorded at export and checked at start-up."""
    return {"config_sha256": config_sha256(model.config), "weights_fingerprint": weights_fingerprint(model)}


def check_model_identity(recorded: dict[str, Any], model: nn.Module, source: Union[str, Path],
                         exported_precision: Optional[str] = None) -> None:
    """Raise BackendError when `source` was exported from another model or config. `exported_precision`: the dtype
    the exported model was loaded in; fp16 rounding alone changes the fingerprint, so a model in a wider dtype is
    compared as rounded to it, and the message advises that dtype only when the weights then match."""
    if not recorded:
        raise BackendError(f"{source} records no model identity; re-export it with `gr00t-server export`")
    current = model_identity(model)
    if recorded.get("config_sha256") != current["config_sha256"]:
        raise BackendError(
            f"{source} was exported from a model with another config "
            f"(config_sha256 {str(recorded.get('config_sha256'))[:12]} != {current['config_sha256'][:12]}); re-export it"
        )
    if recorded.get("weights_fingerprint") != current["weights_fingerprint"]:
        exported_dtype = TORCH_DTYPES.get(exported_precision or "")
        if exported_dtype is not None and exported_dtype != model.dtype and torch.float16 in (exported_dtype, model.dtype):
            serving = next((name for name, dtype in TORCH_DTYPES.items() if dtype == model.dtype), str(model.dtype))
            if model.dtype == torch.float16:  # its rounding cannot be undone: only a load in the export's dtype can tell
                raise BackendError(
                    f"{source} was exported from the model loaded in {exported_precision}, and this one runs in fp16, "
                    f"whose rounding alone changes the weights fingerprint, so whether the two are the same weights "
                    f"cannot be told; serve with --dtype {exported_precision}, or re-export with --precision fp16")
            # this model's weights rounded as a load in the export's precision rounds them: the advice only if they match
            if recorded.get("weights_fingerprint") == weights_fingerprint(model, loaded_in=exported_dtype):
                raise BackendError(
                    f"{source} was exported from the model loaded in {exported_precision}, and this one runs in "
                    f"{serving}: its weights rounded to {exported_precision} match the export's fingerprint, but the "
                    f"two compute in other precisions; serve with --dtype {exported_precision}, or re-export with "
                    f"--precision {serving}")
        raise BackendError(
            f"{source} was exported from other weights of the same architecture "
            f"(weights_fingerprint {str(recorded.get('weights_fingerprint'))[:12]} != "
            f"{current['weights_fingerprint'][:12]}); re-export it"
        )


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Load a metadata JSON object or raise BackendError naming the file."""
    if not path.is_file():
        raise BackendError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise BackendError(f"{path}: expected a JSON object, got {type(data).__name__}; re-export it")
    return data


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write indented, key-sorted JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_export_metadata(onnx_dir: Union[str, Path]) -> dict[str, Any]:
    """`export_metadata.json` of an export directory, its structure checked (BackendError naming file and key)."""
    path = Path(onnx_dir) / EXPORT_METADATA
    backups = sorted(Path(onnx_dir).glob(f"{WORK_PREFIX}previous-*")) if not path.is_file() else []
    if any((backup / EXPORT_METADATA).is_file() for backup in backups):
        raise BackendError(
            f"ONNX export metadata not found: {path}; an export into {onnx_dir} was killed in the middle of its swap, "
            f"and the earlier export's files are in {backups[0].name}: the next `gr00t-server export` into it puts them "
            "back first"
        )
    metadata = read_json(path, "ONNX export metadata")
    check_export_structure(metadata, path)
    return metadata


def _is_plain_name(name: Any) -> bool:
    """A file name inside the export folder: no directory part, no `..`, not absolute."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def check_export_structure(metadata: dict[str, Any], path: Union[str, Path]) -> None:
    """Raise BackendError when the metadata's keys have the wrong types or list files outside the folder."""

    def bad(key: str, expected: str) -> BackendError:
        return BackendError(f"{path}: {key} must be {expected}; re-export it with `gr00t-server export`")

    if not isinstance(metadata.get("model_identity", {}), dict):
        raise bad("model_identity", "an object")
    mode = metadata.get("export_mode")
    if mode not in MODE_SUBMODULES:
        raise bad("export_mode", f"one of {list(MODE_SUBMODULES)} (got {mode!r})")
    submodules = metadata.get("submodules")
    if not isinstance(submodules, dict):
        raise bad("submodules", "an object")
    unknown = sorted(set(submodules) - set(MODE_SUBMODULES[mode]))
    missing = [name for name in MODE_SUBMODULES[mode] if name not in submodules]
    if unknown or missing:
        what = f"unknown {unknown}" if unknown else f"missing {missing}"
        raise bad("submodules", f"exactly {list(MODE_SUBMODULES[mode])} for export_mode {mode!r} ({what})")
    for name, info in submodules.items():
        key = f"submodules.{name}"
        if not isinstance(info, dict):
            raise bad(key, "an object")
        if not _is_plain_name(info.get("file")):
            raise bad(f"{key}.file", f"a file name inside the export folder (got {info.get('file')!r})")
        if not isinstance(info.get("inputs", {}), dict) or not isinstance(info.get("outputs", {}), dict):
            raise bad(f"{key}.inputs/outputs", "objects")
        files = info.get("files")
        if files is None:
            continue
        if not isinstance(files, dict) or info["file"] not in files:
            raise bad(f"{key}.files", f"an object that lists {info['file']!r}")
        for file, digest in files.items():
            if not _is_plain_name(file):
                raise bad(f"{key}.files", f"file names inside the export folder (got {file!r})")
            if not (isinstance(digest, dict) and isinstance(digest.get("size"), int)
                    and isinstance(digest.get("sha256"), str)):
                raise bad(f"{key}.files.{file}", "{\"size\": int, \"sha256\": str}")


def export_files(metadata: dict[str, Any]) -> list[str]:
    """Every file an export wrote (ONNX graphs and their `.onnx.data`), as listed in its checked metadata."""
    names: list[str] = []
    for info in metadata["submodules"].values():
        names.extend(info["files"] if "files" in info else (info["file"], info["file"] + ".data"))
    return names


def file_digest(path: Path, chunk_bytes: int = 1 << 24) -> dict[str, Any]:
    """`{"size", "sha256"}` of a file: what export records and serving checks (a copied file keeps its mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def check_unchanged(identities: dict[Path, FileIdentity], onnx_dir: Union[str, Path]) -> None:
    """Raise BackendError when a file checked by check_export_files was replaced or changed since (an export into
    the folder while this server loaded it): the sessions may hold files of two exports."""
    changed = first_changed(identities)
    if changed is not None:
        raise BackendError(
            f"{changed} changed while the server loaded {onnx_dir} (another export into it?): the loaded files may "
            "come from two exports; start again once the export has finished"
        )


def check_export_files(onnx_dir: Union[str, Path], metadata: dict[str, Any]) -> dict[Path, FileIdentity]:
    """Raise BackendError naming the first file whose size or sha256 differs from the export's record; return each
    checked file's identity (file_identity, taken before its hash) for check_unchanged once the files are loaded.

    A folder mixing files of two exports (a partial copy, a file copied in by hand) would otherwise serve
    another checkpoint's weights without a word.
    """
    folder = Path(onnx_dir)
    identities: dict[Path, FileIdentity] = {folder / EXPORT_METADATA: file_identity(folder / EXPORT_METADATA)}
    for submodule, info in metadata["submodules"].items():
        if "files" not in info:
            raise BackendError(
                f"{folder / EXPORT_METADATA} records no file hashes (written by an older gr00t-server), so its files "
                f"cannot be checked; re-export it with `gr00t-server export`"
            )
        for name, recorded in info["files"].items():
            path = folder / name
            if not path.is_file():
                raise BackendError(f"{path} is listed in {EXPORT_METADATA} but missing")
            identities[path] = file_identity(path)
            if identities[path][2] != recorded["size"] or file_digest(path)["sha256"] != recorded["sha256"]:
                raise BackendError(
                    f"{path} is not the file this export wrote (size or sha256 differs from {EXPORT_METADATA}); "
                    f"it may come from another export: re-export into {folder}"
                )
        # ONNX Runtime reads a graph's external data whether the metadata lists it or not: unlisted, it went unchecked
        listed = {os.path.normpath(name)
                  for other in metadata["submodules"].values() for name in other.get("files", ())}
        unlisted = sorted(location for location in _external_data_locations(folder / info["file"])
                          if os.path.normpath(location) not in listed)
        if unlisted:
            raise BackendError(
                f"{folder / EXPORT_METADATA}: submodules.{submodule}.files does not list {unlisted[0]!r}, the external "
                f"data of {info['file']}, so its sha256 cannot be checked; expected every file of the graph listed: "
                "re-export it with `gr00t-server export`"
            )
    return identities


# A graph keeping its weights outside is small (names, shapes, offsets); one this large holds them inline, and parsing
# it would load them all again at every start (+763 MB for a 381 MB graph), to find no external data.
_PARSED_GRAPH_MAX_BYTES = 64 * 1024 * 1024


def _external_data_locations(graph: Path) -> set[str]:
    """The `location` of every tensor the graph keeps in external data (in subgraphs too), parsed without loading that
    data; none for a graph over _PARSED_GRAPH_MAX_BYTES (its weights are inline) or without the `onnx` package (the
    onnxruntime and tensorrt extras install it)."""
    try:
        import onnx
    except ImportError:
        return set()
    if graph.stat().st_size > _PARSED_GRAPH_MAX_BYTES:
        return set()
    model = onnx.load(str(graph), load_external_data=False)
    locations: set[str] = set()

    def visit(g: Any) -> None:
        tensors = [*g.initializer, *(sparse.values for sparse in g.sparse_initializer)]
        for node in g.node:
            for attribute in node.attribute:
                tensors.extend([attribute.t, *attribute.tensors])
                for sub in [attribute.g, *attribute.graphs]:
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(entry.value for entry in tensor.external_data if entry.key == "location")

    visit(model.graph)
    return locations


def model_of(policy: Any) -> nn.Module:
    """The Gr00tN1d7 network inside a policy, a policy wrapper (`.policy`), or the network itself."""
    if isinstance(policy, nn.Module) and hasattr(policy, "action_head"):
        return policy
    model = getattr(policy, "model", None)
    if isinstance(model, nn.Module) and hasattr(model, "action_head"):
        return model
    inner = getattr(policy, "policy", None)
    if inner is not None and inner is not policy:
        return model_of(inner)
    raise BackendError(f"{type(policy).__name__} holds no GR00T N1.7 model (expected a `.model` with an action_head)")
