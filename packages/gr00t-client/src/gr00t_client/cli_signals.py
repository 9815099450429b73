"""For the command lines of gr00t-server and gr00t-eval: SIGTERM and SIGHUP stop a command as Ctrl-C does.

`kill` and a closed terminal or ssh session (SIGHUP) killed a command at once (exit 143 / 129): no results written,
claims left unfinished, the server's totals never logged. Within `sigterm_as_interrupt` they raise KeyboardInterrupt,
so the command's Ctrl-C handling runs. SIGHUP is taken only while it has its default action: one ignored (`nohup`)
or handled by the program that runs the command is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple


def raise_interrupt(signum: int, frame: Any) -> None:
    """A signal handler that raises KeyboardInterrupt, as Python's own SIGINT handler does."""
    raise KeyboardInterrupt(f"signal {signum}")


def interrupting_signals() -> Tuple[int, ...]:
    """SIGTERM, and SIGHUP while it has its default action or is ours (a block nested in sigterm_as_interrupt, or in
    any block of this module's: a deferred or held stop)."""
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    handler = signal.getsignal(hangup) if hangup is not None else None
    keep = hangup is not None and (handler in (signal.SIG_DFL, raise_interrupt) or _is_ours(handler))
    return (signal.SIGTERM, hangup) if keep else (signal.SIGTERM,)


def interrupted_line(program: str, command: Optional[str], exc: BaseException) -> str:
    """The one line of a command that a stop ended: 'PROGRAM COMMAND: interrupted', then what its files hold now where
    the command said so in the KeyboardInterrupt's `outcome` (keygen's new pair, export's folder, merge's pair)."""
    outcome = getattr(exc, "outcome", "")
    return (f"{program} {command}: interrupted" if command else f"{program}: interrupted") + (
        f"; {outcome}" if outcome else "")


# The handlers signals_handled_by has installed and not yet taken back (a SIGHUP handled by one of them is ours).
_installed: List[Callable[[int, Any], None]] = []
class _Block:
    """One block of signals_handled_by on the main thread: its handler, and whether an outer block's restore ended it
    (a burst of stops can cut an inner block's exit short: its generator's finally then runs late, at garbage
    collection). Found by identity: two blocks of one handler are two blocks."""

    __slots__ = ("handler", "ended")

    def __init__(self, handler: Callable[[int, Any], None]) -> None:
        self.handler, self.ended = handler, False


_main_blocks: List[_Block] = []  # the main thread's blocks of signals_handled_by, outermost first


def _is_ours(handler: Any) -> bool:
    return any(handler is ours for ours in _installed)


def write_note(note: str) -> None:
    """`note` on stderr from a signal handler: os.write, not print (a handler printing while the main thread prints
    raises a reentrant-call error); a stderr gone (`2>&1 | tee`, tee killed by the same Ctrl-C) must not raise in
    the middle of the block that saves the results."""
    try:
        os.write(2, f"{note}\n".encode())
    except OSError:
        pass


@contextlib.contextmanager
def signals_handled_by(handler: Callable[[int, Any], None], signals: Sequence[int]) -> Iterator[None]:
    """Handle `signals` with `handler` while the block runs, then restore the handlers before (off the main thread,
    where Python cannot handle signals, the block runs with them as they were). A signal this process ignores (a
    command started with `&` by a script, or by a supervisor that shields it) stays ignored."""
    previous: Dict[int, Any] = {}

    def install() -> None:  # run again whole after a stop half-way: the handlers before are recorded once
        for signum in signals:
            if signum not in previous:
                before = signal.getsignal(signum)
                if before is signal.SIG_IGN:
                    continue
                previous[signum] = before
            signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            if _ignored_until_exit:  # the command's results are saved: they stay ignored until its main() returns
                break
            # None: a handler installed from C, which Python cannot reinstall; the default is closest
            signal.signal(signum, signal.SIG_DFL if before is None else before)

    main = threading.current_thread() is threading.main_thread()
    block = _Block(handler)
    _installed.append(handler)
    if main:
        _main_blocks.append(block)
    try:
        if main:
            _swapped_with_signals_blocked(signals, install)
        yield
    finally:
        if block.ended:  # an outer block restored past this one, whose own exit a stop cut short: nothing of it is left
            pass
        else:
            if main:  # blocks inside this one whose exits a stop cut short: their late finally (at GC) must not
                # put back handlers of blocks that have ended; this block's restore puts back what was before them all
                position = next(index for index, held in enumerate(_main_blocks) if held is block)  # not by ==
                for inner in _main_blocks[position + 1:]:
                    inner.ended = True
                    _installed.remove(inner.handler)
                del _main_blocks[position:]
            _installed.remove(handler)
            _swapped_with_signals_blocked(tuple(previous), restore)


