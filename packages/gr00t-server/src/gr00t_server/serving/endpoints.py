"""The endpoint table's parts: endpoints, who may kill, and how a failure becomes a bounded error reply."""

from __future__ import annotations

import builtins
import ipaddress
import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Set, Tuple

from gr00t_client.client import normalize_host
from gr00t_client.peer_text import shown_text
from gr00t_client.policy import ActionError, NonFiniteActionError, accepts_keyword

from .messages import CONNECTION_SESSION_PREFIX, RequestError, bounded

logger = logging.getLogger("gr00t_server.serving")

# Answered on the socket thread at once, even while the policy runs; everything else goes to the policy worker.
INLINE_ENDPOINTS = frozenset({"ping", "kill", "get_server_info", "get_modality_config"})
# Exceptions whose message describes the request (bad input, bad options) and goes back to the client as is;
# any other exception is a bug: logged with its traceback, answered as "internal error in <endpoint>: <type>".
VALIDATION_ERRORS: Tuple[type, ...] = (RequestError, ValueError, LookupError)


@dataclass
class Endpoint:
    """A named handler; `requires_input` handlers are called with the request's `data` as keyword arguments.
    `takes_options`: whether the handler accepts an `options` keyword argument."""

    name: str
    handler: Callable[..., Any]
    requires_input: bool = True
    takes_options: bool = field(init=False)

    def __post_init__(self) -> None:
        self.takes_options = accepts_keyword(self.handler, "options")


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback addresses: 127.0.0.0/8, ::1 (bracketed or not), ::ffff:127.x.x.x."""
    host = normalize_host(host)
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone such as "%eth0"
    except ValueError:  # another host name: we cannot know without resolving it
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def endpoint_address(endpoint: str) -> str:
    """The address of a bound tcp:// endpoint: 'tcp://[::1]:5555' -> '::1', 'tcp://127.0.0.1:5555' -> '127.0.0.1'."""
    address = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return normalize_host(address)


def is_loopback_peer(peer: Optional[str]) -> bool:
    """A peer with no TCP address (inproc, ipc) or a loopback one."""
    return peer is None or is_loopback_host(peer)


LOGGED_TEXT_CHARS = 80  # of an endpoint name, session id, ... a client sent, in a log line


def log_text(text: str, limit: int = LOGGED_TEXT_CHARS, quoted: bool = True) -> str:
    """Client-supplied text as a log line may show it: cut to `limit` characters (saying how much was cut) and
    escaped as repr() does, so that a name of megabytes cannot flood the log nor a newline in it forge a line."""
    shown = repr(text[:limit])
    if not quoted:
        shown = shown[1:-1]
    return f"{shown}... ({len(text) - limit} more characters)" if len(text) > limit else shown


