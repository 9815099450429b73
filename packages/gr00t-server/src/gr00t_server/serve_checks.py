"""`gr00t-server serve`'s checks of its flags before the model loads (minutes for a 3B model): limits, CURVE keys,
flags the chosen policy ignores, ports and the bind address, each refused with a CliError that names the flag."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any, List, Optional, Tuple

from .cli_errors import CliError


MIB = 1024 * 1024
# Byte counts are held in 64 bits (ZeroMQ's, the server's): a MiB flag's bytes must come under 2**63.
_BYTES_CAP_MIB = 2**63 // MIB


def _server_limits(args: argparse.Namespace) -> Any:
    from .serving.limits import ServerLimits

    for flag, value in (("--max-client-queued-mb", args.max_client_queued_mb), ("--max-queued-mb", args.max_queued_mb)):
        if value is not None and not 0 < value < _BYTES_CAP_MIB:  # NaN too
            raise CliError(f"{flag} must be a number of MiB > 0 and below {_BYTES_CAP_MIB} (2**63 bytes), got {value}")
    queued = None if args.max_client_queued_mb is None else max(1, int(args.max_client_queued_mb * MIB))
    try:
        return ServerLimits(
            max_rows=args.max_rows, max_language_chars=args.max_language_chars, max_language_tokens=args.max_language_tokens,
            max_cameras=args.max_cameras, max_image_pixels=args.max_image_pixels, max_sessions=args.max_sessions,
            session_idle_s=args.session_idle_s, max_client_queued_bytes=queued,
            max_client_queued_requests=args.max_client_queued_requests,
            max_queued_bytes=max(1, int(args.max_queued_mb * MIB)),
        )
    except ValueError as exc:  # "max_rows must be ..." in the flag's name: "--max-rows must be ..."
        field, _, rest = str(exc).partition(" ")
        raise CliError(f"--{field.replace('_', '-')} {rest}") from exc


# Flags that only one kind of policy reads, with their defaults: given with the other kind they do nothing.
_REPLAY_ONLY = {"dataset_path": None, "modality_config_path": None, "execution_horizon": None, "action_horizon": None,
                "replay_cache_mb": None}
_MODEL_ONLY = {"device": None, "dtype": None, "clip_outliers": None, "preprocess_device": None, "inference_mode": "pytorch",
               "onnx_dir": None, "engine_dir": None, "warmup": True, "max_denoising_steps": None,
               "allow_empty_instruction": False}


def _ignored_flags(args: argparse.Namespace) -> List[str]:
    """The flags given that the chosen policy (a model with --model-path, else replay) does not read."""
    unused = _REPLAY_ONLY if args.model_path else _MODEL_ONLY
    given = [(name, getattr(args, name)) for name, default in unused.items() if getattr(args, name) != default]
    return [("--no-" if value is False else "--") + name.replace("_", "-") for name, value in given]


def _unread_server_flags(args: argparse.Namespace, policy_name: str, batching: bool, sessions: bool) -> List[str]:
    """Warnings for server flags given (not left at their default) that this server never reads: a batch's wait with
    batching off, session limits for a policy that keeps no sessions."""
    from .serving.batching import DEFAULT_BATCH_TIMEOUT_MS
    from .serving.limits import ServerLimits

    unread = []
    if not batching and args.batch_timeout_ms != DEFAULT_BATCH_TIMEOUT_MS:
        unread.append(f"--batch-timeout-ms {args.batch_timeout_ms:g}: ignored; it bounds how long a batch waits, and "
                      "this server batches no requests")
    d = ServerLimits()
    given = [flag for flag, value, default in (("--max-sessions", args.max_sessions, d.max_sessions),
                                               ("--session-idle-s", args.session_idle_s, d.session_idle_s))
             if value != default]
    if given and not sessions:
        unread.append(f"{', '.join(given)}: ignored; {policy_name} keeps no client sessions for them to limit")
    if args.allow_remote_kill:
        unread.extend(_unread_remote_kill(args.host, args.api_token))
    return unread


def _unread_remote_kill(host: str, api_token: Optional[str]) -> List[str]:
    """Why --allow-remote-kill changes nothing, if it does not: it only lets tokenless non-loopback peers kill, and a
    token refuses every tokenless request (kill too) while a loopback --host admits no non-loopback peer."""
    from .serving.endpoints import is_loopback_host

    if api_token is not None:
        return ["--allow-remote-kill: ignored; with --api-token any peer holding the token may stop the server, and no "
                "peer without it may"]
    if is_loopback_host(host):
        return [f"--allow-remote-kill: ignored; --host {host} is a loopback address, so no non-loopback peer can "
                "connect (loopback peers may always stop the server)"]
    return []


def _check_server_flags(args: argparse.Namespace) -> None:
    """Refuse a server flag out of range before the model loads (PolicyServer's own check, in flag names)."""
    from .serving.server import MAX_MESSAGE_BYTES_CAP, check_server_settings

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
    _refuse_blank("--api-token", "GR00T_API_TOKEN", args.api_token, "serve without a token")
    _refuse_non_utf8_token(args.api_token)
    _refuse_untypable_token(args.api_token)
    # a model's own range is read from its config.json (Gr00tPolicy, before the weights load); < 1 is never in it
    if args.model_path and args.max_denoising_steps is not None and args.max_denoising_steps < 1:
        raise CliError("--max-denoising-steps must be a whole number >= 1 (from the checkpoint's "
                       f"num_inference_timesteps to its num_timestep_buckets), got {args.max_denoising_steps}")
    top_mb = MAX_MESSAGE_BYTES_CAP // MIB
    if not 1 <= args.max_message_mb <= top_mb:
        raise CliError(f"--max-message-mb must be a whole number of MiB from 1 to {top_mb}, got {args.max_message_mb}")


def _token_source(token: str) -> str:
    return "$GR00T_API_TOKEN" if token == os.environ.get("GR00T_API_TOKEN") else "--api-token"


def _refuse_non_utf8_token(token: Optional[str]) -> None:
    """CliError for a token that is not UTF-8 text (bytes from a Latin-1 shell or a binary file): no request could
    carry it, and PolicyServer refuses it only once the model has loaded."""
    if token is None:
        return
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"{_token_source(token)} must be UTF-8 text; it has bytes that are not (a token from a Latin-1 "
                       "shell or a binary file?)") from None


