"""`gr00t-server`: serve a GR00T policy (model checkpoint or dataset replay), export and verify backends."""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import traceback
from typing import Any, Optional, Sequence

# Only light modules here (gr00t_client loads its API on first use): main() makes SIGTERM and SIGHUP stop a command
# before the heavy imports (numpy, ZeroMQ, torch).
from gr00t_client.cli_flags import CommandParser, add_log_level, port_number, refuse_gone_working_folder, user_path
from gr00t_client.cli_flags import flag as _flag
from gr00t_client.cli_signals import ProgramStopSignals, interrupted_line

from .cli_errors import CliError
from .file_commands_cli import SERVER_KEY_NAME, keygen, make_test_checkpoint
from .serve_checks import _server_limits
from .serve_cli import _raise_open_file_limit, _start_server, serve
from .serve_policy import _model_policy, _replay_policy, _warm_up

# CliError and the serve helpers below are imported from here by the tests.
__all__ = ["CliError", "INFERENCE_MODES", "build_parser", "main", "_model_policy", "_raise_open_file_limit", "_replay_policy",
           "_server_limits", "_start_server", "_warm_up"]

INFERENCE_MODES = ("pytorch", "torch-compile", "onnxruntime", "tensorrt")


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    dest = name.replace("-", "_")
    parser.add_argument(*_flag(name), dest=dest, action="store_true", default=default, help=help_text)
    parser.add_argument(*_flag("no-" + name), dest=dest, action="store_false", help=f"disable --{name}")


