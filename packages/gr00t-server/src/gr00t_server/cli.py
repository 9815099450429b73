"""`gr00t-server`: serve a GR00T policy (model checkpoint or dataset replay), export and verify backends."""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

# Only light modules here (gr00t_client loads its API on first use): main() makes SIGTERM and SIGHUP stop a command
# before the heavy imports (numpy, ZeroMQ, torch).
from gr00t_client.cli_flags import CommandParser, add_log_level
from gr00t_client.cli_flags import flag as _flag
from gr00t_client.cli_signals import ProgramStopSignals

logger = logging.getLogger("gr00t_server")

INFERENCE_MODES = ("pytorch", "torch-compile", "onnxruntime", "tensorrt")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


class CliError(Exception):
    """A user error reported as one line and a non-zero exit, without a traceback."""


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
    p.add_argument(*_flag("model-path"), default=None, help="checkpoint directory or Hugging Face id (repo[/subfolder])")
    p.add_argument(*_flag("embodiment-tag"), default=None,
                   help="embodiment tag (name or value, case-insensitive; default new_embodiment, or for replay with a .py "
                   "--modality-config-path the tag the file registers)")
    p.add_argument(*_flag("device"), default=None, help="torch device, e.g. cuda, cuda:0, cpu (default: cuda if available)")
    p.add_argument(*_flag("dtype"), default=None, choices=["bfloat16", "bf16", "float16", "fp16", "float32", "fp32"],
                   help="model dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument(*_flag("clip-outliers"), dest="clip_outliers", action="store_true", default=None,
                   help="clip min/max-normalized states to [-1, 1] and absolute actions to the statistics range; mean/std "
                   "states and relative actions are not clipped, as in the reference (default: the checkpoint's "
                   "processor_config.json clip_outliers, for states; mean/std absolute actions then stay unclipped)")
    p.add_argument(*_flag("no-clip-outliers"), dest="clip_outliers", action="store_false",
                   help="do not clip normalized states (actions decode as the reference does)")
    p.add_argument(*_flag("preprocess-device"), default=None,
                   help="device that patchifies frames, e.g. cpu, cuda:0 (default: the model's device when it is a GPU)")
    p.add_argument(*_flag("dataset-path"), default=None, help="LeRobot dataset to replay (used when --model-path is absent)")
    p.add_argument(*_flag("modality-config-path"), default=None,
                   help="replay: a .json file of ModalityConfig fields or a .py file that registers one")
    p.add_argument(*_flag("execution-horizon"), type=int, default=None,
                   help="replay: steps to advance per get_action (default: the action horizon)")
    p.add_argument(*_flag("action-horizon"), type=int, default=16,
                   help="replay: action chunk length when the config is derived from the dataset (default 16)")
    p.add_argument(*_flag("replay-cache-mb"), type=float, default=None,
                   help="replay: MiB of episodes' actions kept read, least recently used dropped first (default 256)")
    p.add_argument(*_flag("host"), default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 for other machines)")
    p.add_argument(*_flag("port"), type=int, default=5555, help="port (default 5555)")
    _bool_flag(p, "strict", True, "validate observations and actions (default on)")
    _bool_flag(p, "use-sim-policy-wrapper", False, "accept flat video.*/state.* keys and return action.* keys")
    p.add_argument(*_flag("api-token"), default=os.environ.get("GR00T_API_TOKEN"),
                   help="require this token on every request (default: $GR00T_API_TOKEN)")
    p.add_argument(*_flag("allow-remote-kill"), action="store_true", help="let non-loopback peers without a token stop the server")
    p.add_argument(*_flag("curve-secret-key"), default=os.environ.get("GR00T_CURVE_SECRET_KEY"), metavar="FILE",
                   help="encrypt the connection with CURVE using this secret certificate (NAME.key_secret from "
                        "`gr00t-server keygen`; default: $GR00T_CURVE_SECRET_KEY); clients need NAME.key")
    p.add_argument(*_flag("authorized-keys"), default=os.environ.get("GR00T_AUTHORIZED_KEYS"), metavar="DIR",
                   help="with --curve-secret-key: admit only clients whose public .key files are in DIR (re-read when "
                        "it changes, no restart; default: $GR00T_AUTHORIZED_KEYS)")
    p.add_argument(*_flag("inference-mode"), default="pytorch", choices=INFERENCE_MODES, help="inference backend")
    p.add_argument(*_flag("onnx-dir"), default=None, help="exported ONNX sub-models (--inference-mode onnxruntime)")
    p.add_argument(*_flag("engine-dir"), default=None, help="TensorRT engines (--inference-mode tensorrt)")
    _bool_flag(p, "warmup", True, "run a sample observation through the model before binding (default on; compiles "
               "torch-compile mode and checks the backend at start-up)")
    p.add_argument(*_flag("max-batch-size"), type=int, default=1, help="batch get_action requests across clients (default 1: off)")
    from .serving.batching import DEFAULT_BATCH_TIMEOUT_MS

    p.add_argument(*_flag("batch-timeout-ms"), type=float, default=DEFAULT_BATCH_TIMEOUT_MS,
                   help="longest a partial batch waits for the clients still expected; the wait adapts below it to "
                        f"their observed arrival spread and the policy's call time (default {DEFAULT_BATCH_TIMEOUT_MS:g} ms)")
    from .serving.worker import DEFAULT_INLINE_BELOW_MS, INLINE_STREAK

    p.add_argument(*_flag("inline-below-ms"), type=float, default=DEFAULT_INLINE_BELOW_MS, metavar="MS",
                   help=f"once {INLINE_STREAK} get_action calls in a row each took under MS, run the next ones on the "
                        "socket thread while the policy worker is idle, saving two thread hand-offs (about 0.2 ms) per "
                        f"request for cheap policies; 0 turns this off (default {DEFAULT_INLINE_BELOW_MS:g})")
    p.add_argument(*_flag("metrics-port"), type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (needs gr00t-server[metrics]; default off)")
    p.add_argument(*_flag("max-message-mb"), type=int, default=256, help="refuse messages larger than this with an error reply naming the limit (default 256 MiB)")
    _add_limit_flags(p)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Per-request work limits (gr00t_server.serving.ServerLimits): a request over one gets a one-line error."""
    from .serving.limits import ServerLimits

    d = ServerLimits()
    p.add_argument(*_flag("max-rows"), type=int, default=d.max_rows,
                   help=f"batch rows one request may carry (arrays' first axis, language lists, replay batch_size; default {d.max_rows})")
    p.add_argument(*_flag("max-language-chars"), type=int, default=d.max_language_chars,
                   help=f"characters per language string (default {d.max_language_chars})")
    p.add_argument(*_flag("max-language-tokens"), type=int, default=d.max_language_tokens,
                   help=f"tokens per language string, by the policy's tokenizer (words and punctuation marks for a "
                        f"policy without one) (default {d.max_language_tokens})")
    p.add_argument(*_flag("max-cameras"), type=int, default=d.max_cameras, help=f"video keys per observation (default {d.max_cameras})")
    p.add_argument(*_flag("max-image-pixels"), type=int, default=d.max_image_pixels,
                   help=f"height x width of one image (default {d.max_image_pixels})")
    p.add_argument(*_flag("max-sessions"), type=int, default=d.max_sessions,
                   help=f"client sessions a stateful policy keeps (default {d.max_sessions}); when full, sessions used only once "
                        "are evicted first, least recently used first, then sessions used again; "
                        "an evicted session's get_action is an error until its client resets")
    p.add_argument(*_flag("session-idle-s"), type=float, default=d.session_idle_s,
                   help=f"evict a session unused this many seconds (default {d.session_idle_s:.0f})")
    p.add_argument(*_flag("max-client-queued-mb"), type=float, default=None,
                   help="request bytes one connection may have waiting for the policy beyond its first request (default 16)")
    p.add_argument(*_flag("max-queued-mb"), type=float, default=d.max_queued_bytes / (1024 * 1024),
                   help=f"request bytes waiting for the policy, all connections together; a request that finds none "
                        f"waiting is always taken (default {d.max_queued_bytes // (1024 * 1024)})")
    p.add_argument(*_flag("max-client-queued-requests"), type=int, default=d.max_client_queued_requests,
                   help=f"requests one connection may have waiting for their replies (a REQ client has one; "
                        f"default {d.max_client_queued_requests})")


def _server_limits(args: argparse.Namespace) -> Any:
    from .serving.limits import ServerLimits

    for flag, value in (("--max-client-queued-mb", args.max_client_queued_mb), ("--max-queued-mb", args.max_queued_mb)):
        if value is not None and not 0 < value < float("inf"):  # NaN too
            raise CliError(f"{flag} must be a finite number of MiB > 0, got {value}")
    queued = None if args.max_client_queued_mb is None else max(1, int(args.max_client_queued_mb * 1024 * 1024))
    try:
        return ServerLimits(
            max_rows=args.max_rows, max_language_chars=args.max_language_chars, max_language_tokens=args.max_language_tokens,
            max_cameras=args.max_cameras, max_image_pixels=args.max_image_pixels, max_sessions=args.max_sessions,
            session_idle_s=args.session_idle_s, max_client_queued_bytes=queued,
            max_client_queued_requests=args.max_client_queued_requests,
            max_queued_bytes=max(1, int(args.max_queued_mb * 1024 * 1024)),
        )
    except ValueError as exc:
        raise CliError(f"--{str(exc).replace('_', '-')}") from exc


def _add_checkpoint_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "make-test-checkpoint",
        help="write a random-weight checkpoint in the real N1.7 layout (for tests and demos)",
        description="Write a small random-weight GR00T N1.7 checkpoint (config, safetensors, processor, tokenizer).",
    )
    p.add_argument("output", help="output directory")
    p.add_argument(*_flag("size"), default="tiny", choices=["tiny", "small"], help="model size (default tiny)")
    p.add_argument(*_flag("seed"), type=int, default=0, help="weight seed (default 0)")
    p.add_argument(*_flag("embodiment"), default=None, choices=["libero", "metaworld", "new_embodiment", "pusht"],
                   help="write one tag with the key set of this gr00t-eval env (default: the new_embodiment and "
                   "libero_sim key sets)")
    p.add_argument(*_flag("dataset-path"), default=None,
                   help="write one tag with this recorded LeRobot dataset's keys, modality configs and statistics")
    p.add_argument(*_flag("embodiment-tag"), default=None,
                   help="the tag to write with --embodiment/--dataset-path (default new_embodiment); it needs one of them")
    p.add_argument(*_flag("overwrite"), action="store_true",
                   help="empty a non-empty output directory first (one holding an earlier test checkpoint is replaced "
                        "without it; any other is refused)")


def _add_keygen_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="write a CURVE key pair (NAME.key public, NAME.key_secret secret, mode 0600)",
        description="Write a ZeroMQ CURVE key pair in the zmq.auth certificate format: DIR/NAME.key (public: give it "
                    "to peers) and DIR/NAME.key_secret (secret, mode 0600: keep it on this machine).",
    )
    p.add_argument("directory", metavar="DIR", help="directory to write the two files into (created if missing)")
    p.add_argument(*_flag("name"), default="server", help="file name stem (default server; e.g. robot-07 for a client)")
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


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _replay_policy(args: argparse.Namespace, tag: Any) -> Tuple[Any, Optional[str]]:
    """The ReplayPolicy of --dataset-path and the tag of its --modality-config-path .py file (else None); `tag` None:
    the one tag that file registers."""
    from . import modality_configs as configs
    from .extras import require_lerobot_dataset
    from .policies.replay import ReplayPolicy

    cache = {}
    if args.replay_cache_mb is not None:  # before the dataset is read
        if not math.isfinite(args.replay_cache_mb) or not 0 < args.replay_cache_mb <= MAX_REPLAY_CACHE_MB:
            raise CliError(f"--replay-cache-mb must be in (0, {MAX_REPLAY_CACHE_MB}] MiB, got {args.replay_cache_mb}")
        cache["max_cached_bytes"] = max(1, int(args.replay_cache_mb * 2**20))
    if not 1 <= args.action_horizon <= MAX_ACTION_HORIZON:  # 100000000 built a delta list for minutes, unrefused
        raise CliError(f"--action-horizon must be a whole number of steps from 1 to {MAX_ACTION_HORIZON}, got "
                       f"{args.action_horizon}")
    dataset_path = Path(args.dataset_path)
    if not dataset_path.is_dir():
        raise CliError(f"--dataset-path {dataset_path} is not a directory")
    dataset = require_lerobot_dataset()(dataset_path)
    file_tag = None
    if args.modality_config_path:
        file_tag, modality = configs.load_modality_config_and_tag(args.modality_config_path, tag)
        print(f"Loaded modality config: {args.modality_config_path}")
    elif tag.value in configs.MODALITY_CONFIGS and _fits_dataset(configs.MODALITY_CONFIGS[tag.value], dataset):
        modality = configs.MODALITY_CONFIGS[tag.value]
        print(f"  Modality config: the built-in config of {tag.value} (the dataset has its keys)")
    else:
        modality = configs.derive_from_dataset(dataset, action_horizon=args.action_horizon)
        print(f"  Modality config: derived from {dataset_path}/meta/modality.json (action horizon {args.action_horizon})")
    horizon = args.execution_horizon
    if horizon is None:
        horizon = len(modality["action"].delta_indices)
    if horizon <= 0:
        raise CliError(f"--execution-horizon must be > 0, got {horizon}")
    return ReplayPolicy(dataset, modality, execution_horizon=horizon, strict=args.strict, max_rows=args.max_rows,
                        max_sessions=args.max_sessions, **cache), file_tag


MAX_REPLAY_CACHE_MB = 2**20  # a TiB: more is a typo, not a cache


def _fits_dataset(modality: Any, dataset: Any) -> bool:
    """A built-in config is used only when the dataset has every key it names."""
    wanted = {
        "video": set(dataset.video_keys),
        "state": set(dataset.state_keys),
        "action": set(dataset.action_keys),
    }
    return all(set(modality[m].modality_keys) <= keys for m, keys in wanted.items() if m in modality)


def _model_policy(args: argparse.Namespace, tag: Any) -> Any:
    model_path = args.model_path
    if os.path.isabs(model_path) and not os.path.exists(model_path):
        raise CliError(f"--model-path {model_path} does not exist")
    if args.inference_mode != "pytorch":  # before the checkpoint loads, which can take minutes
        from .backends import check_backend_before_load

        check_backend_before_load(args.inference_mode, onnx_dir=args.onnx_dir, engine_dir=args.engine_dir,
                                  device=args.device)
    from .policies.gr00t_policy import Gr00tPolicy

    try:
        policy = Gr00tPolicy(
            model_path=model_path, embodiment_tag=tag, device=args.device, strict=args.strict, dtype=args.dtype,
            clip_outliers=args.clip_outliers, preprocess_device=args.preprocess_device,
        )
    except ValueError as exc:
        if "is not supported by this checkpoint" not in str(exc):
            raise
        # The reference's several-line text, on one line so that the checkpoint's tags are not lost.
        raise CliError(" ".join(" ".join(line.split()) for line in str(exc).splitlines() if line.strip())) from exc
    if args.inference_mode != "pytorch":
        from .backends import apply_inference_mode

        apply_inference_mode(policy, args.inference_mode, onnx_dir=args.onnx_dir, engine_dir=args.engine_dir)
    if args.warmup:
        _warm_up(policy, args)
    return policy


def _warm_up(policy: Any, args: argparse.Namespace) -> None:
    """One sample get_action at batch 1 (and at --max-batch-size when batching) before the port opens."""
    from .backends.bench import warm_up

    sizes = (1,) if args.max_batch_size <= 1 else (1, args.max_batch_size)
    if args.inference_mode == "torch-compile":
        print("  Warm-up: compiling the DiT with torch.compile (can take minutes)...", flush=True)
    try:
        seconds = warm_up(policy, sizes)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"warm-up failed: the {args.inference_mode} policy could not answer a sample observation "
            f"({type(exc).__name__}: {reason}); --no-warmup skips this check"
        ) from exc
    print("  Warm-up: " + ", ".join(f"batch {size} in {s:.2f} s" for size, s in seconds.items()), flush=True)


# Flags that only one kind of policy reads, with their defaults: given with the other kind they do nothing.
_REPLAY_ONLY = {"dataset_path": None, "modality_config_path": None, "execution_horizon": None, "action_horizon": 16,
                "replay_cache_mb": None}
_MODEL_ONLY = {"device": None, "dtype": None, "clip_outliers": None, "preprocess_device": None, "inference_mode": "pytorch",
               "onnx_dir": None, "engine_dir": None, "warmup": True}


def _ignored_flags(args: argparse.Namespace) -> List[str]:
    """The flags given that the chosen policy (a model with --model-path, else replay) does not read."""
    unused = _REPLAY_ONLY if args.model_path else _MODEL_ONLY
    given = [(name, getattr(args, name)) for name, default in unused.items() if getattr(args, name) != default]
    return [("--no-" if value is False else "--") + name.replace("_", "-") for name, value in given]


def _check_server_flags(args: argparse.Namespace) -> None:
    """Refuse a server flag out of range before the model loads (PolicyServer's own check, in flag names)."""
    from .serving.server import check_server_settings

    try:
        check_server_settings(
            spell=lambda name: "--" + name.replace("_", "-"), port=args.port, metrics_port=args.metrics_port,
            max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
            inline_below_ms=args.inline_below_ms,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.metrics_port and args.metrics_port == args.port:  # found before the model loads, not after (minutes)
        raise CliError(f"--metrics-port {args.metrics_port} is also --port: the metrics endpoint needs a port of its own")
    _check_bind_host(args.host)
    if args.api_token is not None and not args.api_token.strip():  # `--api-token "$TOKEN"` with TOKEN unset
        raise CliError("--api-token (or $GR00T_API_TOKEN) is empty: an unset variable? Leave it out (and unset "
                       "GR00T_API_TOKEN) to serve without a token")
    if not 1 <= args.max_message_mb <= 2**43:
        raise CliError(f"--max-message-mb must be a whole number of MiB >= 1, got {args.max_message_mb}")


def _check_bind_host(host: str) -> None:
    """CliError for a --host that cannot be bound (not an address of this machine's form, nor a resolvable name),
    before the model loads: ZeroMQ only says so at bind time, after a load that takes minutes for a 3B model."""
    import ipaddress
    import socket

    from gr00t_client.client import normalize_host

    bare = normalize_host(host)
    if bare in ("*", "0.0.0.0", "::"):
        return
    try:
        ipaddress.ip_address(bare)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(bare, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise CliError(f"--host {host}: not an IP address, and the name does not resolve ({exc}); pass an address "
                       "of this machine, 0.0.0.0 or :: for all, or 127.0.0.1 for loopback only") from None


def _check_bind_address(host: str, port: int, flag: str = "--port") -> None:
    """CliError for an IP --host that is not this machine's, or a --port (or --metrics-port: `flag`) in use, found by
    binding a plain socket there (and closing it) before the model loads: ZeroMQ (and the metrics endpoint) said so
    only after the load and warm-up (minutes for a 3B model). Names are left to ZeroMQ; any other failure too (it says
    what it meets at its own bind)."""
    import errno
    import ipaddress
    import socket

    from gr00t_client.client import normalize_host

    bare = normalize_host(host)
    address = "0.0.0.0" if bare == "*" else bare
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ's listener: a TIME_WAIT port binds
        probe.bind((address, port))
        probe.listen(1)  # EADDRINUSE may come only here (another listener with SO_REUSEADDR)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"{flag} {port}: the port is in use on {host} (another server?); pass another {flag}, or "
                           "stop the process holding it") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise CliError(f"--host {host}: not an address of this machine; pass one of its addresses, 0.0.0.0 or :: "
                           "for all, or 127.0.0.1 for loopback only") from None
    finally:
        probe.close()


MAX_ACTION_HORIZON = 4096  # replay's derived chunk length: N1.7 checkpoints act 16-40 steps at a time

LOW_OPEN_FILE_LIMIT = 1024  # below this many open files (after raising the soft limit to the hard one), serve warns


def _raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit (a server holds one per client connection;
    at the soft limit, often 1024, libzmq stops accepting connections without a word and spins on the listener)."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d (%s); the server accepts about %d "
                           "clients at once", soft, target, exc, max(0, soft - 64))
            return
    if soft != resource.RLIM_INFINITY and soft < LOW_OPEN_FILE_LIMIT:  # a hard limit as low (ulimit -n 64 ...)
        logger.warning("the open-file limit is %d (its hard limit too): the server accepts about %d clients at once, "
                       "and past that libzmq spins on its listener without a word; raise it (ulimit -Hn, or "
                       "LimitNOFILE= in a systemd unit)", soft, max(0, soft - 64))


def serve(args: argparse.Namespace, leave_when_stopped: bool = False) -> int:
    """`gr00t-server serve`; with `leave_when_stopped` (the program) the process ends once the server has stopped."""
    # Until the server runs (and installs its own graceful handlers), SIGTERM stops the start-up like Ctrl-C: one line,
    # exit 130 (it killed the process silently with 143 while the model loaded).
    from .threads import sigterm_as_interrupt

    with sigterm_as_interrupt():
        server = _start_server(args)
    try:
        server.run()
    except KeyboardInterrupt:
        print("\nShutting down server...")
    if leave_when_stopped or server.left_policy_call_running:
        # The port is free and the totals are logged. The interpreter's teardown of torch took 1-5 s more, and a
        # second Ctrl-C or SIGTERM in it ended a clean stop with 130/143/129. A policy call the stop gave up on is
        # still inside torch on a worker thread: an interpreter exiting under it aborts in C++ ("terminate called
        # without an active exception", exit 134). So leave now, logs flushed.
        # atexit hooks (a user's, coverage's) still run when no call is left inside torch.
        _leave_now(0, run_exit_hooks=not server.left_policy_call_running)
    return 0


def _leave_now(code: int, run_exit_hooks: bool = False) -> None:
    """End the process with `code` at once: stop signals ignored, logs and standard streams flushed, the atexit hooks
    run when `run_exit_hooks`, no module teardown."""
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    if run_exit_hooks:
        atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):  # None when the launcher closed it (`>&-`): a clean stop still exits 0
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone (EPIPE), a stream closed
                pass
    os._exit(code)


def _start_server(args: argparse.Namespace) -> Any:
    """Load the policy and bind the server (serve's start-up)."""
    from gr00t_client import EmbodimentTag

    from .server import PolicyServer

    # with the time: a server's log is read against a robot's incident
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s:%(name)s:%(message)s")
    if args.log_level != "DEBUG":  # torch's own INFO lines (e.g. FakeTensor cache stats at exit) are not ours to show
        logging.getLogger("torch").setLevel(logging.WARNING)
    _raise_open_file_limit()
    tag_given = args.embodiment_tag is not None
    args.embodiment_tag = args.embodiment_tag if tag_given else "new_embodiment"
    # A replayed .py modality config registers its own tag (any name): served under it, checked when it is loaded.
    python_config = not args.model_path and Path(args.modality_config_path or "").suffix == ".py"
    try:
        tag = EmbodimentTag.resolve(args.embodiment_tag)
    except ValueError as exc:
        if not (args.model_path or python_config) or not str(args.embodiment_tag).strip():
            known = ", ".join(member.value for member in EmbodimentTag)
            raise CliError(f"{str(exc).splitlines()[0]}; known tags: {known}") from exc
        # A checkpoint-internal tag (no public enum): Gr00tPolicy checks it against the checkpoint, as export does;
        # a .py modality config's tag is checked against the tags the file registers.
        tag = str(args.embodiment_tag).strip()
    tag_name, tag_value = getattr(tag, "name", tag), getattr(tag, "value", tag)
    if not args.model_path and not args.dataset_path:
        raise CliError("either --model-path or --dataset-path must be provided")
    ignored = _ignored_flags(args)
    if ignored:
        logger.warning("%s: ignored; %s", ", ".join(ignored), "they apply to replay (--dataset-path without --model-path), "
                       "and this serves --model-path" if args.model_path else "they apply to --model-path, and this replays "
                       "--dataset-path")
    if args.model_path:
        # An export folder the chosen inference mode does not read is served without a word otherwise (PyTorch).
        for flag, value, mode in (("--onnx-dir", args.onnx_dir, "onnxruntime"), ("--engine-dir", args.engine_dir, "tensorrt")):
            if value is not None and args.inference_mode != mode:
                logger.warning("%s %s: ignored; it is read with --inference-mode %s, and this serves --inference-mode %s",
                               flag, value, mode, args.inference_mode)
        args.device = args.device or _default_device()  # only here: replay never touches torch, which this imports
    print("Starting GR00T inference server...")
    print(f"  Embodiment tag: {tag_name} ({tag_value})")
    print(f"  Model path: {args.model_path}")
    if not args.model_path:
        print(f"  Dataset path: {args.dataset_path}")
    print(f"  Device: {args.device if args.model_path else 'n/a (replay)'}")
    print(f"  Inference mode: {args.inference_mode if args.model_path else 'n/a (replay)'}")
    print(f"  Host: {args.host}")
    print(f"  Port: {args.port}")
    curve = _curve_settings(args)
    if curve is not None:
        print(f"  Encryption: CURVE, server public key {curve.public_key.decode()} ({curve.fingerprint})")
        print(f"  Client keys: {'only those in ' + str(curve.authorized_keys) if curve.authorized_keys else 'any'}")
    limits = _server_limits(args)  # before the model loads: a bad flag fails at once
    _check_server_flags(args)
    if args.metrics_port is not None:
        from .serving.metrics import require_prometheus

        try:
            require_prometheus()
        except ImportError as exc:
            raise CliError(str(exc)) from exc
    if args.model_path:
        _check_bind_address(args.host, args.port)  # before the load (minutes): a replay's load is quick, ZeroMQ says it
        if args.metrics_port:
            _check_bind_address(args.host, args.metrics_port, "--metrics-port")
        # The tag as typed: Gr00tPolicy serves an exact checkpoint tag first, then a built-in tag by any spelling (the
        # enum first made an N1.6-era checkpoint tag 'libero_panda' serve libero_sim, as the Python API did not).
        policy = _model_policy(args, str(args.embodiment_tag).strip())
        served = getattr(policy, "embodiment_tag_value", tag_value)
        if served != tag_value:
            print(f"  Embodiment tag served: {served} (the checkpoint's own tag)")
        tag_value = served
    else:
        policy, file_tag = _replay_policy(args, tag if tag_given or not python_config else None)
        if file_tag is not None and file_tag != tag_value:
            print(f"  Embodiment tag served: {file_tag} (the one {args.modality_config_path} registers)")
            tag_value = file_tag
    if args.use_sim_policy_wrapper:
        from .policies.sim_wrapper import Gr00tSimPolicyWrapper

        policy = Gr00tSimPolicyWrapper(policy, strict=args.strict)
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_token=args.api_token,
        curve_secret_key=args.curve_secret_key,
        authorized_keys=args.authorized_keys,
        allow_remote_kill=args.allow_remote_kill,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        inline_below_ms=args.inline_below_ms,
        embodiment_tag=tag_value,
        limits=limits,
        metrics_port=args.metrics_port,
    )
    if args.max_batch_size > 1 and not server.batching_enabled:
        from .serving.sessions import keeps_sessions

        why = "keeps a session per client" if keeps_sessions(policy) else "does not declare supports_batching"
        logger.warning("--max-batch-size %d: ignored; %s %s, so every request is served alone", args.max_batch_size,
                       type(policy).__name__, why)
    try:
        server.start()
    except (OSError, ImportError) as exc:
        server.close()
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        server.close()
        raise
    return server


