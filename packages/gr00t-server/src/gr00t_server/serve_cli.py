"""`gr00t-server serve`: check the flags, load the policy, bind the server and run it until it is stopped."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from gr00t_client.process_limits import open_descriptor_count, resource_limits, shown_limit

from .cli_errors import CliError, refuse_blank_paths
from .serve_checks import (
    _check_server_flags, _curve_settings, _hold_bind_addresses, _ignored_flags, _server_limits,
    _unread_server_flags,
)
from .serve_policy import _default_device, _model_policy, _replay_policy, resolve_serve_dtype

logger = logging.getLogger("gr00t_server")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())

LOW_OPEN_FILE_LIMIT = 1024  # below this many open files (after raising the soft limit to the hard one), serve warns


# serve's path flags and what each takes, for the refusal of a blank one
_SERVE_PATHS = {
    "model_path": "a checkpoint directory or Hugging Face id (leave the flag out to replay --dataset-path)",
    "dataset_path": "a LeRobot dataset directory",
    "modality_config_path": "a .json or .py modality config file (leave the flag out for the built-in or derived one)",
    "onnx_dir": "the folder `gr00t-server export` wrote",
    "engine_dir": "the folder `gr00t-server build-engine` wrote",
}


def _tag_label(value: str) -> str:
    """'NEW_EMBODIMENT (new_embodiment)' for a built-in tag; another (a checkpoint's or a .py config's) by its value."""
    from gr00t_client import EmbodimentTag

    try:
        return f"{EmbodimentTag(value).name} ({value})"
    except ValueError:
        return value


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
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d (%s)", soft, target, exc)


def _warn_of_low_open_file_limit() -> None:
    """Once the server is bound: warn when the open-file limit leaves room for few clients, with about how many. Each
    client's connection holds one descriptor; those open now (the policy's, ZeroMQ's, the listener) stay open."""
    limits = resource_limits("RLIMIT_NOFILE")
    if limits is None or limits[0] is None or limits[0] >= LOW_OPEN_FILE_LIMIT:
        return
    soft, hard = limits
    which = "its hard limit too" if soft == hard else f"its hard limit is {shown_limit(hard)}"
    held = open_descriptor_count()
    accepted = ("fewer clients at once than that" if held is None else
                f"about {max(0, soft - held)} clients at once ({held} descriptors are the server's own)")
    logger.warning("the open-file limit is %d (%s): the server accepts %s, and past that libzmq spins on its "
                   "listener without a word; raise it (ulimit -Hn, or LimitNOFILE= in a systemd unit)", soft, which,
                   accepted)


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


def _warn_of_secret_on_command_line(curve_secret_key: Optional[str]) -> None:
    """Warn when --curve-secret-key was given a z85 secret key itself: other local users can read it in ps."""
    from gr00t_client.cli_flags import secret_on_command_line_warning

    warning = secret_on_command_line_warning("--curve-secret-key", "GR00T_CURVE_SECRET_KEY", curve_secret_key)
    if warning is not None:
        logger.warning("%s", warning)


def _warn_of_unread_server_flags(args: argparse.Namespace, policy: Any, batching: bool) -> None:
    """Warn of the batching and session flags given that this policy and server never read."""
    from .serving.sessions import keeps_sessions

    sessions = keeps_sessions(policy)
    if args.max_batch_size > 1 and not batching:
        why = "keeps a session per client" if sessions else "does not declare supports_batching"
        logger.warning("--max-batch-size %d: ignored; %s %s, so every request is served alone", args.max_batch_size,
                       type(policy).__name__, why)
    for warning in _unread_server_flags(args, type(policy).__name__, batching, sessions):
        logger.warning("%s", warning)


def _load_policy(args: argparse.Namespace, tag: Any, tag_given: bool, python_config: bool) -> tuple[Any, str]:
    """The policy serve serves (the checkpoint's or the replay's, wrapped for sim when asked) and the tag it serves."""
    tag_value = getattr(tag, "value", tag)
    if args.model_path:
        # The tag as typed: Gr00tPolicy serves an exact checkpoint tag first, then a built-in tag by any spelling (the
        # enum first made an N1.6-era checkpoint tag 'libero_panda' serve libero_sim, as the Python API did not).
        policy = _model_policy(args, str(args.embodiment_tag).strip(), tag_given)
        served = getattr(policy, "embodiment_tag_value", tag_value)
        source = " (the checkpoint's own tag)" if served != tag_value else ""
    else:
        policy, file_tag = _replay_policy(args, tag if tag_given or not python_config else None)
        served = file_tag if file_tag is not None else tag_value
        source = f" (the one {args.modality_config_path} registers)" if served != tag_value else ""
    print(f"  Embodiment tag: {_tag_label(served)}{source}")  # once known: a file or checkpoint may name its own
    if args.use_sim_policy_wrapper:
        from .policies.sim_wrapper import Gr00tSimPolicyWrapper

        policy = Gr00tSimPolicyWrapper(policy, strict=args.strict)
    return policy, served