def _add_serve_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a policy over ZeroMQ",
        description="Serve a GR00T N1.7 checkpoint (--model-path) or replay a LeRobot dataset (--dataset-path).",
    )
    p.add_argument(*_flag("model-path"), type=user_path, default=None,
                   help="checkpoint directory or Hugging Face id (repo[/subfolder]); a relative path whose first "
                   "folder exists here is a local path, never a hub id")
    p.add_argument(*_flag("embodiment-tag"), default=None,
                   help="embodiment tag (name or value, case-insensitive; default new_embodiment, or for replay with a .py "
                   "--modality-config-path the tag the file registers)")
    p.add_argument(*_flag("device"), default=None, help="torch device, e.g. cuda, cuda:0, cpu (default: cuda if available)")
    p.add_argument(*_flag("dtype"), default=None, choices=["bfloat16", "bf16", "float16", "fp16", "float32", "fp32"],
                   help="model dtype (default: bf16 on CUDA, fp32 on CPU; with --inference-mode onnxruntime or "
                   "tensorrt, the precision the export records)")
    p.add_argument(*_flag("clip-outliers"), dest="clip_outliers", action="store_true", default=None,
                   help="clip min/max-normalized states to [-1, 1] (one anchoring a relative action is refused beyond "
                   "1000 times its statistics' magnitude, as its action is decoded against its raw value; any state "
                   "about 10 times beyond its range is served with a warning, once per key) and absolute actions to "
                   "the statistics "
                   "range; mean/std states and relative actions are not clipped, as in the reference (default: the "
                   "checkpoint's processor_config.json clip_outliers, for states; mean/std absolute actions then stay "
                   "unclipped)")
    p.add_argument(*_flag("no-clip-outliers"), dest="clip_outliers", action="store_false",
                   help="do not clip normalized states (actions decode as the reference does; one beyond +-1000 "
                   "once normalized is refused, and one anchoring a relative action beyond 1000 times its statistics' "
                   "magnitude)")
    p.add_argument(*_flag("allow-empty-instruction"), action="store_true", default=False,
                   help="serve instructions that are empty once formalized (\"\", blanks, punctuation alone) for any "
                   "embodiment, as the reference does: for a checkpoint fine-tuned on episodes without task text "
                   "(default: refused as a client's mistake, an env's missing task field; DROID's "
                   "oxe_droid_relative_eef_relative_joint takes them always)")
    p.add_argument(*_flag("preprocess-device"), default=None,
                   help="device that patchifies frames, e.g. cpu, cuda:0 (default: the model's device when it is a GPU)")
    p.add_argument(*_flag("dataset-path"), type=user_path, default=None,
                   help="LeRobot dataset to replay (used when --model-path is absent)")
    p.add_argument(*_flag("modality-config-path"), type=user_path, default=None,
                   help="replay: a .json file of ModalityConfig fields or a .py file that registers one")
    p.add_argument(*_flag("execution-horizon"), type=int, default=None,
                   help="replay: steps to advance per get_action, 1 to the action horizon (default: the action horizon)")
    p.add_argument(*_flag("action-horizon"), type=int, default=None,
                   help="replay: action chunk length, steps 0..N-1, of a derived or built-in config (default: the "
                   "built-in config's, else 16); with --modality-config-path it must match the file's action steps")
    p.add_argument(*_flag("replay-cache-mb"), type=float, default=None,
                   help="replay: MiB of episodes' actions kept read, least recently used dropped first (default 256)")
    p.add_argument(*_flag("host"), default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for other machines)")
    p.add_argument(*_flag("port"), type=port_number("--port"), default=5555, help="port (default 5555)")
    _bool_flag(p, "strict", True, "validate observations and actions (default on)")
    _bool_flag(p, "use-sim-policy-wrapper", False, "accept flat video.*/state.* keys and return action.* keys")
    p.add_argument(*_flag("api-token"), default=os.environ.get("GR00T_API_TOKEN"),
                   help="require this token on every request (default: $GR00T_API_TOKEN)")
    p.add_argument(*_flag("allow-remote-kill"), action="store_true",
                   help="let non-loopback peers stop the server (no effect with --api-token, whose holders may always "
                        "stop it and no one else may, nor with a loopback --host; serve warns of both)")
    p.add_argument(*_flag("curve-secret-key"), default=os.environ.get("GR00T_CURVE_SECRET_KEY"), metavar="FILE",
                   help="encrypt the connection with CURVE using this secret certificate (NAME.key_secret from "
                        "`gr00t-server keygen`; default: $GR00T_CURVE_SECRET_KEY); clients need NAME.key. Its z85 "
                        "secret key is accepted too, but other users see it in ps: use the file or the variable")
    p.add_argument(*_flag("authorized-keys"), default=os.environ.get("GR00T_AUTHORIZED_KEYS"), metavar="DIR",
                   help="with --curve-secret-key: admit only clients whose public .key files are in DIR, one key per "
                        "file (re-read when it changes, no restart: a client whose file is removed is refused within "
                        "about a second, on its open connection too; default: $GR00T_AUTHORIZED_KEYS)")
    p.add_argument(*_flag("inference-mode"), default="pytorch", choices=INFERENCE_MODES, help="inference backend")
    p.add_argument(*_flag("onnx-dir"), type=user_path, default=None,
                   help="exported ONNX sub-models (--inference-mode onnxruntime)")
    p.add_argument(*_flag("engine-dir"), type=user_path, default=None,
                   help="TensorRT engines (--inference-mode tensorrt)")
    _bool_flag(p, "warmup", True, "run a sample observation through the model before binding (default on; compiles "
               "torch-compile mode and checks the backend at start-up)")
    from .serving.batching import DEFAULT_BATCH_TIMEOUT_MS, MAX_BATCH_SIZE

    p.add_argument(*_flag("max-batch-size"), type=int, default=1,
                   help=f"batch get_action requests across clients into calls of at most this many rows, 1 to "
                        f"{MAX_BATCH_SIZE} (default 1: off)")

    p.add_argument(*_flag("batch-timeout-ms"), type=float, default=DEFAULT_BATCH_TIMEOUT_MS,
                   help="longest a partial batch waits for the clients still expected; the wait adapts below it to "
                        f"their observed arrival spread and the policy's call time (default {DEFAULT_BATCH_TIMEOUT_MS:g} ms)")
    from .serving.worker import DEFAULT_INLINE_BELOW_MS, INLINE_STREAK

    p.add_argument(*_flag("inline-below-ms"), type=float, default=DEFAULT_INLINE_BELOW_MS, metavar="MS",
                   help=f"once {INLINE_STREAK} get_action calls in a row each took under MS, run the next ones on the "
                        "socket thread while the policy worker is idle and no other request waits (a call there holds "
                        "the socket thread), saving two thread hand-offs (about 0.2 ms) per request for cheap policies;"
                        f" 0 turns this off (default {DEFAULT_INLINE_BELOW_MS:g})")
    p.add_argument(*_flag("metrics-port"), type=port_number("--metrics-port"), default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (needs gr00t-server[metrics]; 0: a free port, "
                        "printed at start; default off). The endpoint has no authentication, whatever --api-token or "
                        "CURVE say: on a --host other than loopback, firewall the port")
    p.add_argument(*_flag("max-message-mb"), type=int, default=256, help="refuse messages larger than this with an error reply naming the limit (default 256 MiB)")
    _add_limit_flags(p)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Per-request work limits (gr00t_server.serving.ServerLimits): a request over one gets a one-line error."""
    from .serving.limits import ServerLimits
    from .serving.sessions import DROPPED_MARK_IDLE_TIMES, DROPPED_MARK_MIN_S, MAX_DROPPED_MARKS

    d = ServerLimits()
    p.add_argument(*_flag("max-rows"), type=int, default=d.max_rows,
                   help=f"batch rows one request may carry (arrays' first axis, language lists, replay batch_size; default {d.max_rows})")
    p.add_argument(*_flag("max-language-chars"), type=int, default=d.max_language_chars,
                   help=f"characters per language string (default {d.max_language_chars})")
    p.add_argument(*_flag("max-language-tokens"), type=int, default=d.max_language_tokens,
                   help=f"tokens per language string, by the policy's tokenizer, of the text as its model reads it "
                        f"(words and punctuation marks for a policy without one) (default {d.max_language_tokens})")
    p.add_argument(*_flag("max-cameras"), type=int, default=d.max_cameras, help=f"video keys per observation (default {d.max_cameras})")
    p.add_argument(*_flag("max-image-pixels"), type=int, default=d.max_image_pixels,
                   help=f"height x width of one image, and of the square a letter-boxing checkpoint pads a frame to "
                        f"(default {d.max_image_pixels})")
    p.add_argument(*_flag("max-denoising-steps"), type=int, default=None,
                   help="model: the most options['denoising_steps'] one get_action may ask for, from the "
                        "checkpoint's num_inference_timesteps to its num_timestep_buckets (4 to 1000 for released "
                        "checkpoints; checked against config.json before the model loads; default 4x the "
                        "num_inference_timesteps)")
    p.add_argument(*_flag("max-sessions"), type=int, default=d.max_sessions,
                   help=f"client sessions a stateful policy keeps (default {d.max_sessions}); when full, sessions used only once "
                        "are evicted first, least recently used first, then sessions used again; "
                        "an evicted session's get_action is an error until its client resets, for "
                        f"{DROPPED_MARK_MIN_S / 86400:g} days (or {DROPPED_MARK_IDLE_TIMES}x --session-idle-s where "
                        f"longer) after its eviction and while among the last {MAX_DROPPED_MARKS} evicted (4x "
                        "--max-sessions where more); after that a reference client's session (keyed by its "
                        "connection) starts afresh, our client's stays refused")
    p.add_argument(*_flag("session-idle-s"), type=float, default=d.session_idle_s,
                   help=f"evict a session unused this many seconds (default {d.session_idle_s:.0f}), before any other is "
                        "evicted for room; time the server itself was stopped or paused (SIGSTOP, docker pause) is not "
                        "counted")
    p.add_argument(*_flag("max-client-queued-mb"), type=float, default=None,
                   help="request bytes one connection may have waiting for the policy, its first request's included; a "
                        "first request is always taken, however large (default 16, or --max-message-mb where that is "
                        "smaller)")
    p.add_argument(*_flag("max-queued-mb"), type=float, default=d.max_queued_bytes / (1024 * 1024),
                   help=f"request bytes waiting for the policy, all connections together; a request that finds none "
                        f"waiting is always taken (default {d.max_queued_bytes // (1024 * 1024)})")
    p.add_argument(*_flag("max-client-queued-requests"), type=int, default=d.max_client_queued_requests,
                   help=f"requests one connection may have waiting for their replies (a REQ client has one; "
                        f"default {d.max_client_queued_requests}); their replies and 8 more may wait unread")


def _add_checkpoint_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "make-test-checkpoint",
        help="write a random-weight checkpoint in the real N1.7 layout (for tests and demos)",
        description="Write a small random-weight GR00T N1.7 checkpoint (config, safetensors, processor, tokenizer).",
    )
    p.add_argument("output", metavar="OUTPUT", type=user_path, help="output directory (use . for the current one)")
    p.add_argument(*_flag("size"), default="tiny", choices=["tiny", "small"], help="model size (default tiny)")
    p.add_argument(*_flag("seed"), type=int, default=0, help="weight seed, 0 to 2**32 - 1 (default 0)")
    p.add_argument(*_flag("embodiment"), default=None, choices=["libero", "metaworld", "new_embodiment", "pusht"],
                   help="write one tag with the key set of this gr00t-eval env (default: the new_embodiment and "
                   "libero_sim key sets)")
    p.add_argument(*_flag("dataset-path"), type=user_path, default=None,
                   help="write one tag with this recorded LeRobot dataset's keys, modality configs and statistics")
    p.add_argument(*_flag("embodiment-tag"), default=None,
                   help="the tag to write with --embodiment/--dataset-path (default new_embodiment); it needs one of them")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="empty a non-empty output directory first (one holding an earlier test checkpoint is replaced "
                        "without it; any other is refused); never one that is, holds or lies inside a LeRobot dataset "
                        "or the --dataset-path, nor one holding a gr00t-eval run still running")


def _add_keygen_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="write a CURVE key pair (NAME.key public, NAME.key_secret secret, mode 0600)",
        description="Write a ZeroMQ CURVE key pair in the zmq.auth certificate format: DIR/NAME.key (public: give it "
                    "to peers) and DIR/NAME.key_secret (secret, mode 0600: keep it on this machine).",
    )
    p.add_argument("directory", metavar="DIR", type=user_path,
                   help="directory to write the two files into (created if missing, mode 0700)")
    p.add_argument(*_flag("name"), default=SERVER_KEY_NAME,
                   help=f"file name stem (default {SERVER_KEY_NAME}: the server's pair; any other, e.g. robot-07, is "
                        "taken for a client's pair when saying where each key goes)")
    p.add_argument(*_flag("force"), action="store_true", help="replace existing files of that name")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = CommandParser(prog="gr00t-server", description="GR00T N1.7 policy server.")
    parser.add_argument("--version", action="version", version=f"gr00t-server {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_serve_parser(subparsers)
    _add_checkpoint_parser(subparsers)
    _add_keygen_parser(subparsers)
    try:
        from .backends import commands as backend_commands
    except ImportError:  # pragma: no cover - backends are part of the package
        backend_commands = None
    if backend_commands is not None:
        backend_commands.register(subparsers)
    add_log_level(parser, "log level, any case (default INFO); DEBUG also prints the traceback of an error")
    return parser


# Errors that describe a user's input (paths, tags, checkpoints, backends) rather than a bug in this program.
_USER_ERROR_NAMES = {"CheckpointError", "CheckpointKeyError", "TokenizerNotFoundError", "DatasetError", "TemplateError"}


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a Ctrl-C (and gr00t-eval does)

# What to check when a command runs out of memory, in the flags that command has.
_MEMORY_HINTS = {
    "serve": "the checkpoint (--model-path, --dtype) or dataset (--dataset-path) being loaded may not fit in this "
             "machine's memory: --dtype bf16 loads float32 weights at half the size; with batching on, a smaller "
             "--max-batch-size needs less",
    "export": "check the sizes given (--image-size, --batch-size); --precision bf16 or fp16 loads float32 weights at "
              "half the size (a bf16 export serves on a CUDA GPU only)",
    "verify": "check --batch-size",
    "build-engine": "check --max-batch-size and --workspace",
    "make-test-checkpoint": "try --size tiny",
}


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, ValueError, OSError, ImportError, KeyError, MemoryError)):
        return True
    return any(cls.__name__ in _USER_ERROR_NAMES for cls in type(exc).__mro__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code (2 and one line on stderr for a mistake, 130 when interrupted).

    SIGTERM and SIGHUP stop any command as Ctrl-C does, from main's first line (they killed make-test-checkpoint,
    keygen and an export's start with 143/129). As the program (argv None) it ignores the stop signals once the command
    has returned, and `serve` ends the process as soon as the server has stopped: a late signal in the interpreter's
    exit (seconds, with torch loaded) turned a finished command's status into 130/143/129.
    """
    if refuse_gone_working_folder("gr00t-server", argv):  # before torch's import, which oneMKL aborts there
        return 2
    stop_signals = ProgramStopSignals()
    if argv is None:
        _name_where_a_fatal_signal_strikes()
    try:
        return _main(argv)
    finally:
        stop_signals.finish(ignore_from_now_on=argv is None)


def _name_where_a_fatal_signal_strikes() -> None:
    """faulthandler on stderr: a SIGBUS (weights truncated under a library's memory map), SIGSEGV or SIGABRT prints
    the stack of each thread before the process dies, where it died with nothing said."""
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError, RuntimeError):  # stderr closed (None) or not a file: nowhere to print
        pass


