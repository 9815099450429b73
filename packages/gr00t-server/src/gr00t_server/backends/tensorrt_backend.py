"""TensorRT 10 backend: build one engine per ONNX sub-model, and run engines on torch CUDA tensors.

Build follows model.md §7.2: Python builder API, STRONGLY_TYPED network when available (precision then
comes from the ONNX types), one optimization profile per engine with shapes from the export metadata.
`tensorrt` is imported lazily so the package works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from gr00t_client.input_folders import ENGINE_WORK_PREFIX  # build_engines' staging folder: <prefix><pid>-<token>-...

from gr00t_server.backends.common import (
    ENGINE_METADATA,
    PROMPT_AXES,
    BackendError,
    check_export_files,
    engine_file_name,
    file_digest,
    model_of,
    read_export_metadata,
    read_json,
    write_json,
)
from gr00t_server.backends.wrappers import swap_exported_modules

logger = logging.getLogger(__name__)

# Dims that scale with the batch get a profile max of (value per sample) * max_batch_size.
_PER_BATCH_DIMS = ("num_images", "num_vis_tokens")


def import_tensorrt() -> Any:
    """Import TensorRT >= 10 or raise BackendError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "tensorrt":
            raise BackendError(
                "inference mode 'tensorrt' needs TensorRT 10 (pip install 'gr00t-server[tensorrt-cu12]' or [tensorrt-cu13], matching torch's CUDA) and a CUDA GPU"
            ) from exc
        # installed, but its libraries do not load (libnvinfer missing, another CUDA major): installing it again is no fix
        raise BackendError(f"inference mode 'tensorrt': TensorRT is installed but failed to import ({type(exc).__name__}: "
                           f"{exc}); check that its extra matches torch's CUDA (torch.version.cuda) and that its "
                           "libraries are found") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise BackendError(f"TensorRT {trt.__version__} is installed; the tensorrt backend needs TensorRT >= 10")
    return trt


def _torch_dtype(trt: Any, trt_dtype: Any) -> torch.dtype:
    table = {
        "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
        "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
    }
    for name, dtype in table.items():
        if hasattr(trt.DataType, name) and trt_dtype == getattr(trt.DataType, name):
            return dtype
    raise BackendError(f"TensorRT tensor type {trt_dtype} has no torch equivalent")


def gpu_identity(device: Optional[torch.device] = None) -> dict[str, str]:
    """Name and compute capability (e.g. "90") of a CUDA device."""
    if not torch.cuda.is_available():
        raise BackendError("TensorRT engines need a CUDA GPU; torch sees none")
    index = (device.index if device is not None and device.index is not None else torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}{minor}"}


# ----- build -----


