"""CURVE encryption for PolicyClient: key loading, socket setup, and telling a failed handshake from a timeout.

Keys are ZeroMQ CURVE keys, given either as 40-character z85 strings or as certificate files in the format
`zmq.auth` reads and `gr00t-server keygen` writes (NAME.key holds the public key, NAME.key_secret both).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .cli_flags import HomeFolderUnknownError, home_expanded_path

logger = logging.getLogger(__name__)

KeySource = Union[str, bytes, "os.PathLike[str]"]
"""A CURVE key as a z85 string (str or bytes) or the path of a zmq.auth certificate file."""

Z85_KEY_LENGTH = 40
_Z85_ALPHABET = frozenset(z85.Z85CHARS)
_Z85_TEXT = z85.Z85CHARS.decode("ascii")
_Z85_SYMBOLS = frozenset(char for char in _Z85_TEXT if not char.isalnum() and char not in "-/.")  # rare in paths
_KEY_LIKE_CHARACTERS = 8  # capitals and _Z85_SYMBOLS in 41 characters: a random key holds about 21, under 8 once in 250,000
_KEY_LIKE_SYMBOLS = 3  # _Z85_SYMBOLS alone in 41 characters: a random key holds about 9; a key short of the first has them
_SECRET_LIKE_LENGTH = 30  # z85 characters: a key with a few lost, or split by a space, still holds most of its secret
# stage()'s words for connects that all failed (the client adds EMFILE's advice near the descriptor limit)
CONNECTS_REFUSED = "every connect attempt failed: connection refused (nothing listening on that port?)"
# The ZAP status a server answers a key it could not check (its authorized keys cannot be read: RFC 27's internal
# error), rather than 400, which says the key is not allowed
ZAP_CANNOT_CHECK = 500
_NO_DETAIL_FAILURES_TO_GIVE_UP = 2  # a connection dropped mid-handshake once may be chance; twice in a row is not


class HandshakeError(ConnectionError):
    """The ZeroMQ security handshake with the server failed (wrong keys, or encryption on one side only).

    Retrying with the same keys cannot succeed, except where the server closed the connection mid-handshake: a
    forwarder (docker -p, ssh -L, kubectl port-forward) whose server is down or still starting does that too, and a
    retry succeeds once its server is up. The message says which side to fix.
    """

    # The server closed the connection mid-CURVE-handshake after a handshake with the same keys had succeeded on this
    # client: a forwarder whose server is restarting does that too, so this alone does not show the keys are refused.
    closed_after_keys_worked = False


def _is_z85_key(text: bytes) -> bool:
    """40 z85 characters that decode to 32 bytes (each 5-character group must stay below 2**32)."""
    if len(text) != Z85_KEY_LENGTH or not all(byte in _Z85_ALPHABET for byte in text):
        return False
    try:
        z85.decode(text)
    except (struct.error, ValueError):
        return False
    return True


def _not_a_key(what: str, text: str, kind: str) -> ValueError:
    """Why `text` is no key: 40 z85 characters that do not decode (a mistyped character) are told apart. A value that
    may hold a secret key is never repeated (it would land in logs and results files), only its length."""
    raw = text.encode("ascii", "replace")
    if os.path.isdir(text):
        return ValueError(f"{what}: {text!r} is a directory; pass the certificate file in it (NAME.key for a public "
                          "key, NAME.key_secret for a key pair)")
    hidden = "secret" in kind and _may_hold_a_secret(text)
    shown = f"a {len(text)}-character value (not shown)" if hidden else repr(text)
    if len(raw) == Z85_KEY_LENGTH and all(byte in _Z85_ALPHABET for byte in raw):
        return ValueError(f"{what}: {shown} is not a valid z85 {kind}: a 5-character group decodes past 2**32 "
                          "(a mistyped character?); copy it again from the .key file")
    typed = text
    # z85 has '/': only a path's shape (a certificate file's name, or longer than a key and a '/') is named by its
    # folder, and never by one that may itself be part of a key; otherwise by its length alone
    path_shaped = os.path.basename(text).endswith((".key", ".key_secret")) or len(text) > Z85_KEY_LENGTH + 1
    if hidden and path_shaped and (os.sep in text or (os.altsep and os.altsep in text)):
        folder, below = _deepest_existing_folder(text)
        if not _holds_a_key_like_run(folder):
            typed = below
            shown += (f" whose deepest existing folder is {folder!r} (what follows it may hold a key, so it is not "
                      "shown)")
    stem, dot, suffix = typed.rpartition(".")
    typed = stem if dot and suffix in ("key", "key_secret") else typed  # the '_' of '.key_secret' is no stray
    strays = sorted({char for char in typed if char not in _Z85_TEXT}) if hidden else []
    held = f"; it holds {', '.join(map(repr, strays))}, which no z85 key has" if strays else ""
    return ValueError(f"{what}: {shown} is neither an existing certificate file nor a 40-character z85 {kind}{held}")


def _may_hold_a_secret(text: str) -> bool:
    """Whether `text` may be a mistyped secret key, and so must never be shown: it holds about as many z85 characters
    as a key, and either holds a key-like run (_holds_a_key_like_run), whatever folder it starts with, or is not a
    path: not a certificate file's name (PATH.key or PATH.key_secret) nor under an existing directory (a key's first
    '/'-part names none)."""
    if sum(char in _Z85_TEXT for char in text) < _SECRET_LIKE_LENGTH:
        return False
    if _holds_a_key_like_run(text):
        return True  # 'keys/<KEY>_old.key_secret' starts with an existing folder and still holds the key
    stem, dot, suffix = text.rpartition(".")
    if dot and suffix in ("key", "key_secret") and not any(char.isspace() for char in text):
        # a missing key file, whose path is worth naming; not a whole key with a suffix typed after it: a file name
        # holding a key's length of z85 characters in a row with capitals or symbols in it, which path words (lower
        # case, digits, '-') lack (a key drawn with only 4 capitals and 2 symbols passed the run's test above and was
        # shown whole before its '_old.key')
        name = stem.rpartition("/")[2]
        return (_longest_z85_run(name) >= Z85_KEY_LENGTH - 5
                and sum(char.isupper() or char in _Z85_SYMBOLS for char in name) >= 2)
    top, separator, _ = text.lstrip(os.sep).partition(os.sep)
    if not separator or top in ("", ".", ".."):
        return True
    return not os.path.isdir(os.sep + top if text.startswith(os.sep) else top)


def _deepest_existing_folder(path: str) -> Tuple[str, str]:
    """The deepest existing directory among `path`'s parents ('.' where none of a relative path's is), and the rest of
    `path` below it. A directory on disk is no secret; the components below it may be a key."""
    folder = os.path.dirname(path)
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not folder or not os.path.isdir(folder):
        return ".", path
    return folder, path[len(folder):].lstrip(os.sep + (os.altsep or ""))


def _longest_z85_run(text: str) -> int:
    """The most z85 characters in a row in `text`."""
    longest = run = 0
    for char in text:
        run = run + 1 if char in _Z85_TEXT else 0
        longest = max(longest, run)
    return longest


def _holds_a_key_like_run(text: str) -> bool:
    """Whether `text` holds a key's 40 characters, give or take one (a mistyped one, or a '_old' typed after them): 35
    or more z85 characters in 41 in a row, 8 or more of them capitals or symbols other than '-', '/' and '.', or 3 or
    more of them such symbols. A key's 40 random characters hold about 21 of the first and 9 of the second; path words
    (lowercase, digits, '-', '/') hardly any. A key with only 7 of the first (4 capitals, ']', ':', '%': once in
    250,000) was shown whole before its ',.key'."""
    for start in range(max(1, len(text) - Z85_KEY_LENGTH)):
        window = text[start:start + Z85_KEY_LENGTH + 1]
        if sum(char in _Z85_TEXT for char in window) < Z85_KEY_LENGTH - 5:
            continue
        symbols = sum(char in _Z85_SYMBOLS for char in window)
        if symbols >= _KEY_LIKE_SYMBOLS or symbols + sum(char.isupper() for char in window) >= _KEY_LIKE_CHARACTERS:
            return True
    return False


def _unwrapped(text: str) -> str:
    """`text` without the whitespace and matching quotes around it (a line end or the quotes an env file keeps),
    which no z85 key and hardly any path has."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