def _warn_if_pid_one(pid: int) -> None:
    """Warn when serve runs as PID 1 (a container without an init): the kernel drops a signal PID 1 has no handler
    for, so a stop that came before serve's handlers were in place was lost, and the server ran on until killed."""
    if pid == 1:
        logger.warning("serve runs as PID 1 (a container started without an init): the kernel drops a stop signal "
                       "(docker stop's SIGTERM, Ctrl-C) that comes before serve's handlers are in place, in its first "
                       "tenth of a second or so, and the server then runs on until it is killed; start the container "
                       "with an init (docker run --init, or tini as its entrypoint)")


def _replay_tag_hint(args: argparse.Namespace) -> str:
    """How a replay serves a tag of its own, for the refusal of one that is not built in."""
    if args.model_path or not args.dataset_path:
        return ""
    config = f" ({args.modality_config_path} is not one: a .json config carries no tag)" if args.modality_config_path else ""
    return (f". A replay serves a tag of its own only from a .py --modality-config-path that calls "
            f"register_modality_config({str(args.embodiment_tag).strip()!r}, configs){config}")


def _start_server(args: argparse.Namespace) -> Any:
    """Load the policy and bind the server (serve's start-up)."""
    from gr00t_client import EmbodimentTag

    from .server import PolicyServer

    # with the time: a server's log is read against a robot's incident
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s:%(name)s:%(message)s")
    if args.log_level != "DEBUG":  # torch's own INFO lines (e.g. FakeTensor cache stats at exit) are not ours to show
        logging.getLogger("torch").setLevel(logging.WARNING)
    _raise_open_file_limit()
    _warn_if_pid_one(os.getpid())
    # Each is read for its truth below: a blank --model-path ("$CKPT", CKPT unset) served a replay of the dataset
    refuse_blank_paths(args, _SERVE_PATHS)
    tag_given = args.embodiment_tag is not None
    args.embodiment_tag = args.embodiment_tag if tag_given else "new_embodiment"
    # A replayed .py modality config registers its own tag (any name): served under it, checked when it is loaded.
    python_config = not args.model_path and Path(args.modality_config_path or "").suffix == ".py"
    try:
        tag = EmbodimentTag.resolve(args.embodiment_tag)
    except ValueError as exc:
        if not (args.model_path or python_config) or not str(args.embodiment_tag).strip():
            known = ", ".join(member.value for member in EmbodimentTag)
            raise CliError(f"{str(exc).splitlines()[0]}; known tags: {known}{_replay_tag_hint(args)}") from exc
        # A checkpoint-internal tag (no public enum): Gr00tPolicy checks it against the checkpoint, as export does;
        # a .py modality config's tag is checked against the tags the file registers.
        tag = str(args.embodiment_tag).strip()
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
    print(f"  Model path: {args.model_path}")
    if not args.model_path:
        print(f"  Dataset path: {args.dataset_path}")
    print(f"  Device: {args.device if args.model_path else 'n/a (replay)'}")
    print(f"  Inference mode: {args.inference_mode if args.model_path else 'n/a (replay)'}")
    print(f"  Dtype: {resolve_serve_dtype(args) if args.model_path else 'n/a (replay)'}")
    print(f"  Host: {args.host}")
    print(f"  Port: {args.port}")
    curve = _curve_settings(args)
    _warn_of_secret_on_command_line(args.curve_secret_key)
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
    # Before either load: a model's takes minutes, and a replay's runs a .py modality config and hashes every data file.
    # Held until the server binds them: a second server started meanwhile is refused now, not after its own load.
    held = _hold_bind_addresses(args.host, args.port, args.metrics_port)
    try:
        policy, tag_value = _load_policy(args, tag, tag_given, python_config)
    finally:
        for placeholder in held:  # free for server.start() to bind (the server is made without binding, at once)
            placeholder.close()
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_token=args.api_token,
        # the key pair read above: its file read again warned again (a secret readable by others, twice)
        curve_secret_key=curve.secret_key if curve is not None else None,
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
    _warn_of_unread_server_flags(args, policy, server.batching_enabled)
    try:
        server.start()
    except (OSError, ImportError) as exc:
        server.close()
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        server.close()
        raise
    _warn_of_low_open_file_limit()
    return server