def profile_shapes(
    inputs: dict[str, Any], batch_size: int, max_batch_size: int
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) per input from the captured shapes and named dynamic axes in the export metadata.

    Fixed dims stay fixed; `batch_size` gets 1 / captured / max_batch_size; other named dims get
    1 / captured / max(2*captured, captured+64), scaled by the batch for per-batch dims, or the input's `profile_max`
    for that axis when larger (the prompt axes: room for export's --max-language-tokens beyond the sample prompt).
    """
    shapes = {}
    for name, info in inputs.items():
        axes = {int(axis): dim for axis, dim in info.get("dynamic_axes", {}).items()}
        room = {int(axis): int(size) for axis, size in info.get("profile_max", {}).items()}
        low, opt, high = [], [], []
        for axis, size in enumerate(info["shape"]):
            dim = axes.get(axis)
            if dim is None:
                low.append(size), opt.append(size), high.append(size)
            elif dim == "batch_size":
                low.append(1), opt.append(min(size, max_batch_size)), high.append(max(max_batch_size, size))
            else:
                top = max(2 * size, size + 64, room.get(axis, 0))
                if dim in _PER_BATCH_DIMS:
                    top = max(top, -(-size // max(batch_size, 1)) * max_batch_size)
                low.append(1), opt.append(size), high.append(top)
        shapes[name] = (tuple(low), tuple(opt), tuple(high))
    return shapes


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    precision: str,
    workspace_mib: int = 8192,
) -> dict[str, Any]:
    """Build and serialize one engine; raises BackendError with the parser/builder errors."""
    trt = import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not strongly_typed:  # weakly typed: the builder flags choose the precision
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        name = network.get_input(index).name
        if name not in shapes:
            raise BackendError(f"{onnx_path.name} input {name} is not described in export_metadata.json")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    return {
        "file": engine_path.name,
        "onnx_file": onnx_path.name,
        "build_seconds": time.perf_counter() - started,
        "strongly_typed": strongly_typed,
        "profile": {name: [list(s) for s in shape] for name, shape in shapes.items()},
    }


def build_engines(
    onnx_dir: Union[str, Path],
    engine_dir: Union[str, Path],
    precision: Optional[str] = None,
    workspace_mib: int = 8192,
    max_batch_size: int = 8,
) -> dict[str, Any]:
    """Build an engine for every sub-model of an export; writes `engine_metadata.json`.

    The ONNX files are checked against their export's hashes first (a file copied in from another export was built
    from without a word). Engines are built in a hidden folder inside `engine_dir` and moved in only once all are
    built, the earlier metadata out first and the new one last: a build that fails or is interrupted leaves the
    earlier engines as they were (it left some of them replaced, under the earlier metadata, and serve took the
    mix). Each engine's size and sha256 are recorded, and apply_tensorrt checks them.
    """
    trt = import_tensorrt()
    export_metadata = read_export_metadata(onnx_dir)
    check_export_files(onnx_dir, export_metadata)
    out = Path(engine_dir)
    out.mkdir(parents=True, exist_ok=True)
    with engine_staging(out) as staging:
        return _build_into(trt, onnx_dir, out, staging, export_metadata, precision, workspace_mib, max_batch_size)


@contextlib.contextmanager
def engine_staging(engine_dir: Path) -> Iterator[Path]:
    """A fresh staging folder in `engine_dir`, holding its lock (export_lock: BackendError at once while another build
    or export into it runs) until the block ends; the staging folders of killed builds are removed first. Judged by
    their pid, a killed build's folder was kept for ever in a container (PID 1 there is always alive), and a build
    in another container deleted a running one's."""
    from gr00t_server.backends.export_dir import _made_here, export_lock, work_dir_prefix

    with export_lock(engine_dir, work="TensorRT engine build", flag="--engine-dir"):
        for stale in engine_dir.glob(ENGINE_WORK_PREFIX + "*"):  # under the lock: every other one is a dead build's
            if stale.is_dir() and not stale.is_symlink() and not _made_here(stale):
                logger.info("removing %s, left by an interrupted engine build", stale)
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=work_dir_prefix(ENGINE_WORK_PREFIX), dir=engine_dir))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build_into(trt: Any, onnx_dir: Union[str, Path], out: Path, staging: Path, export_metadata: dict[str, Any],
                requested: Optional[str], workspace_mib: int, max_batch_size: int) -> dict[str, Any]:
    """build_engines' work: every engine built into `staging`, then moved into `out` with the metadata last."""
    try:
        earlier = [info["file"] for info in read_json(out / ENGINE_METADATA, "engine metadata")["engines"].values()]
    except Exception:  # noqa: BLE001 - no earlier build, or one whose metadata cannot say: nothing of it is removed
        earlier = []
    engines = {}
    for name, info in export_metadata["submodules"].items():
        onnx_path = Path(onnx_dir) / info["file"]
        shapes = profile_shapes(info["inputs"], int(export_metadata.get("batch_size", 1)), max_batch_size)
        logger.info("building %s from %s", engine_file_name(info["file"]), onnx_path)
        engine = build_engine(onnx_path, staging / engine_file_name(info["file"]), shapes,
                              requested or export_metadata.get("precision", "bf16"), workspace_mib)
        engines[name] = {**engine, **file_digest(staging / engine["file"])}
    # A strongly typed network takes its precision from the ONNX types: the flag changed nothing, and verify
    # loads its PyTorch reference in the recorded precision.
    typed = all(engine.get("strongly_typed") for engine in engines.values())
    metadata = {
        **gpu_identity(),
        "tensorrt_version": str(trt.__version__),
        "precision": export_metadata.get("precision", "bf16") if typed or not requested else requested,
        "max_batch_size": max_batch_size,
        "engines": engines,
        "export_metadata": export_metadata,
    }
    (out / ENGINE_METADATA).unlink(missing_ok=True)  # no metadata while files move: a half folder is refused
    for engine in engines.values():
        os.replace(staging / engine["file"], out / engine["file"])
    write_json(out / ENGINE_METADATA, metadata)
    built = {engine["file"] for engine in engines.values()}
    for name in earlier:  # the earlier build's engines of other names (another precision's export)
        if isinstance(name, str) and Path(name).name == name and name not in built:
            (out / name).unlink(missing_ok=True)
    return metadata


