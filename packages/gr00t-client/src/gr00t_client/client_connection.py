"""PolicyClient's REQ socket over its life: opened on the process's shared context, waited on in slices, replaced
after a timeout, closed from any thread, and made afresh in a forked child."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

import zmq

from . import codec, curve, host_lookup
from .client_errors import ClientClosedError, PolicyTimeoutError, ReplyLostError
from .client_options import endpoint_host, is_ipv6_literal
from .client_sockets import _PROCESS_CONTEXT, FORK_ADOPTION_LOCK, _ReplyWatch
from .process_limits import descriptor_words, open_descriptor_count, resource_limits

logger = logging.getLogger("gr00t_client.client")  # PolicyClient's one logger, whichever of its modules logs

CLOSE_POLL_MS = 50  # an in-flight call notices close() from another thread within this long


# What a client asks on a call's behalf (the server's kind, its modality configs): named with that call
_QUESTIONS = frozenset({"get_server_info", "get_modality_config"})


# Open descriptors this close to the soft limit: a connect may have found none left (its I/O thread's TCP socket).
_NEAR_DESCRIPTOR_LIMIT = 16


def _descriptor_advice(exc: zmq.ZMQError) -> str:
    """For EMFILE ("Too many open files"): what ran out, the process's limits and how to raise them; else ''."""
    if exc.errno != errno.EMFILE:
        return ""
    return "; " + _descriptor_words("has used up its file descriptors")


def _refused_connects_advice() -> str:
    """For connects that all failed: EMFILE's advice where this process is within _NEAR_DESCRIPTOR_LIMIT of its soft
    limit (libzmq's I/O thread then retries a socket() that fails, and the monitor sees it as a refused connect); ''
    otherwise, or where /proc/self/fd cannot be counted (not Linux)."""
    limits, open_fds = resource_limits("RLIMIT_NOFILE"), open_descriptor_count()
    if limits is None or open_fds is None or limits[0] is None:  # not Linux, or no limit: not known
        return ""
    if open_fds < limits[0] - _NEAR_DESCRIPTOR_LIMIT:
        return ""
    return f"; or no descriptor was left to connect with: {_descriptor_words(f'has {open_fds} file descriptors open')}"


def _descriptor_words(state: str) -> str:
    """'this process <state> (its limits), ...': what each client holds and how to raise the limit."""
    return descriptor_words(state, "each PolicyClient holds about 4 (its connection, the socket's mailbox and its "
                            "handshake monitor's pair)", "close clients no longer used")


