"""Reaching Ray for `rollout --ray-address`: the optional import, a check that a Ray cluster answers at HOST:PORT
(or where `auto` leads) before ray.init retries there for minutes, and ray.init / ray.shutdown with Ctrl-C and
SIGTERM kept from leaving Ray half made."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import threading
from typing import Any, Iterator, List, Optional, Tuple

from gr00t_client.cli_flags import ascii_digits
from gr00t_client.cli_signals import interrupting_signals

from .extras import MissingExtraError, is_missing
from .run_stop import interrupts_deferred

logger = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ray module, or MissingExtraError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        if not is_missing(exc, "ray"):
            raise MissingExtraError(f"--ray-address needs Ray: ray is installed but failed to import ({exc})") from exc
        raise MissingExtraError(f"--ray-address needs Ray ({exc}); install it with: pip install 'gr00t-eval[ray]'") from exc
    return ray


def _progress(line: str) -> None:
    """One progress line in the log (Ray runs take minutes; the user sees them move: gr00t-eval logs INFO to stderr
    by default). It was printed as well, and so shown twice."""
    logger.info("%s", line)


class RayConnectError(ConnectionError):
    """Nothing answers at a `--ray-address HOST:PORT` (ray.init would retry there for minutes), or `auto` found no
    cluster."""


# The HTTP/2 client preface and an empty SETTINGS frame; a gRPC server (Ray's GCS, a ray:// client server) answers
# with its own SETTINGS frame, whose 9-byte header has type 0x04 at byte 3.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_HTTP2_SETTINGS = 0x04


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """For a HOST:PORT (or ray://HOST:PORT) address, or the one `auto` resolves to, raise RayConnectError unless a
    gRPC server (Ray speaks gRPC) answers there: ray.init retries anything else, a closed port, an open one that is
    not Ray's or a hung head, for minutes. A ray:// address without Ray Client installed raises MissingExtraError."""
    target, label, remedy = address, address, _DIRECT_ADDRESS_REMEDY
    if address == "auto":
        resolved = auto_address()
        if resolved is None:
            return  # auto without an address to join fails fast on its own
        target, origin, remedy = resolved
        label = f"auto ({target}, {origin})"
    if target.startswith("ray://"):
        require_ray_client(label)
    host, sep, port = target[len("ray://"):].rpartition(":") if target.startswith("ray://") else target.rpartition(":")
    if target == "local" or not sep or not host or not ascii_digits(port):
        return  # local fails fast on its own; Ray reports a malformed address
    tls = os.environ.get("RAY_USE_TLS") in ("1", "true")  # the preface would be garbage to it: TCP is all to check
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as connection:
            greeting = b"" if tls else _greeting(connection, timeout_s)
    except OSError as exc:
        raise RayConnectError(f"--ray-address {label}: no Ray cluster answers there ({exc or 'timed out'}); "
                              f"{remedy}") from None
    if tls:
        return
    if greeting is None:
        raise RayConnectError(f"--ray-address {label}: something accepted the connection but did not answer within "
                              f"{timeout_s:g} s (a hung or overloaded Ray head?); check that the head node's Ray "
                              "processes run (`ray status` on it), or restart it") from None
    if len(greeting) < 4 or greeting[3] != _HTTP2_SETTINGS:
        raise RayConnectError(f"--ray-address {label}: something listens there, but not Ray (it did not answer as a "
                              "gRPC server: the dashboard's port, 8265, or a client port without ray://?); give the head "
                              "node's GCS port (6379 unless `ray start --head --port` said otherwise) or "
                              "ray://HOST:10001") from None


_DIRECT_ADDRESS_REMEDY = ("check the host and port (the head node's GCS port, 6379 unless `ray start --head --port` "
                          "said otherwise), start the cluster, or use --ray-address local")


def auto_address() -> Optional[Tuple[str, str, str]]:
    """The address `ray.init(address="auto")` joins, where it comes from and what to do when nothing answers there:
    RAY_ADDRESS, else the one Ray GCS process running on this machine, else the address file of the last `ray start
    --head` here (Ray's own order); None when there is none of them."""
    from_environment = os.environ.get("RAY_ADDRESS")
    if from_environment:
        return from_environment, "from RAY_ADDRESS", ("set RAY_ADDRESS to the head node's address, unset it, or use "
                                                      "--ray-address local or HOST:PORT")
    path, from_file = _current_cluster_file()
    running = _running_gcs_addresses()
    if len(running) == 1:  # ray.init("auto") joins it, whatever the file says
        return running[0], "the Ray GCS process running on this machine", ("check that the head node's Ray processes "
                                                                           "run (`ray status`), or use --ray-address "
                                                                           "local or HOST:PORT")
    if not from_file:
        return None
    return from_file, f"from {path}", (f"it was left by a Ray head that is gone: run `ray stop` (it removes {path}) "
                                       "or start the cluster again, or use --ray-address local or HOST:PORT")


def _current_cluster_file() -> Tuple[str, Optional[str]]:
    """Ray's file of the current cluster's address (under $RAY_TMPDIR, $TMPDIR or /tmp) and its address, if any."""
    try:  # Ray's own rule for where the file is; a private helper that a Ray version may lack or move
        from ray._private.utils import get_ray_address_file

        path = get_ray_address_file(None)
    except (ImportError, AttributeError, TypeError):
        return "", None
    try:
        with open(path, encoding="utf-8") as handle:
            return path, handle.read().strip() or None
    except OSError:
        return path, None


def _running_gcs_addresses() -> List[str]:
    """The addresses of the Ray GCS processes running on this machine (Ray's own search of its processes, a private
    helper that a Ray version may lack or move: then none, and ray.init finds them itself)."""
    try:
        from ray._private.services import find_gcs_addresses

        return sorted(find_gcs_addresses())
    except (ImportError, AttributeError, TypeError):
        return []


def require_ray_client(label: str) -> None:
    """MissingExtraError unless Ray Client (ray[client], for ray:// addresses) is installed: ray.init needs its grpc."""
    try:
        importlib.import_module("grpc")
    except ImportError as exc:
        raise MissingExtraError(f"--ray-address {label}: a ray:// address needs Ray Client ({exc}); install it with: "
                                'pip install "ray[client]", or give the head node\'s GCS address HOST:PORT') from exc


def _greeting(connection: socket.socket, timeout_s: float) -> Optional[bytes]:
    """The first (up to 9) bytes the server at `connection` answers an HTTP/2 preface with, within `timeout_s`; None
    when it sent nothing in that time and kept the connection open."""
    connection.settimeout(timeout_s)
    connection.sendall(_HTTP2_HELLO)
    received = b""
    try:
        while len(received) < 9:
            chunk = connection.recv(9 - len(received))
            if not chunk:
                break
            received += chunk
    except socket.timeout:
        return received or None
    return received


def init_ray(address: str) -> bool:
    """Connect to (`auto`, `HOST:PORT`, `ray://...`) or start (`local`) Ray unless it is up; True if we started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    check_ray_address(address)
    _progress(f"Ray: {'starting a local runtime' if address == 'local' else 'connecting to ' + address} ...")
    try:
        with _stop_signals_blocked():
            if address == "local":
                ray.init(address="local", include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:  # Ray's words name its own `--address` flag, which gr00t-eval does not have
        if address != "auto":
            raise
        raise RayConnectError(f"--ray-address auto: no running Ray cluster was found from this machine ({exc}); start "
                              "one with `ray start --head`, set RAY_ADDRESS, or pass --ray-address local (a runtime "
                              "of this process) or HOST:PORT") from None
    except (SystemExit, KeyboardInterrupt) as exc:  # ray.init's own SIGTERM handler exits 15: stop as on Ctrl-C, 130
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        if ray.is_initialized():
            with interrupts_deferred():
                shutdown_ray(ray)
        raise KeyboardInterrupt from None
    return True


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait (blocked) while the block runs, then act with the handlers of before it.

    Raised inside ray.init, a KeyboardInterrupt (or the SystemExit of the SIGTERM handler ray.init installs) left Ray
    half made and the driver died of SIGSEGV/SIGABRT at exit; delivered after it, init_ray shuts Ray down and stops
    the run as interrupted. Blocked, not only handled: ray.init replaces the SIGTERM handler part-way."""
    signals = {signal.SIGINT, *interrupting_signals()}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield  # Python handles signals on the main thread only; Windows has no signal mask
        return
    previous = {signum: signal.getsignal(signum) for signum in signals}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        for signum, handler in previous.items():  # None: a handler installed from C; the default is closest
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)  # a signal that came meanwhile is handled now


def shutdown_ray(ray: Any) -> None:
    """ray.shutdown(); when a third Ctrl-C gives up waiting for it, say what may be left running."""
    try:
        ray.shutdown()
    except KeyboardInterrupt:
        _progress("Ray: stopped waiting for the Ray shutdown; run `ray stop` if Ray processes are left running")