def engine_export_metadata(engine_metadata: dict[str, Any]) -> dict[str, Any]:
    """The export's metadata (its embodiment tag, frame size and model identity) of an engine folder's metadata:
    nested under `export_metadata` as build-engine records it, else the top level (older files), with the engines'
    own `precision` and `max_batch_size`."""
    exported = engine_metadata.get("export_metadata")
    if not isinstance(exported, dict):
        exported = engine_metadata
    return {**exported, "precision": engine_metadata.get("precision", exported.get("precision")),
            "max_batch_size": engine_metadata.get("max_batch_size")}


def check_engine_files(metadata: dict[str, Any], engine_dir: Union[str, Path]) -> None:
    """BackendError unless `engine_metadata.json` lists one engine per exported sub-module, each present with the size
    and sha256 recorded when it was built: an interrupted rebuild mixed two checkpoints' engines, and an `engines` map
    without some sub-modules served PyTorch for them under the tensorrt label."""
    folder = Path(engine_dir)
    engines = metadata.get("engines")
    exported = (metadata.get("export_metadata") or {}).get("submodules") or {}
    if not isinstance(engines, dict) or set(engines) != set(exported):
        listed = sorted(engines) if isinstance(engines, dict) else engines
        raise BackendError(f"{folder / ENGINE_METADATA} lists engines {listed}, and the export has the sub-modules "
                           f"{sorted(exported)}; rebuild the engines with build-engine")
    for name, info in engines.items():
        file_name = info.get("file") if isinstance(info, dict) else None
        if not isinstance(file_name, str) or Path(file_name).name != file_name or file_name in ("", ".", ".."):
            raise BackendError(f"{folder / ENGINE_METADATA}: engine {name!r} names no plain file ({file_name!r})")
        if "sha256" not in info:
            raise BackendError(f"{folder / ENGINE_METADATA} records no engine hashes (built by an older gr00t-server), "
                               "so its engines cannot be checked; rebuild them with build-engine")
        path = folder / file_name
        if not path.is_file():
            raise BackendError(f"{path} is listed in {ENGINE_METADATA} but missing")
        if path.stat().st_size != info.get("size") or file_digest(path)["sha256"] != info["sha256"]:
            raise BackendError(f"{path} is not the engine {ENGINE_METADATA} records (size or sha256 differs): an "
                               f"interrupted rebuild, or a file copied in? Rebuild the engines in {folder}")


