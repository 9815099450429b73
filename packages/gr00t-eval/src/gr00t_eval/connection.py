"""How gr00t-eval commands connect to a policy server: the connection flags, client options and a reachability check."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)


def add_security_arguments(parser: argparse.ArgumentParser, flag: Callable[[str], List[str]]) -> None:
    """--server-public-key and --client-key (CURVE encryption), read from GR00T_* variables like the token."""
    parser.add_argument(*flag("server-public-key"), default=os.environ.get("GR00T_SERVER_PUBLIC_KEY"), metavar="KEY",
                        help="encrypt with CURVE: the server's public key, its .key file or z85 string "
                             "(default $GR00T_SERVER_PUBLIC_KEY)")
    parser.add_argument(*flag("client-key"), default=os.environ.get("GR00T_CLIENT_KEY"), metavar="KEY",
                        help="with --server-public-key: this client's secret key, a .key_secret file or z85 string "
                             "(default $GR00T_CLIENT_KEY; without it a throwaway key is used, which servers with "
                             "--authorized-keys refuse); a z85 string given here is visible to other users in ps")


def warn_of_secret_on_command_line(args: argparse.Namespace) -> None:
    """Warn once when --client-key was given a z85 secret key itself: other local users can read it in ps."""
    from gr00t_client.cli_flags import secret_on_command_line_warning

    warning = secret_on_command_line_warning("--client-key", "GR00T_CLIENT_KEY", getattr(args, "client_key", None))
    if warning is not None:
        logger.warning("%s", warning)


def client_options(args: argparse.Namespace) -> Dict[str, Any]:
    """PolicyClient keyword arguments from the parsed connection flags (timeout, token, CURVE keys); SystemExit for
    a token or key flag given empty."""
    return {
        "timeout_ms": args.timeout_ms,
        "api_token": _key_given(args, "api_token", "GR00T_API_TOKEN", "connect without a token"),
        "server_public_key": _key_given(args, "server_public_key", "GR00T_SERVER_PUBLIC_KEY",
                                        "connect without CURVE encryption"),
        "client_secret_key": _key_given(args, "client_key", "GR00T_CLIENT_KEY", "use a throwaway client key"),
    }


def _key_given(args: argparse.Namespace, dest: str, variable: str, without: str) -> Optional[str]:
    """The token or key flag's value; SystemExit when it is blank (`--flag "$KEY"` with KEY unset, or VARIABLE= in
    the environment), which must not quietly mean none: a blank server key made the run plaintext, a blank token
    overrode $GR00T_API_TOKEN."""
    from gr00t_client.cli_flags import blank_value_problem

    value = getattr(args, dest, None)
    problem = blank_value_problem(f"--{dest.replace('_', '-')}", variable, value, without)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    return value


def open_client(host: str, port: int, args: argparse.Namespace) -> Any:
    """A PolicyClient that has answered a ping; otherwise SystemExit with one line saying why (keys, or no answer)."""
    from gr00t_client import HandshakeError, PolicyClient, PolicyTimeoutError
    from gr00t_client.client_options import endpoint_host

    portable_keys(args)  # key mistakes named by their flags (and variables), not PolicyClient's parameters
    try:
        client = PolicyClient(host=host, port=port, **client_options(args))
    except ValueError as exc:  # a malformed key or key file
        raise SystemExit(f"error: {exc}") from None
    try:
        client.call_endpoint("ping", requires_input=False)
    except HandshakeError as exc:
        client.close()
        raise SystemExit(f"error: {exc}") from None
    except (PolicyTimeoutError, ConnectionError) as exc:  # the client's words say how far the connection got
        client.close()
        raise SystemExit(f"error: no policy server answered at tcp://{endpoint_host(host)}:{port} within {args.timeout_ms} ms: {exc}") from None
    except BaseException:
        client.close()
        raise
    return client


def portable_keys(args: argparse.Namespace) -> Optional[Tuple[str, Optional[str]]]:
    """The CURVE keys as z85 strings (server public, client secret or None), read here so remote workers need no files."""
    from gr00t_client.curve import load_key_pair, load_public_key, refuse_the_servers_key_pair

    options = client_options(args)
    server_flag = "--server-public-key" + _from_variable(args, "server_public_key", "GR00T_SERVER_PUBLIC_KEY")
    client_flag = "--client-key" + _from_variable(args, "client_key", "GR00T_CLIENT_KEY")
    if options["server_public_key"] is None:
        if options["client_secret_key"] is not None:
            raise SystemExit(f"error: {client_flag} needs --server-public-key (or $GR00T_SERVER_PUBLIC_KEY)")
        return None
    try:
        server_public = load_public_key(options["server_public_key"], server_flag)
        client_secret = None
        if options["client_secret_key"] is not None:
            client_public, secret = load_key_pair(options["client_secret_key"], client_flag)
            refuse_the_servers_key_pair(server_public, client_public, client_flag, server_flag)
            client_secret = secret.decode("ascii")
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return server_public.decode("ascii"), client_secret


def _from_variable(args: argparse.Namespace, dest: str, variable: str) -> str:
    """' (from $VARIABLE)' when the flag's value is the environment variable's (the flag was not typed)."""
    value = getattr(args, dest, None)
    return f" (from ${variable})" if value is not None and value == os.environ.get(variable) and \
        f"--{dest.replace('_', '-')}" not in " ".join(sys.argv) else ""