unwrapped_key_text = _unwrapped  # for callers outside this module that must read a key value as the client does


def is_z85_key(value: str) -> bool:
    """Whether `value` is itself a z85 key (surrounding whitespace and quotes aside), not a certificate file's path."""
    return _is_z85_key(_unwrapped(value).encode("ascii", "replace"))


def _as_text(value: KeySource, what: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{what} must be a 40-character z85 key or a certificate path; got {len(value)} non-ASCII bytes") from None
    if isinstance(value, (str, os.PathLike)):
        text = _unwrapped(os.fspath(value))
        if not text:  # an unset variable's value, told as such rather than as a missing file
            raise ValueError(f"{what} is empty; pass a certificate file or a 40-character z85 key")
        try:
            return home_expanded_path(text)  # '~' is not a z85 character: a z85 key passes unchanged
        except HomeFolderUnknownError as exc:  # the path alone named no flag or variable
            raise HomeFolderUnknownError(f"{what}: {exc}") from None
    raise TypeError(f"{what} must be a z85 key string or a certificate path, got {type(value).__name__}")


def _read_certificate(path: str, what: str) -> Tuple[bytes, Optional[bytes]]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, IndexError) as exc:  # IndexError: a 'public-key:' line where zmq.auth wants '='
        raise ValueError(f"{what}: {path} is not a readable zmq.auth certificate file "
                         f"({exc or type(exc).__name__}; expected lines like public-key = \"<40 z85 characters>\")") from exc
    if not public or not _is_z85_key(public):
        raise ValueError(f"{what}: {path} holds no valid 40-character z85 public-key")
    if secret is not None and not _is_z85_key(secret):
        raise ValueError(f"{what}: {path} holds a malformed secret-key (expected 40 z85 characters)")
    if secret is not None:
        if zmq.curve_public(secret) != public:  # the fingerprint printed, and every handshake, would be another key's
            raise ValueError(f"{what}: {path}: its public-key does not belong to its secret-key (a hand-edited or "
                             "mixed certificate?); make the pair again with gr00t-server keygen")
        mode = os.stat(path).st_mode
        if mode & 0o077 and os.name == "posix":
            logger.warning("%s: %s holds a secret key and is readable by other users (mode %o): chmod 600 it",
                           what, path, mode & 0o777)
    return public, secret


