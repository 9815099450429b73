"""The ROUTER socket and the worker's wake-up pipe: bind, poll, receive and send (socket thread only)."""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import threading
import weakref
from typing import Any, List, Optional, Tuple

import zmq

from gr00t_client import codec
from gr00t_client.client import endpoint_host, is_ipv6_literal, send_frames
from gr00t_client.process_limits import descriptor_words, descriptors_left

from ..curve import CurveServerConfig, ServerCurve
from .endpoints import RateLimitedLog
from .limits import ServerLimits

logger = logging.getLogger("gr00t_server.serving")


def answered_frame_bytes(max_message_bytes: int) -> int:
    """The largest frame ZeroMQ lets through to be refused with an error reply: twice max_message_bytes."""
    return min(2 * int(max_message_bytes), 2**63 - 1)


# Messages ZeroMQ may hold per connection before it stops reading that peer (back-pressure). A REQ client has
# one request outstanding; the default of 1000 let one connection park 1000 x max_message_bytes in the server.
RECEIVE_HWM = 4
# Replies a connection may leave unread beyond its requests waiting for the policy (--max-client-queued-requests):
# ping, get_server_info and refusals are answered at once, outside those budgets.
INLINE_UNREAD_REPLIES = 8
MAX_SEND_HWM = 2**31 - 1  # ZMQ_SNDHWM is a C int
# ZMTP heartbeats: a connection whose peer answers no ping for HEARTBEAT_TIMEOUT_MS is closed. A robot that lost
# power or network leaves its connection open for good otherwise, holding a file descriptor, and enough of those
# stop the server from accepting anyone (libzmq then spins on the listening socket). Live peers, busy or idle, answer
# in their ZeroMQ I/O thread, but only between frames: a peer writing one large frame answers once it is written, so
# the timeout must outlast a frame's upload (30 s cut a live robot sending a 6 MB camera frame at 1 Mbit/s, 48 s).
HEARTBEAT_IVL_MS = 10_000
HEARTBEAT_TIMEOUT_MS = 120_000
# The heartbeat's ping waits behind the frame being written, so a peer that stops reading in the middle of a reply
# (a hung process, a forwarder whose far side died) is never pinged: TCP bounds it instead. ZMQ_TCP_MAXRT (Linux's
# TCP_USER_TIMEOUT) closes a connection whose sent data stays unacknowledged this long, a zero window included;
# keepalive probes a connection idle this long.
TCP_MAXRT_MS = HEARTBEAT_TIMEOUT_MS
TCP_KEEPALIVE_IDLE_S = 60
# Frames one message may have (routing frames included): ours carry one per array, an observation tens. ZeroMQ
# delivers a message whole, so the frames past it are still received, but dropped at once: 1,000,000 empty frames
# (2 MB on the wire) held the socket thread 4-5 s and 230 MB as Frame objects before the decode refused them.
MAX_MESSAGE_FRAMES = 16384
# pyzmq's flags are enum.Flag members: every `|` and every call converts them in Python (~7 enum calls per request
# on the hot path), so the socket thread uses their plain int values.
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
# Descriptors a Transport takes: its context's mailbox, reaper and I/O thread (a poller and a mailbox each), the
# socket's mailbox, the listener, the wake-up pipe's two ends, and one the bind's address lookup holds for a moment.
# Short of the I/O thread's or the lookup's, libzmq asserts and aborts the process (SIGABRT, no Python error).
SERVER_DESCRIPTORS = 10


def _bind_problem(address: str, exc: BaseException) -> str:
    """Why `address` cannot be served (its bind or wake-up pipe failed with `exc`): `exc`'s words, and for EMFILE
    ("Too many open files") which limit ran out and how to raise it."""
    if getattr(exc, "errno", None) != errno.EMFILE:
        return f"cannot bind {address}: {exc}"
    return f"cannot bind {address}: {os.strerror(errno.EMFILE)}; " + _server_descriptor_words(
        "has used up its file descriptors")


def _server_descriptor_words(state: str) -> str:
    return descriptor_words(state, f"a PolicyServer takes about {SERVER_DESCRIPTORS} (its ZeroMQ context's threads, "
                            "its socket, its listener, its wake-up pipe) and one per connected client",
                            "close servers and clients no longer used")


def _refuse_without_descriptors(address: str) -> None:
    """OSError (EMFILE) naming the descriptor limit when fewer than SERVER_DESCRIPTORS are left: checked before a
    server's ZeroMQ context starts, whose threads libzmq would otherwise abort the process in."""
    left = descriptors_left()
    if left is not None and left < SERVER_DESCRIPTORS:
        raise OSError(f"cannot bind {address}: {os.strerror(errno.EMFILE)}; "
                      + _server_descriptor_words(f"has only {left} file descriptors left"))