def _main(argv: Optional[Sequence[str]]) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in words if not word.startswith("-")), "")
    args: Optional[argparse.Namespace] = None
    try:
        from gr00t_client.stdout_guard import guard_stdout

        args = build_parser().parse_args(argv)
        command = args.command
        guard_stdout()  # `serve | head -1` must not stop the server at its second line
        if args.command == "serve":
            return serve(args, leave_when_stopped=argv is None)
        if args.command == "make-test-checkpoint":
            return make_test_checkpoint(args)
        if args.command == "keygen":
            return keygen(args)
        from .backends import commands as backend_commands

        return int(backend_commands.run(args) or 0)
    except CliError as exc:
        return _report_mistake(command, str(exc), exc, args)
    except KeyboardInterrupt as exc:  # Ctrl-C before the server was up (a running server stops cleanly and exits 0)
        print(interrupted_line("gr00t-server", command, exc), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        # str(KeyError) quotes its message; the message itself is what the user should read
        text = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        message = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "is not supported by this checkpoint" in text:  # export/verify: the tags to serve are on its later lines
            message = " ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())
        if isinstance(exc, MemoryError):
            message = f"out of memory ({message}): {_MEMORY_HINTS.get(command, 'the files it loads may be too large for this machine')}"
        return _report_mistake(command, message, exc, args)


def _report_mistake(command: str, message: str, exc: BaseException, args: Optional[argparse.Namespace]) -> int:
    """One line on stderr and exit code 2; at --log-level DEBUG or with GR00T_DEBUG set, the traceback after it."""
    print(f"gr00t-server {command}: error: {message}", file=sys.stderr)
    if os.environ.get("GR00T_DEBUG") or getattr(args, "log_level", None) == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
