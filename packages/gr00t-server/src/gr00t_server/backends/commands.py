"""`gr00t-server export | build-engine | verify`: argparse sub-commands for the inference backends."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from gr00t_client.cli_flags import flag as _flag
from gr00t_client.cli_flags import user_path
from gr00t_client.cli_signals import stop_signals_ignored_until_exit

from gr00t_server.backends.names import EXPORT_MODES, PRECISIONS
from gr00t_server.cli_errors import refuse_blank_paths
from gr00t_server.cpu_threads import fit_torch_threads

logger = logging.getLogger(__name__)

COMMANDS = ("export", "build-engine", "verify")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def register(subparsers: Any) -> None:
    """Add the export, build-engine and verify sub-commands to an argparse subparsers object."""
    from gr00t_server.serving.limits import ServerLimits

    max_language_tokens = ServerLimits().max_language_tokens  # serve's --max-language-tokens default
    export = subparsers.add_parser(
        "export", help="export ONNX sub-models of a checkpoint",
        description="Export the sub-modules of --mode to ONNX (opset 19) with shapes from one sample get_action.",
    )
    export.add_argument(*_flag("model-path"), required=True, help="checkpoint directory or hub id")
    export.add_argument(*_flag("output"), *_flag("onnx-dir"), dest="output", type=user_path, required=True,
                        help="output directory")
    export.add_argument(*_flag("mode"), *_flag("export-mode"), dest="mode", default="full_pipeline", choices=EXPORT_MODES,
                        help="dit_only: the DiT; action_head: + VL self-attention and encoders/decoder; full_pipeline: + ViT and "
                             "LLM (default full_pipeline)")
    export.add_argument(*_flag("precision"), default=None, choices=PRECISIONS,
                        help="weights/activations precision (default: bf16 on CUDA, fp32 on CPU)")
    export.add_argument(*_flag("batch-size"), type=int, default=1, help="batch of the sample observation")
    export.add_argument(*_flag("image-size"), type=int, nargs=2, default=[256, 256], metavar=("HEIGHT", "WIDTH"),
                        help="camera frame size of the sample observation (default 256 256): a full_pipeline export's "
                             "ViT serves the image grid of this size only, for every camera, so give your cameras' "
                             "size (e.g. 480 640)")
    export.add_argument(*_flag("max-language-tokens"), type=int, default=max_language_tokens,
                        help="tokens of the longest instruction the engines built from this export take, beyond the "
                             "sample prompt's: give serve's --max-language-tokens (serve refuses a larger one with "
                             f"TensorRT engines) (default {max_language_tokens})")
    export.add_argument(*_flag("embodiment-tag"), default=None, help="tag of the sample observation (default: new_embodiment when the checkpoint has it, else its first tag by name)")
    export.add_argument(*_flag("device"), default=None, help="torch device for the export (default: cuda if available)")

    build = subparsers.add_parser(
        "build-engine", help="build TensorRT engines from an ONNX export",
        description="Build one TensorRT engine per ONNX sub-model (strongly typed, one optimization profile each).",
    )
    build.add_argument(*_flag("onnx-dir"), type=user_path, required=True,
                       help="directory written by `gr00t-server export`")
    build.add_argument(*_flag("engine-dir"), type=user_path, required=True, help="output directory for *.engine files")
    build.add_argument(*_flag("precision"), default=None, choices=PRECISIONS,
                       help="builder flags on the weakly typed fallback only (default: the export precision)")
    build.add_argument(*_flag("workspace"), type=int, default=8192, help="workspace pool in MiB")
    build.add_argument(*_flag("max-batch-size"), type=int, default=8, help="profile max for the batch dimension")

    verify = subparsers.add_parser(
        "verify", help="compare a backend with PyTorch",
        description="Run identical inputs and noise through PyTorch and the backend (ONNX Runtime, TensorRT or "
                    "torch.compile); print cosine similarity, max abs error and relative error per output (the "
                    "action encoder's and the DiT's at their worst denoising step); an output fails when either its "
                    "cosine (PASS above 0.999) or its relative error (held to its dtype's limit: PASS below 0.02 in fp32, "
                    "0.05 in fp16, 0.1 in bf16; the report prints the limits it used) does; a second pass on a batch whose "
                    "prompts differ in length, so rows are padded, reports its rows as '(padded batch)'; the "
                    "sub-modules that take the embodiment id are also checked with every other embodiment the "
                    "checkpoint serves, in rows named '(embodiment TAG)'; exit 1 on FAIL.",
    )
    verify.add_argument(*_flag("model-path"), required=True, help="checkpoint directory or hub id")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument(*_flag("onnx-dir"), type=user_path, default=None, help="verify ONNX Runtime on this export")
    source.add_argument(*_flag("engine-dir"), type=user_path, default=None, help="verify TensorRT on these engines")
    source.add_argument(*_flag("torch-compile"), action="store_true", help="verify torch.compile of the DiT")
    verify.add_argument(*_flag("embodiment-tag"), default=None,
                        help="default: the tag recorded at export; with --torch-compile, new_embodiment when the "
                             "checkpoint has it, else its first tag by name (the report names the tag it verified)")
    verify.add_argument(*_flag("device"), default=None, help="default: cuda for engines, else cuda if available")
    verify.add_argument(*_flag("batch-size"), type=int, default=1,
                        help="rows of the sample observation (default 1); the padded-batch pass has at least 2 (at most "
                             "a TensorRT engine's --max-batch-size; none for engines of 1)")
    verify.add_argument(*_flag("seed"), type=int, default=0)


# export's, build-engine's and verify's path flags and what each takes, for the refusal of a blank one
_PATHS = {
    "model_path": "a checkpoint directory or Hugging Face id",
    "output": "the folder to write the export into",
    "onnx_dir": "the folder `gr00t-server export` wrote",
    "engine_dir": "the folder of the TensorRT engines",
}


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse a batch size or workspace below 1 before a checkpoint loads (batch 0 failed deep inside the export)."""
    for name in ("batch_size", "max_batch_size", "workspace", "max_language_tokens"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    seed = getattr(args, "seed", None)  # verify's: numpy's "expected non-negative integer" came after the load
    if seed is not None and not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be a whole number from 0 to {2**32 - 1}, got {seed}")
    size = getattr(args, "image_size", None)
    if size is not None and not (16 <= min(size) and max(size) <= 4096):
        raise ValueError(f"--image-size takes HEIGHT WIDTH of the cameras' frames, each from 16 to 4096; got {size[0]} {size[1]}")


def run(args: argparse.Namespace) -> int:
    """Dispatch on `args.command`; returns the process exit code."""
    logging.basicConfig(level=getattr(logging, getattr(args, "log_level", "INFO")), format="%(levelname)s:%(name)s:%(message)s")
    if getattr(args, "log_level", "INFO") != "DEBUG":
        logging.getLogger("torch").setLevel(logging.WARNING)  # torch's INFO lines (export traces) drown ours
    _check_counts(args)
    # a blank one ("$DIR", DIR unset) is the current folder to Path(): an export or engines written there, read from it
    refuse_blank_paths(args, _PATHS)  # a flag this command lacks reads None there
    if args.command in ("export", "verify"):
        fit_torch_threads()  # they run the model
    if args.command == "export":
        return _export(args)
    if args.command == "build-engine":
        return _build_engine(args)
    if args.command == "verify":
        return _verify(args)
    raise ValueError(f"unknown backend command {args.command!r}; expected one of {list(COMMANDS)}")


def _export_folder(output: Path) -> tuple[Path, list[Path]]:
    """The real folder behind --output (a symlink resolved, so staging lands on its filesystem), created; and the
    folders this created, innermost first (a failed export removes them again while they are empty)."""
    try:
        folder = output.resolve()
    except RuntimeError as exc:  # Python < 3.13 raises this for a symlink loop (3.13: OSError, ELOOP)
        raise ValueError(f"--output {output} is a symlink loop ({exc}); name a folder") from None
    except OSError as exc:
        raise ValueError(f"--output {output}: {exc.strerror or exc}") from exc
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {output} is not a directory")
    from gr00t_client.file_names import non_utf8_path_problem

    problem = non_utf8_path_problem(folder, "--output", "torch's ONNX exporter")  # it failed after the model loaded
    if problem is not None:
        raise ValueError(problem)
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create --output {output}: {exc.strerror or exc}") from exc
    return folder, created


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders an export created (innermost first) that are still empty."""
    for path in created:
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): keep it and what is above it
            return


def _expected_files(mode: str, precision: str) -> list[str]:
    """The files an export of `mode` will write (checked for collisions before the long export starts)."""
    from gr00t_server.backends.common import EXPORT_METADATA, MODE_SUBMODULES, onnx_file_name

    names = [onnx_file_name(name, "fp32" if name == "vit" else precision) for name in MODE_SUBMODULES[mode]]
    return [*names, *(name + ".data" for name in names), EXPORT_METADATA]


def _export(args: argparse.Namespace) -> int:
    from gr00t_server.backends.names import left_as_it_was

    try:
        from gr00t_server.backends.onnxruntime_backend import import_onnx

        import_onnx()  # before the folder is made and the checkpoint loads: torch's exporter fails late without it
        device = args.device or _default_device()
        precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
        if precision == "bf16" and not device.startswith("cuda"):
            from gr00t_server.backends.onnxruntime_backend import CPU_LACKS_BF16

            logger.warning("a bf16 export serves on a CUDA GPU only (%s)", CPU_LACKS_BF16)
        # Exported into a hidden folder inside the output first (same filesystem, so the swap is renames only): a
        # failed or interrupted export (a bad tag, out of memory, Ctrl-C, SIGTERM) leaves an earlier export as it was.
        folder, created = _export_folder(Path(args.output))
        try:
            metadata = _export_into(args, folder, device, precision)
        except BaseException:
            _remove_if_empty(created)  # a failed export into a new --output leaves no empty folder behind
            raise
    except KeyboardInterrupt as exc:  # the CLI's "interrupted" line says what the folder holds (docs/serving.md)
        if not hasattr(exc, "outcome"):  # stopped before the export's lock (torch loading): nothing was touched
            exc.outcome = left_as_it_was(Path(args.output), None)  # type: ignore[attr-defined]
        raise
    stop_signals_ignored_until_exit()  # in place: a stop while it is reported must not say "interrupted" (cli.main)
    print(f"Exported {args.mode} ({precision}) to {args.output}:")
    for name, info in metadata["submodules"].items():
        shapes = ", ".join(f"{k}{v['shape']}" for k, v in info["inputs"].items())
        print(f"  {info['file']:<28} {shapes}")
    return 0


def _export_into(args: argparse.Namespace, folder: Path, device: str, precision: str) -> dict[str, Any]:
    """Export into a staging folder inside `folder` and swap it in (see _export); returns the export's metadata."""
    from gr00t_server.backends.common import EXPORT_METADATA
    from gr00t_server.backends.export import export_checkpoint
    from gr00t_server.backends.export_dir import (
        _disk_error,
        check_collisions,
        export_lock,
        holds_staged_export,
        left_as_it_was,
        make_work_dir,
        own_files,
        remove_stale_work_dirs,
        swap_in,
    )
    from gr00t_server.threads import sigterm_as_interrupt

    own: Optional[list[str]] = None  # the earlier export's files, once read under the lock
    staged: Optional[os.stat_result] = None  # the new export's metadata file, once written: in `folder` once swapped
    try:
        with export_lock(folder):  # one export into a folder at a time: its file list and work folders are its own
            remove_stale_work_dirs(folder)
            own = own_files(folder)
            check_collisions(folder, _expected_files(args.mode, precision), own)
            with sigterm_as_interrupt():
                staging = make_work_dir(folder, "staging")
                try:
                    metadata = export_checkpoint(
                        args.model_path, staging, mode=args.mode, precision=precision,
                        batch_size=args.batch_size, embodiment_tag=args.embodiment_tag, device=device,
                        image_size=args.image_size, max_language_tokens=args.max_language_tokens,
                    )
                    staged = os.stat(staging / EXPORT_METADATA)
                    swap_in(folder, staging, own)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:  # disk full, read-only (the lock file, a work folder, a staged file): name the folder
        raise _disk_error(exc, folder, own) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: see _export
        exc.outcome = (  # type: ignore[attr-defined]
            f"{folder} holds the new export" if holds_staged_export(folder, staged) else left_as_it_was(folder, own))
        raise
    return metadata


def _build_engine(args: argparse.Namespace) -> int:
    from gr00t_server.backends.tensorrt_backend import build_engines

    metadata = build_engines(
        args.onnx_dir, args.engine_dir, precision=args.precision,
        workspace_mib=args.workspace, max_batch_size=args.max_batch_size,
    )
    print(f"Built {len(metadata['engines'])} engines in {args.engine_dir} "
          f"(TensorRT {metadata['tensorrt_version']}, {metadata['gpu_name']}, sm_{metadata['compute_capability']}):")
    for name, info in metadata["engines"].items():
        print(f"  {info['file']:<28} {info['build_seconds']:.1f} s")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gr00t_server.backends.verify import verify_checkpoint

    report = verify_checkpoint(
        args.model_path, onnx_dir=args.onnx_dir, engine_dir=args.engine_dir,
        embodiment_tag=args.embodiment_tag, device=args.device, batch_size=args.batch_size, seed=args.seed,
        torch_compile=args.torch_compile,
    )
    print(report.format())
    return 1 if report.status == "FAIL" else 0