def send_hwm(max_client_queued_requests: int) -> int:
    """ZMQ_SNDHWM that keeps every reply of a peer with at most its queued requests plus INLINE_UNREAD_REPLIES unread.

    libzmq learns what a connection has taken from its queue only every (SNDHWM + 1) // 2 replies, so a queue looks
    full with up to that many fewer unread: twice the unread replies allowed leaves room for that. Beyond it the
    ROUTER drops that peer's replies: the default of 1000 let a connection that never reads hold 1000 replies in the
    server's memory (250 MiB of 256 KiB replies), and the queue budgets count a request only until its reply is sent.
    """
    return min(2 * (int(max_client_queued_requests) + INLINE_UNREAD_REPLIES), MAX_SEND_HWM)


def _bound_dead_peers_by_tcp(sock: zmq.Socket) -> None:
    """Close connections whose peer stopped acknowledging (TCP_MAXRT) or vanished while idle (keepalive), where this
    pyzmq and platform offer the options: the heartbeat alone cannot see a peer that stops reading mid-reply."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    _set_if_supported(sock, "TCP_KEEPALIVE_IDLE", TCP_KEEPALIVE_IDLE_S)
    _set_if_supported(sock, "TCP_MAXRT", TCP_MAXRT_MS)


def _set_if_supported(sock: zmq.Socket, option: str, value: int) -> None:
    """Set zmq.<option> when this pyzmq names it and libzmq accepts it on this platform; otherwise log and go on."""
    number = getattr(zmq, option, None)
    if number is None:
        logger.debug("this pyzmq has no zmq.%s; not set", option)
        return
    try:
        sock.setsockopt(number, value)
    except zmq.ZMQError as exc:  # EINVAL: the libzmq build or the platform lacks it
        logger.debug("zmq.%s=%d not set: %s", option, value, exc)


class OverlongMessage(list):  # type: ignore[type-arg]
    """The first MAX_MESSAGE_FRAMES frames of a message that had `total` (the rest were dropped unread)."""

    total = 0


def _close_resources(context: zmq.Context, sock: zmq.Socket, security: Optional[ServerCurve],
                     wake_fds: Tuple[int, int]) -> None:
    """Close a Transport's socket before its context, then the pipe (also for a Transport dropped unclosed)."""
    sock.close(linger=0)
    if security is not None:
        security.stop()
    context.term()
    for fd in wake_fds:
        os.close(fd)