def _refuse_untypable_token(token: Optional[str]) -> None:
    """CliError for a token with whitespace at an end or a control character (PolicyServer's check, before the model
    loads, naming where the token came from)."""
    from .serving.messages import token_shape_problem

    problem = None if token is None else token_shape_problem(token, _token_source(token))
    if problem is not None:
        raise CliError(problem)


def _refuse_blank(flag: str, variable: str, value: Optional[str], without: str) -> None:
    """CliError for a flag given blank, which would otherwise mean something else: no token, no CURVE, the working
    directory (gr00t_client.cli_flags.blank_value_problem)."""
    from gr00t_client.cli_flags import blank_value_problem

    problem = blank_value_problem(flag, variable, value, without)
    if problem is not None:
        raise CliError(problem)


def _check_bind_host(host: str) -> None:
    """CliError for a --host that cannot be bound (not an address of this machine's form, nor a resolvable name),
    before the model loads: ZeroMQ only says so at bind time, after a load that takes minutes for a 3B model."""
    import ipaddress

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


def _hold_bind_address(host: str, port: int, flag: str = "--port",
                       name_family: int = socket.AF_INET) -> Optional[socket.socket]:
    """A socket bound (not listening) to the address the server will bind, held until just before that bind (the caller
    closes it), from before the model or the replay loads. CliError for a --host that is not this machine's, or a
    --port (or --metrics-port: `flag`) in use: ZeroMQ (and the metrics endpoint) said so only after the load and
    warm-up (minutes for a 3B model), or after a replay ran its .py modality config and hashed every data file; and a
    port only checked let a second server started meanwhile load its model too. None where only the ends of closed
    connections (TIME_WAIT, a server just stopped) keep the port: it is checked as ZeroMQ binds it, not held. Any other
    failure is left to that bind (it says what it meets). `name_family`: what a name is resolved in; AF_INET as ZeroMQ,
    which binds a name's first IPv4 address (its IPv6 is on only for an IPv6 literal); AF_UNSPEC as the metrics
    endpoint, which binds a name's first address of any family."""
    import errno

    family, address = _bind_target(host, port, name_family)
    placeholder = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Bound, not listening: a client connecting meanwhile is refused, and ZeroMQ asks again every 100 ms (a
        # listener never accept()ing took its connect, and dropped later ones, which the kernel retries after 1, 3,
        # 7, 15 s...). Without SO_REUSEADDR, so that a second serve's bind (with or without) fails too.
        placeholder.bind(address)
        return placeholder
    except OSError as exc:
        placeholder.close()
        if exc.errno == errno.EADDRINUSE and _binds_as_zeromq(family, address):
            return None  # only TIME_WAIT ends, which ZeroMQ's SO_REUSEADDR binds over: nothing else holds the port
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"{flag} {port}: the port is in use on {host} (another server?); pass another {flag}, or "
                           "stop the process holding it") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise CliError(f"--host {host}: not an address of this machine; pass one of its addresses, 0.0.0.0 or :: "
                           "for all, or 127.0.0.1 for loopback only") from None
    return None