def keygen(args: argparse.Namespace) -> int:
    from gr00t_client.curve import key_fingerprint, load_public_key

    from .curve import generate_certificates

    if not str(args.directory).strip():  # '' is not the current folder by accident
        raise CliError(f"DIRECTORY must name a folder (use . for the current one), got {args.directory!r}")
    folder = os.path.expanduser(str(args.directory))
    if os.path.exists(folder) and not os.path.isdir(folder):  # it said "[Errno 17] File exists"
        raise CliError(f"DIRECTORY {args.directory} is a file, not a folder: name a folder for the key pair")
    public_path, secret_path = generate_certificates(args.directory, args.name, overwrite=args.force)
    print(f"Public key:  {public_path}  (copy to peers: clients pass it as --server-public-key, servers keep "
          f"client keys in their --authorized-keys directory)")
    print(f"Secret key:  {secret_path}  (mode 0600; keep it on this machine)")
    print(f"Fingerprint: {key_fingerprint(load_public_key(str(public_path)))}")
    return 0


def _curve_settings(args: argparse.Namespace) -> Any:
    """The serve command's CURVE config (checked before the model loads), or None for plaintext."""
    if not args.curve_secret_key:
        if args.authorized_keys:
            raise CliError("--authorized-keys (or $GR00T_AUTHORIZED_KEYS) needs --curve-secret-key (or "
                           "$GR00T_CURVE_SECRET_KEY): client keys are checked in the CURVE handshake")
        return None
    from .curve import CurveServerConfig

    try:
        return CurveServerConfig.load(args.curve_secret_key, args.authorized_keys,
                                      names=("--curve-secret-key", "--authorized-keys"))
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from exc