def check_engine_language_room(metadata: dict[str, Any], max_language_tokens: int, engine_dir: Union[str, Path]) -> None:
    """BackendError naming both numbers when serve's --max-language-tokens is more than the engines' prompt profiles
    hold beyond the export's sample prompt: TensorRT refused such a prompt at run time, after warm-up passed, in an
    error naming neither the instruction nor a limit."""
    exported = (metadata.get("export_metadata") or {}).get("submodules") or {}
    fits = []  # (language tokens beyond the sample prompt, profile max, sample prompt length) per prompt axis
    for name, engine in (metadata.get("engines") or {}).items():
        profile = (engine.get("profile") or {}) if isinstance(engine, dict) else {}
        for input_name, info in ((exported.get(name) or {}).get("inputs") or {}).items():
            for axis, dim in info.get("dynamic_axes", {}).items():
                if dim in PROMPT_AXES and input_name in profile:
                    top, captured = int(profile[input_name][2][int(axis)]), int(info["shape"][int(axis)])
                    fits.append((top - captured, top, captured))
    if not fits:
        return
    room, top, captured = min(fits)
    if max_language_tokens > room:
        raise BackendError(
            f"--max-language-tokens {max_language_tokens} is more than the {room} language tokens the TensorRT engines "
            f"in {engine_dir} take (their profiles hold prompts of up to {top} tokens; the export's sample prompt had "
            f"{captured}); serve with --max-language-tokens {room}, or export with --max-language-tokens "
            f"{max_language_tokens} and rebuild the engines"
        )


# ----- runtime -----


class TrtRunner:
    """A deserialized engine with one execution context, run on torch's current CUDA stream."""

    def __init__(self, path: Union[str, Path], device: torch.device) -> None:
        trt = import_tensorrt()
        self.path = Path(path)
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise BackendError(f"TensorRT could not deserialize {self.path} (built with another TensorRT or GPU?)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set shapes and addresses, enqueue on the current stream, return the output tensors."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {missing}; got {sorted(feeds)}")
        stream = torch.cuda.current_stream(self.device)
        inputs = {}
        for name in self.input_names:
            tensor = feeds[name].to(device=self.device, dtype=self.dtypes[name]).contiguous()
            inputs[name] = tensor  # alive until enqueued; the allocator is stream-ordered afterwards
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{self.path.name} input {name} shape {tuple(tensor.shape)} is outside the engine profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed")
        return outputs


def check_engine_metadata(metadata: dict[str, Any], model: Any, engine_dir: Union[str, Path]) -> None:
    """Raise BackendError for engines built from another model, for another GPU or TensorRT."""
    from gr00t_server.backends.onnxruntime_backend import check_export_metadata

    trt = import_tensorrt()
    if model.device.type != "cuda":
        raise BackendError(f"inference mode 'tensorrt' needs the model on CUDA; it is on {model.device}")
    check_export_metadata(metadata.get("export_metadata", {}), model, engine_dir)
    current = gpu_identity(model.device)
    if metadata.get("compute_capability") != current["compute_capability"]:
        raise BackendError(
            f"engines in {engine_dir} were built for {metadata.get('gpu_name')} (sm_{metadata.get('compute_capability')}); "
            f"this GPU is {current['gpu_name']} (sm_{current['compute_capability']}); rebuild them with build-engine"
        )
    if metadata.get("gpu_name") != current["gpu_name"]:
        logger.warning("engines were built on %s, running on %s (same compute capability)", metadata.get("gpu_name"), current["gpu_name"])
    if metadata.get("tensorrt_version") != str(trt.__version__):
        raise BackendError(
            f"engines in {engine_dir} were built with TensorRT {metadata.get('tensorrt_version')}; "
            f"TensorRT {trt.__version__} is installed; rebuild them with build-engine"
        )


def apply_tensorrt(policy: Any, engine_dir: Union[str, Path]) -> list[str]:
    """Swap the engines in `engine_dir` into the policy's model."""
    import_tensorrt()
    model = model_of(policy)
    metadata = read_json(Path(engine_dir) / ENGINE_METADATA, "TensorRT engine metadata")
    check_engine_metadata(metadata, model, engine_dir)
    check_engine_files(metadata, engine_dir)
    runners = {}
    for name, info in metadata["engines"].items():
        runners[name] = TrtRunner(Path(engine_dir) / info["file"], model.device)
    return swap_exported_modules(policy, runners, metadata["export_metadata"])