def _seed_generated_routing_ids() -> None:
    """Seed the C library's rand() from os.urandom before a ROUTER is made. libzmq numbers the routing ids it gives
    clients that set none from its first rand() (b"\\x00" + 0x6b8b4567 in every unseeded process), and asserts when the
    id it generates is one a client chose for itself: any peer that named its sockets with the next ids aborted the
    server (no message or token needed) once a plain client connected. Seeded, the next id cannot be guessed. Nothing
    where the C library cannot be reached (the numbering then stays libzmq's)."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError, TypeError):  # no dlopen(NULL) (Windows), or no srand in it
        pass


def _bind(sock: zmq.Socket, address: str, port: int) -> None:
    """Bind `sock` to `address`:`port` (0: a free port). A port held by a server of this process that was dropped
    unclosed is freed by the cyclic garbage collector (its finalizer closes the socket): collected once, then bound."""
    if port == 0:
        sock.bind_to_random_port(address)
        return
    try:
        sock.bind(f"{address}:{port}")
        return
    except zmq.ZMQError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    gc.collect()
    sock.bind(f"{address}:{port}")


class Transport:
    """A bound ROUTER socket plus a pipe any thread may write to wake the poll (the worker's "reply ready")."""

    def __init__(self, host: str, port: int, max_message_bytes: int, curve: Optional[CurveServerConfig] = None,
                 max_client_queued_requests: int = ServerLimits.max_client_queued_requests) -> None:
        address = f"tcp://{endpoint_host(host)}"
        _refuse_without_descriptors(f"{address}:{port}")  # before the context: libzmq aborts out of descriptors
        self.context = zmq.Context()
        _seed_generated_routing_ids()
        sock = self.context.socket(zmq.ROUTER)
        # CURVE keys (and the ZAP authenticator, in this context) must be in place before bind
        self.security: Optional[ServerCurve] = ServerCurve(curve, self.context, sock) if curve is not None else None
        sock.setsockopt(zmq.LINGER, 1000)  # let the last replies (e.g. kill's ack) flush
        # A frame over ZeroMQ's cap makes it close that peer's connection without a reply or any event that tells it
        # from an ordinary disconnect, so it cannot be logged or answered. The cap is twice the limit: a frame up to
        # that is received and refused in words (decode_payload), so a reference client that sends an oversized
        # request is told the limit instead of timing out; our client checks the size before sending.
        sock.setsockopt(zmq.MAXMSGSIZE, answered_frame_bytes(max_message_bytes))
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        self.send_hwm = send_hwm(max_client_queued_requests)
        sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        _bound_dead_peers_by_tcp(sock)
        sock.setsockopt(zmq.IPV6, int(is_ipv6_literal(host)))
        sock.copy_threshold = codec.ZERO_COPY_MIN_BYTES
        # A reply to a peer that is gone (a reference client that timed out and replaced its socket) or whose send
        # queue is full raises instead of vanishing, so it is counted as undelivered rather than as a success; replies
        # are sent without blocking (send), so a full queue cannot stall the socket thread.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            _bind(sock, address, port)
            self._wake_read, self._wake_write = os.pipe()
        except (zmq.ZMQError, OSError) as exc:
            sock.close(linger=0)
            self._stop_security()
            self.context.term()
            raise OSError(_bind_problem(f"{address}:{port}", exc)) from exc
        self.socket: Optional[zmq.Socket] = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self._wake_lock = threading.Lock()  # a closed pipe's fd numbers may be reused: never write after close
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._wake_read, zmq.POLLIN)
        # Also for a server dropped unclosed: the garbage collector clears the context's weak references to its sockets
        # before Context.__del__ runs, whose term() would then wait for ever on a socket it can no longer close.
        self._finalizer = weakref.finalize(self, _close_resources, self.context, sock, self.security,
                                          (self._wake_read, self._wake_write))
        self._finalizer.atexit = False  # at exit a daemon thread may still be in run(), polling this socket
        # A peer that sends without reading meets the full queue once per request: 20 per 10 s, then a count.
        self._dropped_replies = RateLimitedLog(logger)

    def wake(self) -> None:
        """Make the next (or current) poll return; safe from any thread, never blocks."""
        with self._wake_lock:
            if self._wake_write < 0:
                return
            try:
                os.write(self._wake_write, b"!")
            except OSError:  # the pipe is full: a wake-up is pending anyway
                pass

    def poll(self, timeout_ms: int) -> Tuple[bool, bool]:
        """Wait up to timeout_ms; (a message is waiting, a wake-up came). Wake-ups are drained."""
        events = dict(self._poller.poll(max(0, int(timeout_ms))))
        woken = self._wake_read in events
        if woken:
            try:
                while os.read(self._wake_read, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        return self.socket in events, woken

    def has_input(self) -> bool:
        """True when a message waits to be received (a zero-timeout check: about a microsecond)."""
        sock = self.socket
        return sock is not None and bool(sock.getsockopt(zmq.EVENTS) & _POLLIN)

    def receive(self, waiting: bool = False) -> Optional[List[zmq.Frame]]:
        """One waiting message's frames, or None when none is waiting (`waiting`: the poll just said one is)."""
        sock = self.socket
        assert sock is not None
        # Asking for EVENTS costs less than the zmq.Again a receive burst would otherwise end on.
        if not waiting and not sock.getsockopt(zmq.EVENTS) & _POLLIN:
            return None
        try:
            frame = sock.recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return None
        frames = [frame]
        while frame.more:  # a message's frames arrive together; Frame.more saves a getsockopt per frame
            frame = sock.recv(_NOBLOCK, copy=False)
            frames.append(frame)
            if len(frames) == MAX_MESSAGE_FRAMES and frame.more:
                return self._drop_rest(frames)
        return frames

    def _drop_rest(self, frames: List[zmq.Frame]) -> "OverlongMessage":
        sock = self.socket
        assert sock is not None
        kept = OverlongMessage(frames)
        total = len(frames)
        recv = sock.recv
        more = True
        while more:  # nothing kept, and copy passed by position (its keyword costs as much again): under 1 us a frame
            more = recv(_NOBLOCK, False).more
            total += 1
        kept.total = total
        return kept

    def send(self, routing: List[Any], frames: List[Any], peer: Optional[str]) -> bool:
        """Send a reply; False when it cannot reach its peer (gone, or its send queue full), which is logged, not raised."""
        try:
            self._send_now([*routing, *frames])
        except zmq.Again:  # send_hwm replies wait for a peer that does not read them
            self._dropped_replies.warning(
                "reply to %s dropped: its queue of unread replies is full (%d, the send high-water mark): the peer "
                "reads too slowly or not at all", peer or "local", self.send_hwm, kind=peer)
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:  # its connection closed: a client that gave up (counted undelivered)
                logger.debug("reply to %s not delivered: its connection is gone", peer or "local")
            else:
                self._dropped_replies.warning("could not send reply to %s: %s", peer or "local", exc)
            return False
        return True

    def _send_now(self, frames: List[Any]) -> None:
        """Queue a message without blocking; zmq.Again when the peer's queue is full by its latest count."""
        sock = self.socket
        assert sock is not None
        try:
            # Frames are owned bytes, never changed once handed over (the server copies policy buffers when it
            # encodes), so ZeroMQ may send large ones without another copy.
            send_frames(sock, frames, _NOBLOCK)
        except zmq.Again:
            # A send reads the I/O thread's news of what the peer has taken at most once a millisecond; asking for
            # EVENTS reads it now, so a queue that only looked full takes the reply.
            sock.getsockopt(zmq.EVENTS)
            send_frames(sock, frames, _NOBLOCK)

    def _stop_security(self) -> None:
        """Stop the ZAP authenticator: its sockets would keep the context from terminating."""
        if self.security is not None:
            self.security.stop()

    def close(self) -> None:
        """Close the socket, the context and the pipe (a late wake() from an abandoned worker is ignored)."""
        self._dropped_replies.flush()
        if self.socket is not None:
            self.socket.close()  # with its linger: the last replies flush
            self.socket = None
        with self._wake_lock:
            self._wake_read = self._wake_write = -1
        self._finalizer()