def make_test_checkpoint(args: argparse.Namespace) -> int:
    from gr00t_client import EmbodimentTag

    from .test_checkpoint import make_test_checkpoint as write_checkpoint

    if not 0 <= args.seed < 2**63:  # checked before any file is written (numpy refused it after the weights)
        raise CliError(f"--seed must be a whole number from 0 to 2**63 - 1, got {args.seed}")
    if args.embodiment_tag is not None and not args.embodiment_tag.strip():
        raise CliError("--embodiment-tag must not be empty (leave it out for new_embodiment)")

    if args.embodiment is None and args.dataset_path is None:
        if args.embodiment_tag is not None:  # the default checkpoint's two tags would silently replace it
            raise CliError(f"--embodiment-tag {args.embodiment_tag} needs --embodiment or --dataset-path (the key set "
                           f"to write under that tag), e.g. --embodiment new_embodiment --embodiment-tag "
                           f"{args.embodiment_tag}; without them the checkpoint holds new_embodiment and libero_sim")
        path = write_checkpoint(args.output, size=args.size, seed=args.seed, overwrite=args.overwrite)
        print(f"Wrote {args.size} test checkpoint to {path or args.output}")
        return 0
    tag = (args.embodiment_tag or "new_embodiment").strip()
    try:  # a built-in tag by any spelling ('LIBERO_SIM', 'Libero_Sim') is written as its value, with its projector
        tag = EmbodimentTag.resolve(tag).value
    except ValueError:
        pass  # a tag of the user's own robot stays as written
    path = write_checkpoint(args.output, size=args.size, seed=args.seed, embodiment_tags=[tag],
                            embodiment=args.embodiment, dataset_path=args.dataset_path, overwrite=args.overwrite)
    source = f"dataset {args.dataset_path}" if args.dataset_path else f"the {args.embodiment} env"
    print(f"Wrote {args.size} test checkpoint to {path} (tag {tag}, keys of {source})")
    return 0