def _binds_as_zeromq(family: int, address: Any) -> bool:
    """Whether a listener binds `address` as ZeroMQ's does (SO_REUSEADDR, over TIME_WAIT ends; EADDRINUSE may come
    only at listen(), from another listener with SO_REUSEADDR); closed at once."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
            probe.listen(1)
        except OSError:
            return False
    return True


def _hold_bind_addresses(host: str, port: int, metrics_port: Optional[int]) -> List[socket.socket]:
    """The server's port and its metrics port (when one is given) held by `_hold_bind_address`; both closed on a
    refusal of either."""
    held = [_hold_bind_address(host, port)]
    if metrics_port:
        try:
            held.append(_hold_bind_address(host, metrics_port, "--metrics-port", socket.AF_UNSPEC))
        except BaseException:
            if held[0] is not None:
                held[0].close()
            raise
    return [placeholder for placeholder in held if placeholder is not None]


def _bind_target(host: str, port: int, name_family: int) -> Tuple[int, Any]:
    """(family, socket address) that binding `host` (an IP address, '*', or a name resolved in `name_family`) and
    `port` binds; CliError for a name without such an address."""
    from gr00t_client.client import is_ipv6_literal, normalize_host

    bare = normalize_host(host)
    address = "0.0.0.0" if bare == "*" else bare
    family = socket.AF_INET6 if is_ipv6_literal(address) else name_family
    try:
        bound_family, _, _, _, sockaddr = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        kind = "an IPv4 address" if family == socket.AF_INET else "an address"
        raise CliError(f"--host {host}: the name does not resolve to {kind} to bind ({exc}); pass an IP address of "
                       "this machine, 0.0.0.0 or :: for all, or 127.0.0.1 for loopback only") from None
    return bound_family, sockaddr


def _curve_settings(args: argparse.Namespace) -> Any:
    """The serve command's CURVE config (checked before the model loads), or None for plaintext."""
    _refuse_blank("--curve-secret-key", "GR00T_CURVE_SECRET_KEY", args.curve_secret_key,
                  "serve without CURVE encryption")
    _refuse_blank("--authorized-keys", "GR00T_AUTHORIZED_KEYS", args.authorized_keys,
                  "admit any client that has the server's public key")
    if args.curve_secret_key is None:
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
