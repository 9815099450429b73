"""Signals in the server: threads it starts never take SIGINT, SIGTERM or SIGHUP while they wait, so the kernel
delivers them to the main thread (the policy's own code on the worker runs with the mask of the thread that ran the
server: stop_signals_as); and blocks that handle SIGTERM (and SIGHUP: the terminal or ssh session closed) as Ctrl-C
(start-up, an export). A SIGHUP ignored (`nohup`) or handled by the program running the server is left as it is.

A signal delivered to another thread sets Python's flag but does not wake the main thread: a policy call running
there (a cheap call run inline on the socket thread) would sleep on, and the stop would not be noticed until the
call returned. Threads of libraries the server cannot configure (torch's, ZeroMQ's I/O threads block all signals
already) are outside this.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional, Set

# signals_handled_by and sigterm_as_interrupt are the gr00t-server modules' too (export_dir, commands, serve_cli)
from gr00t_client.cli_signals import interrupting_signals, sigterm_as_interrupt, signals_handled_by  # noqa: F401

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


def handled_stop_signals() -> tuple[int, ...]:
    """The stop signals to handle: SIGINT, SIGTERM, and SIGHUP only while it has its default action (ignored under
    nohup, or handled by a program that runs the server itself: theirs to keep). One this process ignores stays
    ignored: `gr00t-server serve ... &` in a script starts with SIGINT ignored, and the Ctrl-C meant for the command in
    the foreground stopped the server."""
    return tuple(signum for signum in (signal.SIGINT, *interrupting_signals())
                 if signal.getsignal(signum) is not signal.SIG_IGN)


def block_stop_signals() -> Optional[Set[int]]:
    """Call first on a thread of the server's own (a thread's target, a pool's initializer); returns the thread's mask
    before (inherited from the thread that started it; None where there are no thread masks) for stop_signals_as."""
    if hasattr(signal, "pthread_sigmask"):  # not on Windows, where signals are not delivered to threads
        return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    return None


@contextlib.contextmanager
def stop_signals_as(mask: Optional[Set[int]]) -> Iterator[None]:
    """Inside the block, the stop signals `mask` does not block are unblocked on the calling thread; its mask is put
    back afterwards. The policy worker runs the policy's own code so, with the mask of the thread that ran the server:
    a child process inherits its thread's mask through fork and exec, and a helper a policy started while they were
    blocked ignored terminate(), Ctrl-C and `kill PID`. Linux gives a signal sent to the process to the main thread
    first when that thread does not block it, so the server's stop still goes there."""
    unblocked = [signum for signum in STOP_SIGNALS if mask is not None and signum not in mask]
    if not unblocked:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, unblocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Threads started inside this block (by a library: an HTTP server's) inherit a mask that blocks SIGINT and
    SIGTERM; the calling thread's mask is put back afterwards, and a signal that came meanwhile is delivered then."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
