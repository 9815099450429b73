"""The ZeroMQ plumbing under PolicyClient: the process's shared context, multipart send and receive without pyzmq's
per-frame overhead, the monitor that notes a connection lost while a reply is awaited, and the lock a forked child's
threads adopt inherited clients under."""

from __future__ import annotations

import errno
import os
import threading
from typing import Any, List, Optional

import zmq

from . import curve
from .process_limits import descriptors_left

# Descriptors a context's first socket takes: the context's mailbox, its reaper's and I/O thread's pollers and
# mailboxes (the threads that socket starts) and the socket's own mailbox. Short of them, libzmq asserts in its I/O
# thread and aborts the process (SIGABRT, no Python error).
FIRST_SOCKET_DESCRIPTORS = 6


def _nbytes(frames: List[Any]) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


class _ProcessContext:
    """The ZeroMQ context every PolicyClient of this process shares (made afresh in a forked child).

    A context per client cost 2 native threads and about 9 file descriptors each, and a context's first socket
    starts its I/O thread: out of descriptors there, libzmq aborts the process (SIGABRT, no Python error), as it
    did at the 114th live client under the common 1024-descriptor limit. With one context, an out-of-descriptors
    socket is refused (a ConnectionError naming it) and the process lives. Clients close their own sockets; the
    context stays for the process's life."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: Optional[zmq.Context] = None
        self._pid: Optional[int] = None
        self._threads_started_in: Optional[zmq.Context] = None  # the context whose first socket was made
        if hasattr(os, "register_at_fork"):  # a parent thread may hold the lock at the fork
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._context, self._pid, self._threads_started_in = None, None, None

    def get(self) -> zmq.Context:
        """This process's context (a parent's does not survive a fork: the child's first call spun for ever)."""
        with self._lock:
            if self._context is None or self._context.closed or self._pid != os.getpid():
                context = zmq.Context()
                # ZeroMQ's default of 1023 sockets a context was one per client; a client holds 3 (its REQ socket and
                # its handshake monitor's two): at the default, the 342nd live client was refused "Too many open
                # files" under any descriptor limit. The descriptor limit is what bounds them now.
                context.set(zmq.MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT))
                self._context, self._pid = context, os.getpid()
            return self._context

    def socket(self, context: zmq.Context, kind: int) -> zmq.Socket:
        """`context.socket(kind)`; for the first socket of `context`, which starts its threads, zmq.ZMQError(EMFILE)
        instead when fewer than FIRST_SOCKET_DESCRIPTORS descriptors are left: libzmq would abort the process."""
        if context is not self._threads_started_in:
            left = descriptors_left()
            if left is not None and left < FIRST_SOCKET_DESCRIPTORS:
                raise zmq.ZMQError(errno.EMFILE)  # as libzmq would have refused it, had it not aborted
        sock = context.socket(kind)
        self._threads_started_in = context
        return sock


_PROCESS_CONTEXT = _ProcessContext()


class _ForkAdoptionLock:
    """Held while a forked child's thread adopts an inherited PolicyClient or ActionChunker, so that its other threads
    wait for the adoption instead of seeing it half done (the parent's lock, or one REQ socket for two threads).
    Made afresh in each child: a parent thread may hold it at the fork. Reentrant, for a close() from a signal handler
    on the adopting thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()


FORK_ADOPTION_LOCK = _ForkAdoptionLock()
_SNDMORE = int(zmq.SNDMORE)  # plain ints: pyzmq's send_multipart does enum.Flag arithmetic per frame
_NOBLOCK = int(zmq.NOBLOCK)


# pyzmq's Socket.send without the wrapper around it (routing_id and group, unused here): called positionally it
# costs a third of the wrapper's copy=False call (0.35-0.6 us against 2 us a frame, measured), which a small frame
# pays and gains nothing from, since pyzmq copies a frame under the socket's copy_threshold anyway.
_SEND = zmq.backend.Socket.send


def send_frames(sock: zmq.Socket, frames: List[Any], flags: int = 0) -> None:
    """send_multipart(frames, flags, copy=False) without its per-frame overhead: frames under the socket's
    copy_threshold are copied (as pyzmq would), larger ones sent without a copy. A message is queued whole or not
    at all, so only the first frame can raise zmq.Again. Frames are bytes, 1-d byte memoryviews or zmq.Frame."""
    threshold = sock.copy_threshold
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        size = frame.nbytes if type(frame) is memoryview else len(frame)
        _SEND(sock, frame, flags | _SNDMORE if index < last else flags, size < threshold)


class _ReplyWatch(curve.HandshakeMonitor):
    """The handshake monitor, also noting an established connection that closes while a reply is awaited: a REQ
    socket never resends, so that request's reply cannot come (the reply was over ZMQ_MAXMSGSIZE, the server
    stopped, restarted or dropped the request, or the link dropped the connection)."""

    _dropped = False

    def expect_reply(self) -> None:
        """Called just before a request is sent: closings seen from now on lose its reply; earlier ones did not."""
        if self._monitor.get(zmq.EVENTS) & curve.MONITOR_READABLE:
            self._drain()
        self._dropped = False

    def dropped(self) -> bool:
        """True once an established connection closed since expect_reply()."""
        return self._dropped

    def _record(self, event: int, value: int) -> None:
        # settled with no failure: the last handshake succeeded (a closing mid-handshake is the parent's to judge)
        if event == zmq.EVENT_DISCONNECTED and self._handshake_settled and self._failure is None:
            self._dropped = True
        super()._record(event, value)


class _ReplyOverCap(Exception):
    """A multipart reply whose frames together pass max_reply_bytes: it is refused undecoded (the socket is dropped)."""

    def __init__(self, size: int, frames: int) -> None:
        super().__init__(size, frames)
        self.size, self.frames = size, frames


def _recv_frames(sock: zmq.Socket, max_bytes: Optional[int] = None, flags: int = 0) -> List[Any]:
    """recv_multipart(copy=False), reading Frame.more instead of a RCVMORE getsockopt per frame. With `max_bytes`,
    _ReplyOverCap as soon as the frames taken pass it. This bounds what is decoded, not memory: ZMQ_MAXMSGSIZE bounds
    each frame, and libzmq delivers a multipart message only once all its frames have arrived, so every frame of
    the reply is already held by then; only CURVE server pinning keeps an unknown server from sending it. `flags`
    apply to the first frame (the others have arrived with it)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    size = len(frame)
    while frame.more:
        if max_bytes is not None and size > max_bytes:
            raise _ReplyOverCap(size, len(frames))
        frame = sock.recv(copy=False)
        frames.append(frame)
        size += len(frame)
    return frames