def _swapped_with_signals_blocked(signals: Sequence[int], swap: Callable[[], None], drop_stops: bool = False) -> None:
    """Run `swap` (handlers changed one signal at a time; safe to run again) with `signals` blocked, as
    ProgramStopSignals.finish does: a stop between two changes raised KeyboardInterrupt half-way, leaving a handler
    nobody reads installed (that signal swallowed from then on). Blocking covers this thread only, and a stop tripped
    just before runs its handler here: `swap` then runs again until whole, and that stop is raised after it (dropped
    with `drop_stops`). Blocked ones act once all are changed."""
    blocking = bool(signals) and hasattr(signal, "pthread_sigmask")  # not on Windows
    stopped: Optional[BaseException] = None
    try:
        while True:
            try:
                if blocking:
                    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
                swap()
                break
            except KeyboardInterrupt as exc:
                stopped = stopped or exc
    finally:
        if blocking:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    if stopped is not None and not drop_stops:
        raise stopped


# The ProgramStopSignals of the command lines whose main() runs now (innermost last), and whether the running one's
# command has saved its results (stop_signals_ignored_until_exit).
_programs: List["ProgramStopSignals"] = []
_ignored_until_exit = False


def stop_signals_ignored_until_exit() -> None:
    """For a command whose results are saved (results.json written): ignore Ctrl-C, SIGTERM and SIGHUP until its
    command line's main() returns, so that a late one leaves the exit status and the claim the results' (it turned a
    complete run's into 130 and 'interrupted'). Outside a command line's main() (a program calling a command's code,
    off the main thread) it does nothing."""
    global _ignored_until_exit
    if not _programs or threading.current_thread() is not threading.main_thread():
        return
    stop_signals = (signal.SIGINT, *interrupting_signals())

    def ignore() -> None:
        for signum in stop_signals:
            signal.signal(signum, signal.SIG_IGN)

    # a stop tripped before they were blocked is ignored as the later ones are (blocked ones are dropped once ignored)
    _swapped_with_signals_blocked(stop_signals, ignore, drop_stops=True)
    _ignored_until_exit = True


class ProgramStopSignals:
    """For a command line's main(), from its first line: SIGTERM and SIGHUP (see interrupting_signals) raise
    KeyboardInterrupt as Ctrl-C does until `finish`. Importing this module costs no numpy or ZeroMQ (the package
    loads its API on first use), so a stop during the command's own imports is a Ctrl-C too."""

    def __init__(self) -> None:
        self.previous: Dict[int, Any] = {}
        self.sigint = signal.getsignal(signal.SIGINT)  # put back by finish if the command came to ignore it
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs no handler there, and what this thread's command saves is no stop's business
        for signum in interrupting_signals():
            if signal.getsignal(signum) is not signal.SIG_IGN:  # one this process ignores (`trap '' TERM`) stays so
                self.previous[signum] = signal.signal(signum, raise_interrupt)
        _programs.append(self)

    def finish(self, ignore_from_now_on: bool) -> None:
        """Put the handlers back or, for the program itself (whose command has returned: its results are saved and
        reported), ignore Ctrl-C and the signals taken from now on: a late one in the interpreter's exit (seconds,
        with torch or MuJoCo loaded) turned a finished command's status into 130/143/129."""
        global _ignored_until_exit
        if self in _programs:
            _programs.remove(self)
        if ignore_from_now_on:
            stop_signals = (signal.SIGINT, *self.previous)
            blocking = hasattr(signal, "pthread_sigmask")  # not on Windows
            while True:
                try:
                    # Blocked while the handlers change: one that came as the command returned raised
                    # KeyboardInterrupt from here (a traceback, death by SIGINT); blocked ones are dropped once ignored.
                    if blocking:
                        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
                    for signum in stop_signals:
                        signal.signal(signum, signal.SIG_IGN)
                    if blocking:
                        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                    return
                except KeyboardInterrupt:  # tripped before they were blocked: ignored as the later ones are
                    continue
                except ValueError:  # not the main thread
                    return
        if threading.current_thread() is not threading.main_thread():
            return  # it took nothing (__init__)
        ignored, _ignored_until_exit = _ignored_until_exit, False
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_DFL if self.sigint is None else self.sigint)
        for signum, before in self.previous.items():  # None: a handler installed from C; the default is closest
            signal.signal(signum, signal.SIG_DFL if before is None else before)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP (see interrupting_signals) into KeyboardInterrupt while the block runs, so `finally`
    blocks and a command's Ctrl-C handling run as on Ctrl-C."""
    with signals_handled_by(raise_interrupt, interrupting_signals()):
        yield


@contextlib.contextmanager
def stop_signals_held(waiting_note: Optional[str] = None) -> Iterator[None]:
    """Ctrl-C, SIGTERM or SIGHUP (see interrupting_signals) during the block wait for its end, then act as they would
    have (the first one): for a call that an exception raised inside would leave half-made (a MuJoCo renderer).
    With `waiting_note`, for a block that may take long (writing videos): the first one prints it and a second one
    raises KeyboardInterrupt at once (a hung block could not be stopped otherwise)."""
    stop_signals = (signal.SIGINT, *interrupting_signals())
    previous = {signum: signal.getsignal(signum) for signum in stop_signals}
    held: list = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)
        if waiting_note is None:
            return
        if len(held) >= 2:
            raise KeyboardInterrupt(f"signal {signum}")
        write_note(waiting_note)

    try:
        with signals_handled_by(hold, stop_signals):
            yield
    finally:
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler in (signal.SIG_DFL, None):  # put back now: the signal's own action (the process ends)
                os.kill(os.getpid(), held[0])