class ClientConnection:
    """PolicyClient's connection (a mixin of PolicyClient): one REQ socket at a time (the ZeroMQ guide's Lazy Pirate
    client), its waits, its lock, and closing it."""

    _keys_worked = False  # a handshake with this client's keys succeeded on one of its sockets (HandshakeMonitor)

    @property
    def address(self) -> str:
        """The ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555 or tcp://[::1]:5555."""
        return f"tcp://{endpoint_host(self.host)}:{self.port}"

    def _closed_error(self, endpoint: str) -> ClientClosedError:
        return ClientClosedError(f"PolicyClient for {self.address} is closed, so {self._named(endpoint)} was not sent; "
                                 "make a new PolicyClient to call the server again")

    def _open_socket(self) -> None:
        """Connect a REQ socket and its monitor, as this client's socket and handshake (set together, once both are
        made); an exception anywhere in here (a Ctrl-C too) closes what was made, and sets neither."""
        if self._context is None:
            raise ClientClosedError(f"PolicyClient for {self.address} is closed; make a new PolicyClient to call the "
                                    "server again")
        self._close_socket()  # half of one left by an interrupted close (a socket without its monitor): not reused
        try:
            sock = _PROCESS_CONTEXT.socket(self._context, zmq.REQ)
        except zmq.ZMQError as exc:  # e.g. EMFILE: too many open files
            raise ConnectionError(f"cannot open a socket to {self.address}: {exc}{_descriptor_advice(exc)}") from exc
        handshake: Optional[_ReplyWatch] = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Each request carries an id its reply must echo: a stale or duplicated reply (a misbehaving server or
            # proxy re-sending an earlier one) is dropped, not taken as the answer to the next request.
            sock.setsockopt(zmq.REQ_CORRELATE, 1)
            sock.setsockopt(zmq.REQ_RELAXED, 1)  # as libzmq pairs them; a timed-out socket is still replaced
            # Only for literals: with IPV6 on, a name like "localhost" could resolve to ::1 while the server is on 127.0.0.1.
            sock.setsockopt(zmq.IPV6, int(is_ipv6_literal(self.host)))
            sock.copy_threshold = codec.ZERO_COPY_MIN_BYTES
            # libzmq drops a peer at the header of a larger frame, before allocating it (-1: no cap)
            sock.setsockopt(zmq.MAXMSGSIZE, -1 if self.max_reply_bytes is None else self.max_reply_bytes)
            curve.apply_client_keys(sock, self._curve)
            handshake = _ReplyWatch(sock, self.address, self._curve, keys_worked=self._keys_worked)
            sock.connect(self.address)
        except BaseException as exc:  # e.g. a malformed host, or a Ctrl-C: a socket left open, monitored by a monitor
            # no one reads, froze every socket of the process's shared context (HandshakeMonitor.close)
            try:
                if handshake is not None:
                    handshake.close()
            finally:
                sock.close(linger=0)
            if isinstance(exc, zmq.ZMQError):  # keep to our error types
                raise ConnectionError(f"cannot connect to {self.address}: {exc}{_descriptor_advice(exc)}") from exc
            raise
        self._socket, self._handshake = sock, handshake

    def _discard_socket(self) -> None:
        self._forget_server()  # a broken connection: whoever answers next may be another server
        self.server_changes += 1
        self._close_socket()

    def _close_socket(self) -> None:
        # Both let go of in one statement, then each closed even if the other's close is interrupted (a second Ctrl-C
        # in an interrupted call's cleanup): a socket kept without its monitor failed every later call.
        handshake, sock, self._handshake, self._socket = self._handshake, self._socket, None, None
        try:
            if handshake is not None:
                self._keys_worked = self._keys_worked or handshake.keys_worked
                handshake.close()
        finally:
            if sock is not None:
                sock.close(linger=0)

    def _replace_socket(self) -> None:
        """After a timeout (Lazy Pirate): forget the server's facts (whoever answers next may be another server),
        close the socket and connect its replacement at once, so that the new connection's handshake runs while the
        caller is between calls instead of inside the next call's budget. On a link whose round trip is a third of
        timeout_ms, a handshake, a get_server_info question and the call itself did not fit in one budget: every
        call after one latency spike timed out, for good."""
        self._forget_server()
        self.server_changes += 1
        self._close_socket()
        if self._context is None or self._closing.is_set():
            return
        try:
            self._open_socket()
        except ConnectionError as exc:  # e.g. out of file descriptors: the next call tries again, and says why
            logger.debug("could not reconnect to %s at once: %s", self.address, exc)

    def _timeout(self, endpoint: str, stage: Optional[str] = None) -> PolicyTimeoutError:
        """`stage`: what the connection got to (HandshakeMonitor.stage); '' when connected, None when not known."""
        lookup = self._unfinished_lookup
        if lookup is not None and not lookup.finished:  # ZeroMQ's connect waits on that resolver too
            why = (f"the name lookup of {self.host!r} had not finished after {lookup.age_ms()} ms: a DNS server that "
                   "does not answer, or a slow mDNS '.local' name? Pass the server's IP address as host to skip it")
        elif stage is None:
            why = "is it running and reachable?"
        elif stage:
            why = stage + self._localhost_hint(stage) + (
                _refused_connects_advice() if curve.CONNECTS_REFUSED in stage else "")
        else:
            why = "connected, but no reply came: a policy call slower than the timeout, a hung server or a slow link?"
        return PolicyTimeoutError(
            f"policy server at {endpoint_host(self.host)}:{self.port} did not answer {self._named(endpoint)} within "
            f"{getattr(self._call, 'budget_ms', None) or self.timeout_ms} ms ({why})"
        )

    @contextlib.contextmanager
    def _asking_first(self, endpoint: str) -> Iterator[None]:
        """Questions asked on `endpoint`'s behalf (the first call's get_server_info) are named with it when they fail,
        so a get_action that timed out says 'get_action', not only the question the caller never asked."""
        call = self._call
        outer = getattr(call, "asking_for", None)
        call.asking_for = outer or endpoint
        try:
            yield
        finally:
            call.asking_for = outer

    def _named(self, endpoint: str) -> str:
        """'endpoint', or 'get_action' (asking 'get_server_info' first) for a question asked on a call's behalf."""
        caller = getattr(self._call, "asking_for", None)
        if caller and caller != endpoint and endpoint in _QUESTIONS:
            return f"'{caller}' (asking '{endpoint}' first)"
        return f"'{endpoint}'"  # a call of its own, also one a signal handler made in the middle of another

    def _localhost_hint(self, stage: str) -> str:
        if self.host.lower() == "localhost" and "refused" in stage:
            return "; host 'localhost' is connected over IPv4 (127.0.0.1): for a server bound to ::1 pass host='::1'"
        return ""

    def _check_host_resolves(self, deadline: float, endpoint: str) -> None:
        """ConnectionError at once for a host name that does not resolve (ZeroMQ would retry it in silence until
        the timeout). Checked until the name has resolved once; a lookup slower than the budget is left to ZeroMQ,
        as is a temporary DNS failure; a budget spent waiting on it is a PolicyTimeoutError naming the lookup. IP
        addresses are not looked up; a malformed IPv4 address is refused."""
        if self._host_resolved or is_ipv6_literal(self.host):
            return
        try:
            ipaddress.IPv4Address(self.host)
            self._host_resolved = True
            return
        except ValueError:  # a name, a short form the resolver reads (127.1), or a malformed address (999.1.1.1)
            pass
        lookup = host_lookup.look_up(self.host)  # shared: clients of a host whose lookup hangs wait on that one
        if not self._wait_for_lookup(lookup, min(deadline, time.monotonic() + 5.0), endpoint):
            self._unfinished_lookup = lookup  # the timeout names it: ZeroMQ's own connect waits on the same resolver
            if time.monotonic() >= deadline:  # nothing sent, no socket made: the next call waits on the same lookup
                raise self._timeout(endpoint)
            return  # slower than 5 s: left to ZeroMQ, and the timeout says the lookup had not finished
        self._unfinished_lookup = None
        outcome = lookup.outcome
        if "ipv4" in outcome:
            self._host_resolved = True
            return
        error = outcome.get("error")
        if error is None or getattr(error, "errno", None) == socket.EAI_AGAIN:
            return  # slow or temporarily failing DNS: ZeroMQ keeps trying, and the timeout says so
        if "ipv6" in outcome:
            addresses = sorted({info[4][0] for info in outcome["ipv6"]})
            raise ConnectionError(f"host {self.host!r} has IPv6 addresses only ({', '.join(addresses)}); pass one of "
                                  "them as host to connect over IPv6")
        raise ConnectionError(f"cannot connect to the policy server at {self.address}: host {self.host!r} does not "
                              f"resolve ({error}); check the host name (or IP address)")

    def _wait_for_lookup(self, lookup: host_lookup.HostLookup, until: float, endpoint: str) -> bool:
        """Whether `lookup` finished by `until`, waited on in slices (as `_wait` does) so that close() from another
        thread, which waits for this call's lock, ends the call within CLOSE_POLL_MS."""
        while True:
            if self._closing.is_set() or self._interrupted():
                raise ClientClosedError(f"PolicyClient for {self.address} was {self._ended_by()} while "
                                        f"{self._named(endpoint)} waited for the name lookup of {self.host!r}, so "
                                        "nothing was sent")
            remaining_s = until - time.monotonic()
            if lookup.wait(max(0.0, min(remaining_s, CLOSE_POLL_MS / 1000))):
                return True
            if remaining_s <= CLOSE_POLL_MS / 1000:
                return False

    def _reply_lost(self, endpoint: str) -> ReplyLostError:
        causes = ["the server stopped, restarted or dropped the request (one over its max message size)",
                  "the link dropped the connection mid-request (a slow uplink sending a large request, a network drop)"]
        cap = self.max_reply_bytes
        if cap is not None:
            causes.append(f"its reply was larger than this client's max_reply_bytes of {cap} bytes (ZeroMQ drops a "
                          "connection at the header of a larger message, unread; if this server's replies really are "
                          "that large, pass a larger max_reply_bytes to PolicyClient, or None for no cap)")
        return ReplyLostError(  # the likely cause first: a server that died (the size cap is the rarer one)
            f"the connection to the policy server at {endpoint_host(self.host)}:{self.port} closed while this client "
            f"waited for its reply to {self._named(endpoint)}, so none can come: {', '.join(causes[:-1])}, or "
            f"{causes[-1]}. The next call connects anew."
        )

    def _wait(self, wait: Callable[[float], bool], deadline: float, endpoint: str, sent: bool = True) -> None:
        """Wait (the monitor's wait_to_send or wait_for_reply) until `deadline`; a failed handshake (keys, or
        encryption on one side only) raises HandshakeError, not a timeout; once the request is `sent`, its
        connection closing raises ReplyLostError."""
        assert self._handshake is not None
        while True:  # in slices, so that close() from another thread is noticed within CLOSE_POLL_MS
            if self._closing.is_set() or self._interrupted():
                raise ClientClosedError(f"PolicyClient for {self.address} was {self._ended_by()} while waiting for "
                                        f"{self._named(endpoint)}")
            remaining_ms = max(0.0, (deadline - time.monotonic()) * 1000)
            if wait(min(remaining_ms, CLOSE_POLL_MS)):
                return
            if sent and self._handshake.dropped():
                raise self._reply_lost(endpoint)
            if time.monotonic() >= deadline:
                raise self._handshake.failure() or self._timeout(endpoint, self._handshake.stage())

    def _adopt_after_fork(self) -> None:
        """In a child forked from the process that made this client, start afresh: ZeroMQ objects do not survive a
        fork (the child's first call spun at full CPU for ever, whatever timeout_ms), and a lock a parent thread held
        at that moment stays held. The parent's objects are left alone (pyzmq never closes them from another process),
        so the parent's connection is unaffected; what was learned about the server still holds. The child gets a
        session of its own unless the client was given its session_id; where the parent was served, that session must be
        reset in the child before a policy that keeps sessions (a replay) serves its get_action (ForkedSessionError)."""
        if self._pid == os.getpid():
            return
        with FORK_ADOPTION_LOCK:  # the child's other threads wait for it; the first to take it adopts
            if self._pid != os.getpid():
                self._start_afresh_in_child()

    def _start_afresh_in_child(self) -> None:
        closed, closing = self._context is None, self._closing.is_set()
        self._socket, self._handshake, self._unfinished_lookup = None, None, None  # its thread is the parent's
        self._lock, self._lock_owner, self._awaiting = threading.RLock(), None, None
        self._closing, self._call = threading.Event(), threading.local()
        if closing:
            self._closing.set()
        self._context = None if closed else _PROCESS_CONTEXT.get()
        if not self._session_given:
            # A session of its own: with the parent's id, a stateful server (a replay) kept one cursor for every forked
            # worker, and each worker's reset moved the others' (a worker replayed another's episode, without a word).
            # A child of a served client must reset its new session before a policy that keeps sessions serves its
            # get_action (ForkedSessionError, or the server's refusal where the client does not know the policy's
            # kind): a new session was served from its initial state in silence (a replay's episode 0, not the
            # parent's episode). Its reset starts the session afresh, as a new client's does.
            self.session_id = uuid.uuid4().hex
            self._forked_session, self._session_served = self._session_served or self._forked_session, False
        logger.debug("PolicyClient for %s in forked process %d: new ZeroMQ context and socket", self.address, os.getpid())
        self._pid = os.getpid()  # last: a thread that sees the child's pid skips the adoption and uses what it made

    def interrupt_calls(self) -> None:
        """End the calls in flight now, from any thread, within CLOSE_POLL_MS (ClientClosedError; the socket they wait
        on is dropped) and leave the client open: a later call connects anew. A relay's stop ends its upstream call
        so."""
        self._interrupts += 1

    def _interrupted(self) -> bool:
        return getattr(self._call, "interrupts_at_start", self._interrupts) != self._interrupts

    def _ended_by(self) -> str:
        return "closed" if self._closing.is_set() else "interrupted (interrupt_calls(): a relay stopping?)"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the client's lock for one call; a close() asked for meanwhile from this thread is done on the way out."""
        self._adopt_after_fork()
        with self._lock:
            outer = self._lock_owner
            self._lock_owner = threading.get_ident()
            if outer is None:  # the outermost call: interrupt_calls() from now on ends it
                self._call.interrupts_at_start = self._interrupts
            try:
                yield
            finally:
                self._lock_owner = outer
                if outer is None and self._closing.is_set():  # close() from this thread mid-call left the rest to us
                    self._close_now()

    def close(self) -> None:
        """Close the socket and context without waiting for undelivered messages; safe from any thread, at any
        moment: a call in flight in another thread stops waiting (ConnectionError) within CLOSE_POLL_MS."""
        if getattr(self, "_closing", None) is None:  # __init__ failed before the lock existed
            return
        self._adopt_after_fork()  # a forked child closes its own objects, never the parent's
        self._closing.set()
        with self._lock:  # reentrant: on the thread in a call (a signal handler) it is ours at once
            if self._lock_owner == threading.get_ident():
                # A call on this thread was interrupted mid-way: it sees _closing within CLOSE_POLL_MS and closes
                # on its way out (closing the socket under it here would break it mid-operation).
                return
            self._close_now()

    def _close_now(self) -> None:
        """Close the socket (holding the lock) and let go of the process's shared context; safe to re-enter from a
        signal handler."""
        self._discard_socket()
        self._context = None