def load_public_key(value: KeySource, what: str = "server_public_key") -> bytes:
    """The z85 public key in `value`: a z85 string, or a certificate file (NAME.key, or NAME.key_secret)."""
    text = _as_text(value, what)
    if os.path.isfile(text):
        public, secret = _read_certificate(text, what)
        if secret is not None:
            logger.warning("%s: %s is a secret certificate; only its public key is used, and the secret file "
                           "should not be copied to clients (give them the .key file)", what, text)
        return public
    if _is_z85_key(text.encode("ascii", "replace")):
        return text.encode("ascii")
    raise _not_a_key(what, text, "key")


def load_key_pair(value: KeySource, what: str = "client_secret_key") -> Tuple[bytes, bytes]:
    """(public, secret) z85 keys from a secret certificate file (NAME.key_secret) or a z85 secret key."""
    text = _as_text(value, what)
    if os.path.isfile(text):
        public, secret = _read_certificate(text, what)
        if secret is None:
            raise ValueError(f"{what}: {text} holds only a public key; pass the secret certificate (NAME.key_secret)")
        return public, secret
    raw = text.encode("ascii", "replace")
    if _is_z85_key(raw):
        return zmq.curve_public(raw), raw
    raise _not_a_key(what, text, "secret key")


def key_fingerprint(public_key: bytes) -> str:
    """A short, SSH-style fingerprint of a z85 public key: 'SHA256:' and the base64 of its digest."""
    digest = hashlib.sha256(z85.decode(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class ClientCurveKeys:
    """The keys a CURVE client socket needs; `ephemeral` when no client key pair was given (one made per client)."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes
    ephemeral: bool

    def __repr__(self) -> str:  # never print a secret key
        return f"ClientCurveKeys(server={key_fingerprint(self.server_public)}, client={key_fingerprint(self.client_public)}, ephemeral={self.ephemeral})"


def client_keys(server_public_key: Optional[KeySource], client_secret_key: Optional[KeySource]) -> Optional[ClientCurveKeys]:
    """The client's CURVE keys, or None for a plaintext client.

    Without `client_secret_key` a fresh (ephemeral) key pair is made: the traffic is still encrypted, but a server
    that checks authorized keys will refuse it.
    """
    if server_public_key is None:
        if client_secret_key is not None:
            raise ValueError("client_secret_key was given without server_public_key; CURVE needs the server's public key")
        return None
    if not zmq.has("curve"):  # pragma: no cover - the pyzmq wheels ship libsodium-free CURVE
        raise RuntimeError("this libzmq was built without CURVE support (zmq.has('curve') is False)")
    server_public = load_public_key(server_public_key, "server_public_key")
    if client_secret_key is None:
        public, secret = zmq.curve_keypair()
        return ClientCurveKeys(server_public, public, secret, ephemeral=True)
    public, secret = load_key_pair(client_secret_key, "client_secret_key")
    refuse_the_servers_key_pair(server_public, public, "client_secret_key", "server_public_key")
    return ClientCurveKeys(server_public, public, secret, ephemeral=False)


def refuse_the_servers_key_pair(server_public: bytes, client_public: bytes, client_what: str, server_what: str) -> None:
    """ValueError when the server's public key and the client's secret key are one pair: either the client's own
    public key was given as the server's, or the server's secret was copied off the server (which the two keys alone
    cannot tell apart), so the message gives the fix for each."""
    if client_public == server_public:
        raise ValueError(f"{server_what} and {client_what} are one key pair ({key_fingerprint(client_public)}): either "
                         f"{server_what} is this client's own public key (pass the server's .key file, e.g. server.key, "
                         f"instead), or {client_what} is the server's own key pair (the server's secret key must stay "
                         "on the server; make this client its own pair with `gr00t-server keygen --name ROBOT` and add "
                         "ROBOT.key to the server's authorized-keys directory)")


def apply_client_keys(sock: zmq.Socket, keys: Optional[ClientCurveKeys]) -> None:
    """Make `sock` a CURVE client (before it connects); a no-op for a plaintext client."""
    if keys is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)


# The plain int: `int & zmq.POLLIN` builds enum.Flag members in Python, twice per call on a client's hot path.
MONITOR_READABLE = int(zmq.POLLIN)

# CONNECTED and DISCONNECTED too: a connection dropped before its handshake succeeded is a failed handshake even if
# its failure event was lost (seen with libzmq 4.3.5 when a handshake event was the monitor's first: ~1 in 100).
# CONNECT_RETRIED: a connect attempt failed (refused, or a name that did not resolve): told apart in a timeout's words.
_HANDSHAKE_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class HandshakeMonitor:
    """Watches one client socket's handshake events (a ZeroMQ socket monitor) while the client waits for a reply.

    An explicit refusal (auth, or encryption on one side only) fails at once; with CURVE, a connection the server
    drops mid-handshake (a wrong server key) fails once it has happened twice in a row or when the wait times out.
    Without CURVE such drops are never taken as a failure: they are what a forwarder (docker -p, ssh -L) does while
    its server is down or still starting, so the client waits, and a timeout's words say what was seen
    (`stage()`).
    """

    def __init__(self, sock: zmq.Socket, address: str, keys: Optional[ClientCurveKeys], keys_worked: bool = False) -> None:
        self.address = address
        self._keys = keys
        self.keys_worked = keys_worked  # a handshake with these keys succeeded (on this socket, or on an earlier one)
        self._sock = sock
        self._monitor: Optional[zmq.Socket] = None
        try:  # pyzmq's get_monitor_socket, in steps that a Ctrl-C between them leaves closable (close())
            # A unique address: pyzmq's default names it after the socket's fd, which a later socket can reuse while
            # the old monitor endpoint still exists, and then the new monitor hears nothing.
            address = f"inproc://gr00t-handshake-{uuid.uuid4().hex}"
            sock.monitor(address, _HANDSHAKE_EVENTS)
            self._monitor = sock.context.socket(zmq.PAIR)
            self._monitor.connect(address)
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(self._monitor, zmq.POLLIN)
        except BaseException:
            self.close()
            raise
        self._send_poller: Optional[zmq.Poller] = None  # made when a send first has to wait (wait_to_send)
        self._failure: Optional[HandshakeError] = None  # since the last successful handshake
        self._dropped_in_a_row = 0
        self._handshake_settled = True  # False between a connection and the outcome of its handshake
        self._connections = 0  # successful handshakes: more than one means the socket reconnected
        self._connections_told = 0
        self._connected = False  # a handshake succeeded and its connection has not closed since
        self._lost = False  # an established connection closed (the counts below are since then)
        self._tcp_connections = 0  # TCP connections made (handshake or not)
        self._retries = 0  # connect attempts that failed (refused, unresolved)
        self._closed_in_handshake = 0  # connections closed by the peer before a handshake finished

    def wait_for_reply(self, timeout_ms: float) -> bool:
        """True once `sock` has a reply; False after `timeout_ms`; HandshakeError as soon as the keys are known wrong."""
        return self._wait(self._poller, zmq.POLLIN, timeout_ms)

    def wait_to_send(self, timeout_ms: float) -> bool:
        """True once `sock` can send; False after `timeout_ms`; HandshakeError as soon as the keys are known wrong.
        A REQ socket cannot send while it has no connection to queue on: libzmq drops the one whose handshake was
        refused, so waiting here for a refused key is waiting for a failure this monitor may have seen already."""
        if self._send_poller is None:
            self._send_poller = zmq.Poller()
            self._send_poller.register(self._sock, zmq.POLLOUT)
            self._send_poller.register(self._monitor, zmq.POLLIN)
        return self._wait(self._send_poller, zmq.POLLOUT, timeout_ms)

    def _wait(self, poller: zmq.Poller, ready_event: int, timeout_ms: float) -> bool:
        # A failure seen before this wait (a refusal on the connection made at a timeout, read by expect_reply) is
        # not heard again: libzmq does not retry a refused handshake, so the wait would run out for nothing.
        self._drain()
        if self._failure is not None and self._is_definitive() and not self._sock.get(zmq.EVENTS) & ready_event:
            raise self._failure
        deadline = time.monotonic() + max(0, timeout_ms) / 1000.0
        while True:
            # rounded up: a poll of whole milliseconds must not end the wait before its deadline (1 ms polled 0)
            remaining_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            ready = dict(poller.poll(remaining_ms))
            if self._sock in ready:
                return True
            if self._monitor in ready:
                self._drain()
                if self._failure is not None and self._is_definitive():
                    raise self._failure
            if time.monotonic() >= deadline:
                return False

    def reconnected(self) -> bool:
        """True (once per reconnection) when the socket has made a new connection since its first: the server went
        away and something answers at its address again, maybe another server. Cheap when nothing happened."""
        if self._monitor.get(zmq.EVENTS) & MONITOR_READABLE:
            self._drain()
        fresh = self._connections > 1 and self._connections != self._connections_told
        self._connections_told = self._connections
        return fresh

    def failure(self) -> Optional[HandshakeError]:
        """The handshake failure seen since the last successful handshake, if any (read after a timeout). Not a
        plaintext connection's closing mid-handshake: no key can be wrong there, and `stage()` words it."""
        self._drain()
        if self._keys is None and self._dropped_in_a_row:
            return None
        return self._failure

    def close(self) -> None:
        """Stop monitoring, then close the monitor's socket, even when the first is interrupted (a second Ctrl-C); call
        before the socket is closed. In that order: libzmq's I/O thread sends each event to the monitor blocking, so
        a socket still monitored once its monitor's socket is gone froze every socket of the context at its next
        event."""
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:  # the socket or context is already gone
            pass
        finally:
            if self._monitor is not None:
                self._monitor.close(linger=0)

    def stage(self) -> str:
        """How far the connection got, for a timeout's words: '' once a handshake succeeded (the server itself is
        slow), else what was seen: refused or unresolved connects, TCP connections closed or left silent."""
        self._drain()
        if self._connected:
            return ""
        if self._lost:  # connected once, then the server went: say what the reconnecting met since
            seen = self._closed_in_handshake or self._tcp_connections or self._retries
            return "the connection to it was lost (the server stopped?)" + (
                f" and not made again: {self._stage_since_lost()}" if seen else "")
        return self._stage_since_lost()

    def _stage_since_lost(self) -> str:
        if self._closed_in_handshake:
            return (f"{self._closed_in_handshake} connection(s) were accepted and then closed before the ZeroMQ "
                    "handshake finished: a forwarder (docker -p, ssh -L, kubectl port-forward) whose policy server is "
                    "down or still starting, or another service on that port" + (
                        "" if self._keys is not None else
                        "; or a server that requires CURVE encryption and closed first: then pass server_public_key "
                        "(gr00t-eval: --server-public-key)"))
        if self._tcp_connections:
            return ("a TCP connection was made but no ZeroMQ handshake followed: is that port a ZeroMQ policy server, "
                    "not another service (HTTP, SSH)? Or is the server's process stopped or frozen (SIGSTOP, a "
                    "suspended VM or container), which the kernel still accepts connections for?")
        if self._retries:
            return CONNECTS_REFUSED
        return "no TCP connection was made: the host did not answer (down, unreachable or filtered?)"

    def _is_definitive(self) -> bool:
        if self._dropped_in_a_row and self._keys is None:  # plaintext: a forwarder's closings; wait (class docstring)
            return False
        return self._dropped_in_a_row == 0 or self._dropped_in_a_row >= _NO_DETAIL_FAILURES_TO_GIVE_UP

    def _drain(self) -> None:
        while True:
            try:
                # Asking for EVENTS costs less than the zmq.Again a receive would end on: every wait drains first
                if not self._monitor.get(zmq.EVENTS) & MONITOR_READABLE:
                    return
                event = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed underneath us
                return
            self._record(int(event["event"]), int(event["value"]))

    def _record(self, event: int, value: int) -> None:
        if event == zmq.EVENT_CONNECT_RETRIED:
            self._retries += 1
            return
        if event == zmq.EVENT_CONNECTED:
            self._handshake_settled = False
            self._tcp_connections += 1
            return
        if event == zmq.EVENT_DISCONNECTED:
            if self._handshake_settled:  # an ordinary disconnect, or one whose failure is already recorded
                if self._connected:  # the server went: what reconnecting meets is counted afresh
                    self._connected, self._lost = False, True
                    self._tcp_connections = self._retries = self._closed_in_handshake = 0
                return
            event = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL  # dropped mid-handshake; its own event never came
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._closed_in_handshake += 1
        self._handshake_settled = True
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._failure, self._dropped_in_a_row = None, 0
            self._connections += 1
            self.keys_worked = True
            self._connected = True
            return
        self._dropped_in_a_row = self._dropped_in_a_row + 1 if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL else 0
        self._failure = HandshakeError(f"handshake with the policy server at {self.address} failed: {self._reason(event, value)}")
        self._failure.closed_after_keys_worked = (event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.keys_worked
                                                  and self._keys is not None)
        logger.debug("%s", self._failure)

    def _reason(self, event: int, value: int) -> str:
        curve = self._keys is not None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and value == ZAP_CANNOT_CHECK:
            return (f"the server could not check this client's public key against its authorized keys (ZAP status "
                    f"{value}): it cannot read its authorized-keys folder (out of open files, or the folder is gone), "
                    "and its log says why; retry once it can")
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            who = f"this client's public key ({key_fingerprint(self._keys.client_public)})" if curve else "this client"
            hint = (" - no client_secret_key was given (gr00t-eval: --client-key or $GR00T_CLIENT_KEY), so an ephemeral "
                    "key was used; pass the secret key of a pair the server has in its authorized keys"
                    if curve and self._keys.ephemeral else
                    " - add its .key file to the server's authorized-keys directory")
            return f"the server refused {who} (ZAP status {value}){hint}"
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                if curve:
                    return ("the server does not use CURVE encryption, but this client was given server_public_key "
                            "(--server-public-key)")
                return ("the server requires CURVE encryption; pass server_public_key (gr00t-eval: --server-public-key), "
                        "the server's .key file or z85 key")
            return f"protocol error {_protocol_error_name(value)}"
        if curve:  # a wrong key and a plaintext server both look like this (which one closes first is a race)
            return ("the server closed the connection during the CURVE handshake: server_public_key "
                    "(--server-public-key) is not this server's key, or the server does not use CURVE encryption; or "
                    "a forwarder (docker -p, ssh -L, kubectl port-forward) whose policy server is down or still "
                    "starting closed it, and retrying once that server is up succeeds")
        return ("the server closed the connection during the handshake: is a ZeroMQ policy server listening at this "
                "address (not another service on that port)? If it requires CURVE, pass server_public_key (gr00t-eval: "
                "--server-public-key)")


def _protocol_error_name(value: int) -> str:
    for name in dir(zmq):
        if name.startswith("PROTOCOL_ERROR_") and getattr(zmq, name) == value:
            return name
    return hex(value)