# Errors that describe a user's input (paths, tags, checkpoints, backends) rather than a bug in this program.
_USER_ERROR_NAMES = {"CheckpointError", "CheckpointKeyError", "TokenizerNotFoundError", "DatasetError"}


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a Ctrl-C (and gr00t-eval does)

# What to check when a command runs out of memory, in the flags that command has.
_MEMORY_HINTS = {
    "serve": "the checkpoint (--model-path, --dtype) or dataset (--dataset-path) being loaded may not fit in this "
             "machine's memory; with batching on, a smaller --max-batch-size needs less",
    "export": "check the sizes given (--image-size, --batch-size)",
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
    stop_signals = ProgramStopSignals()
    try:
        return _main(argv)
    finally:
        stop_signals.finish(ignore_from_now_on=argv is None)


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
        print(f"gr00t-server {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the server was up (a running server stops cleanly and exits 0)
        print(f"gr00t-server {command}: interrupted" if command else "gr00t-server: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        # str(KeyError) quotes its message; the message itself is what the user should read
        text = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        message = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if isinstance(exc, MemoryError):
            message = f"out of memory ({message}): {_MEMORY_HINTS.get(command, 'the files it loads may be too large for this machine')}"
        print(f"gr00t-server {command}: error: {message}", file=sys.stderr)
        if os.environ.get("GR00T_DEBUG") or getattr(args, "log_level", None) == "DEBUG":
            raise  # the traceback too, as gr00t-eval --log-level DEBUG gives
        return 2


if __name__ == "__main__":
    sys.exit(main())