def _safe_text(exc: BaseException) -> str:
    """str(exc), or '' for an exception whose __str__ raises (a failure must never break its own error reply)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return ""


LOGGED_ERROR_CHARS = 1000  # of an exception's message (or a chained exception's, or a note) in a log line
_MOST_CHAINED = 16  # exceptions in a chain given a stand-in each; a longer (or cyclic) one is logged as text
_EXCEPTION_GROUP = getattr(builtins, "BaseExceptionGroup", None)  # Python 3.11


class LoggedException(Exception):
    """Stands in a log record for an exception too odd to copy (a cyclic or very long chain, a group, a class that
    cannot be subclassed): its whole rendering, each part cut, is the message."""


def bounded_exception(exc: BaseException, limit: int = LOGGED_ERROR_CHARS) -> BaseException:
    """`exc` for a log record whose formatter (the operator's own, too) prints it with its traceback: itself when its
    message, notes and chained exceptions are short and printable, else a stand-in of its class (same name and frames,
    each message and note cut to `limit` characters and escaped), or a LoggedException holding its rendering cut and
    escaped part by part. A policy's message holding a large repr wrote megabytes of log per failure; one holding a
    client's newline forged log lines. Never raises."""
    try:
        return _bounded(exc, limit, set())
    except Exception:  # noqa: BLE001 - the log path must not fail: the rendering, as text
        return LoggedException(_bounded_rendering(exc, limit))


class _TooOdd(Exception):
    pass


def _bounded(exc: BaseException, limit: int, seen: Set[int]) -> BaseException:
    if id(exc) in seen or len(seen) >= _MOST_CHAINED or (_EXCEPTION_GROUP and isinstance(exc, _EXCEPTION_GROUP)):
        raise _TooOdd
    seen.add(id(exc))
    cause, context = exc.__cause__, exc.__context__
    short_cause = cause if cause is None else _bounded(cause, limit, seen)
    short_context = context if context is None or context is cause else _bounded(context, limit, seen)
    text, notes = _safe_text(exc), getattr(exc, "__notes__", None)
    odd_notes = isinstance(notes, list) and any(_needs_cut(str(note), limit) for note in notes)
    if not _needs_cut(text, limit) and not odd_notes and short_cause is cause and short_context is context:
        return exc
    shown = _cut(text, limit)
    stand_in_class = type(type(exc).__name__, (type(exc),), {
        "__str__": lambda self: shown, "__module__": type(exc).__module__, "__qualname__": type(exc).__qualname__})
    stand_in = stand_in_class.__new__(stand_in_class)
    if isinstance(notes, list):
        stand_in.__notes__ = [_cut(str(note), limit) for note in notes]
    stand_in.__cause__ = short_cause
    stand_in.__context__ = short_context if context is not cause else short_cause
    stand_in.__suppress_context__ = exc.__suppress_context__
    return stand_in.with_traceback(exc.__traceback__)


def _needs_cut(text: str, limit: int) -> bool:
    return len(text) > limit or not text.isprintable()


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many were cut; escaped as shown_text escapes it when a character
    is not printable (a newline or a terminal escape, in a client's text, would forge a log line or recolour it)."""
    if not text.isprintable():
        return shown_text(text, limit)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _bounded_rendering(exc: BaseException, limit: int) -> str:
    """exc's traceback as Python prints it (chains, groups and notes too; cycles stopped), each part cut and escaped
    (a frame's two lines become one)."""
    try:
        rendering = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        _cut_notes(rendering, limit)
        return "\n".join(_cut(part.rstrip("\n"), limit) for part in rendering.format())
    except Exception:  # noqa: BLE001
        return f"{type(exc).__qualname__} (its traceback could not be rendered)"


def _cut_notes(rendering: traceback.TracebackException, limit: int) -> None:
    """Cut and escape, in place, the notes of a rendering and of those it chains: format() gives each line of a note
    as a part of its own, so a note's newline would begin a line of the log."""
    pending, seen = [rendering], set()
    while pending:  # not recursive: a chain may be thousands long
        part = pending.pop()
        if part is None or id(part) in seen:
            continue
        seen.add(id(part))
        if isinstance(getattr(part, "__notes__", None), list):  # Python 3.11 on
            part.__notes__ = [_cut(str(note), limit) for note in part.__notes__]
        pending += [part.__cause__, part.__context__, *(getattr(part, "exceptions", None) or [])]


def named_session(session: str) -> str:
    """A session as an error reply names it: its session_id, cut and escaped (log_text), or "this connection's
    session" for a request without one, whose key would tell a client its neighbours' keys."""
    if session.startswith(CONNECTION_SESSION_PREFIX):
        return "this connection's session"
    return f"session {log_text(session, 40)}"


class UnencodableResultError(Exception):
    """The policy's result cannot be sent (an object the wire cannot carry): the server's fault, not the client's, so
    counted and logged as an internal error, though its text (which names the value's type) is sent."""


def error_text(endpoint: str, exc: BaseException) -> Tuple[str, bool]:
    """(bounded reply text, is_internal) for an exception raised while serving `endpoint`.

    A strict policy's ActionError (its own action has a wrong key, dtype or shape) is its fault, not the request's:
    internal (the call counts, the traceback is logged), though its text is sent. A non-finite action is explained
    by the server in the client's terms (its states may be the cause) and stays the request's."""
    if isinstance(exc, UnencodableResultError):
        return bounded(str(exc)), True
    if isinstance(exc, VALIDATION_ERRORS):  # ActionError among them (a ValueError): worded alike, internal
        policys_fault = isinstance(exc, ActionError) and not isinstance(exc, NonFiniteActionError)
        try:
            name = getattr(type(exc), "wire_name", type(exc).__name__)  # a subclass may keep its base's name
            text = str(exc) if isinstance(exc, RequestError) else f"{name}: {exc}"
            return bounded(text), policys_fault
        except Exception:  # an exception whose __str__ raises must not stop the loop
            return f"{type(exc).__name__}: <its message could not be formatted>", policys_fault
    return f"internal error in {endpoint}: {type(exc).__name__}", True


class RateLimitedLog:
    """Logs at most `per_window` warnings per `window_s`; the rest are counted and reported as suppressed.

    `kind` (say, endpoint and exception type) keeps the first message of each kind visible whatever the flood: a
    kind not seen before is logged even when the window's share is spent (up to `max_kinds` kinds remembered). The
    count of suppressed messages, and when the first and last of them came, is reported with the next message after
    the window, or by flush() (at shutdown).
    """

    def __init__(self, log: logging.Logger, per_window: int = 20, window_s: float = 10.0, max_kinds: int = 256,
                 level: int = logging.WARNING) -> None:
        self._log = log
        self.per_window = per_window
        self.window_s = window_s
        self.level = level
        self._max_kinds = max_kinds
        self._kinds: Set[Any] = set()
        self._window_start = -math.inf  # the first message opens a window (0.0 did not, on a machine up < window_s)
        self._logged = 0
        self._suppressed = 0
        # Monotonic times, turned into wall times only when reported (the report may come hours later): a wall clock
        # stepped in between would stretch the span, or run it backward.
        self._first_suppressed = self._last_suppressed = 0.0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any, exc_info: Any = None, kind: Any = None, first_exc_info: Any = None) -> bool:
        """Log the message (at this limiter's level) unless this window's share is spent and its kind was seen
        before; True when it was logged. `first_exc_info`: a traceback shown with the first message of its kind only."""
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.window_s:
                self._report_suppressed()
                self._window_start, self._logged = now, 0
            new_kind = kind is not None and kind not in self._kinds and len(self._kinds) < self._max_kinds
            if new_kind:
                self._kinds.add(kind)
            if self._logged >= self.per_window and not new_kind:
                self._last_suppressed = now
                if not self._suppressed:
                    self._first_suppressed = self._last_suppressed
                self._suppressed += 1
                return False
            self._logged += 1
        self._emit(message, args, exc_info or (first_exc_info if new_kind else None))
        return True

    def _emit(self, message: str, args: Tuple[Any, ...], exc_info: Any) -> None:
        """Log at this limiter's level; an exception goes with its traceback, its message bounded (bounded_exception),
        for the handlers' own formatters to print."""
        if isinstance(exc_info, BaseException):
            bounded = bounded_exception(exc_info)
            exc_info = (type(bounded), bounded, bounded.__traceback__)
        self._log.log(self.level, message, *args, exc_info=exc_info, stacklevel=2)

    def flush(self) -> None:
        """Report the messages suppressed since the last report (a server that stops after a burst)."""
        with self._lock:
            self._report_suppressed()

    def _report_suppressed(self) -> None:
        if self._suppressed:
            wall_offset = time.time() - time.monotonic()  # taken once: both ends move by the same step
            self._log.log(self.level, "%d similar messages were suppressed %s", self._suppressed,
                          _time_span(self._first_suppressed + wall_offset, self._last_suppressed + wall_offset))
            self._suppressed = 0


def _time_span(first: float, last: float) -> str:
    """'between 13:40:01 and 13:40:02', or 'at 13:40:01', in local time as a log line's own time is written; with the
    date when `first` was not today."""
    clock = "%H:%M:%S" if time.localtime(first)[:3] == time.localtime(time.time())[:3] else "%Y-%m-%d %H:%M:%S"
    shown_first, shown_last = time.strftime(clock, time.localtime(first)), time.strftime(clock, time.localtime(last))
    return f"at {shown_first}" if shown_first == shown_last else f"between {shown_first} and {shown_last}"
