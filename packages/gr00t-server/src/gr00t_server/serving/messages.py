"""Server-side messages: frames -> Request (routing, envelope, auth, deadline) and replies -> frames, in the wire
format each request came in (multipart, msgpack-numpy, or the np.save era's)."""

from __future__ import annotations

import hmac
import numbers
import struct
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import numpy as np
import zmq

from gr00t_client import codec
from gr00t_client.cli_flags import token_shape
# TIMING_OPTION: add server_timing to the reply's info; SESSION_CONTINUES_FIELD: our client's mark of a served session
# TIMEOUT_FIELD: the envelope field of the client's remaining budget (reference servers ignore it)
from gr00t_client.client import ERROR_MARKER, SESSION_CONTINUES_FIELD, TIMEOUT_FIELD, TIMING_OPTION
from gr00t_client.client_messages import ASKS_UPSTREAM_FIELD

MAGIC_BYTES = len(codec.MULTIPART_MAGIC)
MAX_ERROR_CHARS = 1000  # an error reply never grows with the request that caused it

# Request.wire_format values
WIRE_MULTIPART = "multipart"
WIRE_MSGPACK = "msgpack"  # the current reference format (msgpack-numpy arrays)
WIRE_NPSAVE = "npsave"  # the np.save era: `__ndarray_class__`/`as_npy` arrays, `__ModalityConfig_class__`
WIRE_N15 = "n15"  # N1/N1.5 service.py: np.save arrays, get_action's data the flat observation, the action alone back

# Request.endpoint of a request answered before its endpoint could be read (its metrics label, log name and echo)
UNDECODED_ENDPOINT = "undecoded"
ENDPOINT_PEEK_BYTES = 4096  # of an undecoded request map, read for its endpoint name (never the whole body)
# Starts the session key of a request without session_id (client_of); session_of refuses a session_id starting so,
# so that no client can name another connection's session (routing ids are sequential, hence guessable).
CONNECTION_SESSION_PREFIX = "\x00"
# libzmq's ZMQ_REQ_CORRELATE request id: a uint32 frame a REQ socket puts before the delimiter, new at every request.
REQUEST_ID_BYTES = 4


class RequestError(Exception):
    """A request that cannot be served; the message goes back to the client."""


def unknown_endpoint(name: str, known: List[str]) -> RequestError:
    """The refusal of a request naming no endpoint of the server (gr00t-eval open-loop reads its first words,
    "Unknown endpoint: reset", to tell a server without a reset)."""
    return RequestError(f"Unknown endpoint: {name} (known endpoints: {', '.join(known)})")


@dataclass
class Request:
    """One decoded request and where its reply goes."""

    routing: List[Any]
    multipart: bool
    endpoint: str
    data: Any
    session: str
    peer: Optional[str]
    received_at: float
    decode_ms: float
    timing: Dict[str, float] = field(default_factory=dict)  # the policy's own stages (preprocess_ms, ...) of its call
    wire_format: str = WIRE_MSGPACK
    deadline: Optional[float] = None  # time.monotonic() after which the client has given up
    nbytes: int = 0  # size on the wire, counted against the sender's queue budget
    identity: bytes = b""  # the ROUTER identity of the connection
    admitted: bool = False  # counted against the queue budgets until its reply is sent
    outcome: str = "ok"  # how it was answered, for metrics: ok, late, error, refused, expired, internal_error
    name_read: bool = True  # False for a request answered before any endpoint name could be read from it
    rows: int = 1  # observation rows of a gathered get_action, counted once when gathered (at least 1)
    batch_shape: Optional[Tuple[Any, int]] = None  # a gathered get_action's batching.batch_shape
    # The policy a gathered get_action was gathered for (get_action then the built-in one, as batching_enabled asks):
    # its job merges it only while that policy is served and batching still holds (JobRunner._merge_holds)
    batched_for: Any = None
    call_cost: Any = None  # a get_action's batching.cost_signature, worked out once when first asked (call_cost)
    wants_timing: bool = False  # a get_action whose options ask for server_timing (timing_requested)
    # Our client's mark (SESSION_CONTINUES_FIELD) on requests of a session the server has already served: such a
    # session unknown to the server was dropped (or the server restarted), never a new one to start afresh.
    continues_session: bool = False
    asks_upstream: bool = False  # a relay's get_server_info for a robot new to it (ASKS_UPSTREAM_FIELD): asked upstream
    takes_session: bool = False  # a get_action or reset whose success counts a use of its session (takes it in)
    session_in_flight: bool = False  # counted in its session's requests waiting or running (SessionTable.arrived)
    call_ran: bool = False  # a get_action whose policy call ran, whatever became of it (counted as a policy call)
    # (its start, its ms) of the last merged call this get_action ran in that failed: it may then run again
    failed_call: Optional[Tuple[float, float]] = None
    # A replaced get_action's result that is no [action, info] pair: the action itself, sent whole to N1/N1.5 clients.
    result_is_action: bool = False
    # Its client decodes map keys other than str and bytes (client_reads_number_keys): multipart, or our client's.
    reads_number_keys: bool = False

    @cached_property
    def connection(self) -> str:
        """The key of the connection this request came over: its whole routing envelope (client_of), so that the REQ
        robots behind one ROUTER-DEALER proxy count as connections of their own, not as the proxy's one."""
        return client_of(self.routing)

    def queue_wait_ms(self, until: float) -> float:
        """How long this request waited for the policy until `until` (time.monotonic()), its decode left out."""
        return max(0.0, (until - self.received_at) * 1000.0 - self.decode_ms)

    @property
    def whole_timeout_s(self) -> Optional[float]:
        """The client's whole timeout for this request (its deadline from its arrival); None without a deadline."""
        return None if self.deadline is None else self.deadline - self.received_at

    def expired(self, now: Optional[float] = None, margin_s: float = 0.0) -> bool:
        """True once the client's deadline has passed (it no longer waits for the reply), or is less than `margin_s`
        away; never for a request that carries no deadline."""
        return self.deadline is not None and (time.monotonic() if now is None else now) + margin_s > self.deadline


def split_routing(frames: List[Any]) -> Tuple[List[Any], List[Any]]:
    """ROUTER frames -> (routing frames for the reply, payload frames).

    A REQ peer's envelope is [identity, b"", payload...]; a DEALER may leave the delimiter out ([identity,
    payload...]); a REQ behind a proxy adds identities ([identity, identity..., b"", payload...]). Only an empty frame
    before the payload starts (the multipart magic frame, or else the last frame) is a delimiter: a zero-size array
    frame inside a DEALER's multipart message is payload, not the end of the envelope.
    """
    if len(frames) >= 2 and len(frames[1]) == 0:  # a REQ peer: the common case, decided at once
        return frames[:2], frames[2:]
    for index in range(1, len(frames) - 1):  # the last frame is always payload
        frame = frames[index]
        if len(frame) == 0:
            return frames[: index + 1], frames[index + 1 :]
        if len(frame) == MAGIC_BYTES and bytes(frame) == codec.MULTIPART_MAGIC:
            break
    return frames[:1], frames[1:]


def client_of(routing: List[Any]) -> str:
    """The session key of a request without session_id: every identity frame of its routing prefix, so that the REQ
    clients behind one ROUTER-DEALER proxy (one connection to this server) are told apart by the frames it adds, but a
    ZMQ_REQ_CORRELATE request id (new at every request: one socket stays one session); prefixed with
    CONNECTION_SESSION_PREFIX, which no session_id may start with."""
    identities = routing[:-2] if ends_in_request_id(routing) else routing
    return CONNECTION_SESSION_PREFIX + ("/".join(bytes(frame).hex() for frame in identities if len(frame)) or "unknown")


def ends_in_request_id(routing: List[Any]) -> bool:
    """Whether the frame before the delimiter is a ZMQ_REQ_CORRELATE request id: exactly 4 bytes, after at least one
    other routing frame (an identity libzmq makes is 5 bytes, so a 4-byte frame there is an id, or an identity set by
    hand on a peer behind a proxy: those peers share one session). The reply still carries it: REQ drops replies
    without it."""
    return len(routing) >= 3 and len(routing[-1]) == 0 and len(routing[-2]) == REQUEST_ID_BYTES


def peer_address(payload: List[Any]) -> Optional[str]:
    """The sender's IP address as ZeroMQ reports it (None for non-TCP transports)."""
    try:
        return payload[0].get("Peer-Address") if payload else None
    except (zmq.ZMQError, AttributeError):
        return None


def connection_user_id(frames: List[Any]) -> Optional[str]:
    """The User-Id the ZAP handler gave the sender's connection (a CURVE client's z85 public key), or None: under a
    microsecond, read from the frame's metadata."""
    try:
        return frames[0].get("User-Id") if frames else None
    except (zmq.ZMQError, AttributeError):  # no ZAP on this connection; bytes frames (tests)
        return None


def bounded(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """The message cut to at most `limit` characters in all, saying how much was cut; characters UTF-8 cannot carry
    (lone surrogates, from a path os.fsdecode made of non-UTF-8 bytes; the reply cannot encode them) escaped."""
    if not message.isascii():
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) <= limit:
        return message
    kept = limit - len(f"... ({len(message)} more characters)")  # the suffix counts towards the limit too
    return f"{message[:kept]}... ({len(message) - kept} more characters)"


ECHOED_ENDPOINT_CHARS = 100  # the endpoint name an error reply echoes; a client's name may be megabytes long


def decode_payload(payload: List[Any], max_message_bytes: int, total_bytes: Optional[int] = None) -> Tuple[Any, str]:
    """Payload frames -> (envelope, wire format), decoded within limits derived from max_message_bytes;
    `total_bytes`: the frames' size, when the caller counted it already (the socket loop, for its byte budgets).

    RequestError or WireDecodeError on anything malformed or over a limit.
    """
    if not payload:
        raise RequestError("empty message: expected a msgpack request map")
    # ZMQ_MAXMSGSIZE bounds each frame (a frame over it is dropped with its connection, unanswered); a multipart
    # message must respect the cap as a whole too, and that we can answer.
    if total_bytes is None:
        total_bytes = sum(len(frame) for frame in payload)
    if total_bytes > max_message_bytes:
        raise RequestError(
            f"message of {total_bytes} bytes exceeds this server's limit of {max_message_bytes} bytes "
            "(max_message_bytes); it was not decoded. Send smaller or fewer images, or start the server with a "
            "larger --max-message-mb"
        )
    limits = codec.DecodeLimits.for_message_bytes(max_message_bytes)
    # msgpack's own nesting cap (1024 levels) is reported by the codec as our depth limit (DecodeLimitError)
    if codec.is_multipart(payload):
        return codec.decode_multipart(payload, limits), WIRE_MULTIPART
    if len(payload) == 1:
        # The received frame is ours alone: large arrays may view it (writable, no copy) instead of being copied.
        # memoryview(frame), not frame.buffer: pyzmq 22 caches that view on the frame, a cycle that kept every
        # received frame until the cyclic GC ran.
        envelope, npsave = codec.decode_noting_npsave(memoryview(payload[0]), limits, share_buffer=True)
        return envelope, WIRE_NPSAVE if npsave else WIRE_MSGPACK
    raise RequestError(f"message has {len(payload)} frames but no multipart header; expected 1 frame")


def peek_endpoint(payload: List[Any]) -> Optional[str]:
    """The endpoint an undecoded request names within the first ENDPOINT_PEEK_BYTES of its request map (the single
    frame, or the multipart header frame), or None when it names none there that can be read."""
    if codec.is_multipart(payload) and len(payload) >= 2:
        frame = payload[1]
    elif len(payload) == 1:
        frame = payload[0]
    else:
        return None
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(memoryview(frame)[:ENDPOINT_PEEK_BYTES])
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "endpoint" or key == b"endpoint":
                endpoint = unpacker.unpack()
                return endpoint if isinstance(endpoint, str) else None
            unpacker.skip()
    except Exception:  # cut off by the peek's bound, malformed, or not a map
        return None
    return "get_action"  # the whole map read, and no endpoint in it: check_envelope's default


def check_envelope(envelope: Any) -> Dict[str, Any]:
    """Validate the request map: str keys (bytes ones decoded) and a str endpoint."""
    if not isinstance(envelope, dict):
        raise RequestError(f"request must be a map with 'endpoint' and 'data', got {type(envelope).__name__}")
    envelope = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in envelope.items()}
    endpoint = envelope.get("endpoint", "get_action")
    if not isinstance(endpoint, str):
        raise RequestError(f"'endpoint' must be a str, got {type(endpoint).__name__}")
    return envelope


def check_token(envelope: Dict[str, Any], api_token: Optional[str]) -> None:
    """RequestError unless the request carries the server's API token (a str, compared in constant time) or none is
    set."""
    if api_token is not None:
        token = envelope.get("api_token")
        if token is None:
            raise RequestError("Unauthorized: this server requires an API token and the request carried none "
                               "(PolicyClient(api_token=...); gr00t-eval: --api-token or $GR00T_API_TOKEN)")
        if not isinstance(token, str):  # its type only: the value may be the right token, sent as bin
            raise RequestError(f"Unauthorized: 'api_token' must be a str (msgpack str), got {type(token).__name__}")
        if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), api_token.encode()):
            raise RequestError("Unauthorized: Invalid API token")


def token_shape_problem(api_token: str, name: str) -> Optional[str]:
    """Why a server's API token (given as `name`) is none a client would type, or None: whitespace at an end or a
    control character. The message never holds the token."""
    problem = token_shape(api_token)
    if problem is None:
        return None
    return (f"{name} {problem}: clients that type the token would all be refused with 'Invalid API token'; remove it "
            "(a token read from a file, or a Kubernetes Secret made with --from-file, keeps the file's final newline)")


def timing_requested(data: Any) -> bool:
    """Whether a request's options ask for server_timing; RequestError naming the option unless it is a bool,
    nil, or the int 0 or 1 (msgpack peers in C++, JS or Go often send flags so)."""
    options = data.get("options") if isinstance(data, dict) else None
    if not isinstance(options, dict):
        return False  # no options, or options the handler refuses itself
    return _flag(options.get(TIMING_OPTION), f"options['{TIMING_OPTION}']")


def refuse_reset_timing(data: Any) -> None:
    """RequestError naming the option when a reset's options ask for server_timing, which reset does not answer (a
    false one passes), or hold a value timing_requested refuses: both were dropped without a word."""
    if timing_requested(data):
        raise RequestError(f"options['{TIMING_OPTION}'] is a get_action option: reset answers no server_timing; ask "
                           "get_action for it, or leave it out of reset's options")


def _flag(value: Any, name: str) -> bool:
    """A flag's value as a bool; RequestError naming it unless it is a bool (numpy's too), nil, or the int 0 or 1."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    scalar = isinstance(value, (int, float, str, bytes, np.generic))
    shown = f"{type(value).__name__} {value!r:.40}" if scalar else type(value).__name__
    raise RequestError(f"{name} must be true or false (a bool, or 0 or 1), got {shown}")


def continues_session(envelope: Dict[str, Any]) -> bool:
    """True when the envelope says its session was served before (our client's mark; other clients send none);
    RequestError naming the field unless it is a bool-like flag, as return_server_timing is. Ignoring a 1 or a numpy
    bool served a dropped session from episode 0 without an error."""
    return _flag(envelope.get(SESSION_CONTINUES_FIELD), f"'{SESSION_CONTINUES_FIELD}'")


def asks_upstream(envelope: Dict[str, Any]) -> bool:
    """True when a relay in front asks for a robot new to it (our client's ASKS_UPSTREAM_FIELD; others send none): a
    relay answers it with its upstream's facts asked anew; RequestError naming the field unless it is a flag."""
    return _flag(envelope.get(ASKS_UPSTREAM_FIELD), f"'{ASKS_UPSTREAM_FIELD}'")


def session_of(envelope: Dict[str, Any], max_chars: int) -> Optional[str]:
    """The envelope's session_id (None when absent or nil: the connection's own session); RequestError unless it is a
    non-empty str within max_chars, not starting with CONNECTION_SESSION_PREFIX. Another type is refused, not ignored:
    keyed by the connection instead, a replay would serve a reconnecting client from episode 0 without an error."""
    session = envelope.get("session_id")
    if session is None:
        return None
    if not isinstance(session, str) or not session:
        scalar = isinstance(session, (int, float, str, bytes, np.generic))
        shown = f"{type(session).__name__} {session!r:.40}" if scalar else type(session).__name__
        raise RequestError(f"'session_id' must be a non-empty str of at most {max_chars} characters (or absent), "
                           f"got {shown}")
    if len(session) > max_chars:
        raise RequestError(f"session_id has {len(session)} characters; this server accepts at most {max_chars}")
    if session.startswith(CONNECTION_SESSION_PREFIX):
        raise RequestError("'session_id' must not start with \\x00, which marks the sessions of requests without one "
                           "(a connection's own session)")
    return session


def deadline_of(envelope: Dict[str, Any], received_at: float) -> Optional[float]:
    """When the client gives up: received_at + the envelope's timeout_ms (None when the client sent none)."""
    timeout_ms = envelope.get(TIMEOUT_FIELD)
    if timeout_ms is None:
        return None
    # A numpy scalar (msgpack-numpy's {nd: false}) is a number too; a bool is no duration, whichever kind.
    if isinstance(timeout_ms, (bool, np.bool_)) or not isinstance(timeout_ms, numbers.Real) or not timeout_ms > 0:
        # named with its type, as session_of does: a str "250" is no refused number, and 0 no str
        scalar = isinstance(timeout_ms, (int, float, str, bytes, np.generic))
        shown = f"{type(timeout_ms).__name__} {timeout_ms!r:.40}" if scalar else type(timeout_ms).__name__
        raise RequestError(f"'{TIMEOUT_FIELD}' must be a positive number of milliseconds (omit it, or send nil, for no "
                           f"deadline), got {shown}")
    return received_at + min(float(timeout_ms), 1e9) / 1000.0


def client_reads_number_keys(envelope: Dict[str, Any], multipart: bool) -> bool:
    """Whether the request's client decodes map keys other than str and bytes: a multipart one (ours alone speak it), or
    a single-frame one carrying both fields our client puts in every envelope (session_id and timeout_ms). Reference
    clients send neither, and decode with msgpack's strict_map_key (str and bytes keys only)."""
    return multipart or ("session_id" in envelope and TIMEOUT_FIELD in envelope)


def adopt_n15_get_action(request: Request) -> None:
    """An N1/N1.5 get_action (np.save arrays, `data` the flat observation itself, no observation/options map) is
    served as {"observation": data} and answered with the action dict alone (WIRE_N15)."""
    data = request.data
    if (
        request.endpoint == "get_action"
        and request.wire_format == WIRE_NPSAVE
        and isinstance(data, dict)
        and data
        and "observation" not in data
        and "options" not in data
    ):
        request.data = {"observation": data, "options": None}
        request.wire_format = WIRE_N15


def encode_reply(request: Request, body: Any, ok: bool) -> List[Any]:
    """A result or error in the format the request came in (our errors carry ERROR_MARKER in the reference format)."""
    endpoint = bounded(request.endpoint, ECHOED_ENDPOINT_CHARS) if isinstance(request.endpoint, str) else request.endpoint
    if request.wire_format == WIRE_N15:  # service.py's client reads the action dict alone
        if not ok:
            body = {"error": body, ERROR_MARKER: True, "endpoint": endpoint}
        elif not request.result_is_action:
            body = body[0]  # the action of the [action, info] pair
        return [codec.encode_early_n16(body, reply=True)]
    # A get_modality_config request carries no array to tell an np.save-era client by, and its reply no array to
    # encode: the np.save-era encoder writes ModalityConfig with both markers, which every upstream decoder reads.
    if request.wire_format == WIRE_NPSAVE or (not request.multipart and request.endpoint == "get_modality_config"):
        return [codec.encode_early_n16(body if ok else {"error": body, ERROR_MARKER: True, "endpoint": endpoint},
                                       reply=True)]
    if request.multipart:
        header = {"ok": True, "result": body} if ok else {"ok": False, "error": body, "endpoint": endpoint}
        return codec.encode_multipart(header, reply=True)
    if ok:
        return [codec.encode(body, reply=True)]
    return [codec.encode({"error": body, ERROR_MARKER: True, "endpoint": endpoint}, reply=True)]


_NESTED = (dict, list, tuple, set, frozenset)


class _KeyCheckDefault:
    """msgpack's default hook for the key check (strict_types hands it tuples, sets and container subclasses): tuples
    and sets become lists, fine as values, and a map key no unpacker can hash; an Enum becomes its value, as the
    encoder sends it; arrays and other leaves are packed as nil (the encode itself judges them). `held_tuples` says
    whether it met a tuple or set."""

    def __init__(self) -> None:
        self.held_tuples = False

    def __call__(self, value: Any) -> Any:
        value = codec.sent_map_key(value)  # an Enum is judged by the value the encoder sends for it
        if type(value) in (str, bytes, int, float, bool):
            return value
        if isinstance(value, (tuple, set, frozenset)):
            self.held_tuples = True
            return list(value)
        if isinstance(value, (dict, list)):  # a subclass: its items are checked too
            return dict(value) if isinstance(value, dict) else list(value)
        return None


def refuse_unsendable_keys(value: Any, where: str, str_keys_only: bool = False) -> None:
    """WireEncodeError naming the path of a tuple or frozenset map key in a result: msgpack packs one as an array,
    which no peer can key a map by, so the client could decode none of the reply. With `str_keys_only` (a client
    that decodes with msgpack's strict_map_key: reference ones), of any key but str and bytes too. Told in C: the
    result is packed with tuples and sets as lists (leaves as nil) and, where it held any (or for str_keys_only),
    unpacked, where a list key fails to hash or a strict key check fails; only then is it walked in Python to name
    the key's path (a tuple value alone walked an info of 1,500 records, 10x its encode)."""
    if type(value) is dict and all(type(key) is str and not isinstance(item, _NESTED) for key, item in value.items()):
        return  # the common result (an action of arrays, a flat info): nothing to walk
    default = _KeyCheckDefault()
    try:
        packed = msgpack.packb(value, default=default, strict_types=True)
    except (TypeError, ValueError, OverflowError):  # too deep, a cycle, an int out of range: the encode names it
        return
    if not default.held_tuples and not str_keys_only:
        return
    try:
        msgpack.unpackb(packed, strict_map_key=str_keys_only)
        return
    except (TypeError, ValueError):  # unhashable type: 'list' (a tuple or frozenset key), or a key strict_map_key
        pass  # refuses (a leaf key the check packs as nil is one the walk may then find fine)
    if str_keys_only:  # walked outside the except: the error named is the walk's, not msgpack's with it
        _name_unsendable_key(value, where, str_keys_only=True)
    else:
        _name_unsendable_key(value, where)


def _name_unsendable_key(value: Any, where: str, str_keys_only: bool = False) -> None:
    """The Python walk of refuse_unsendable_keys: WireEncodeError naming the path of a tuple or frozenset map key (a
    tuple value is fine: a list on the wire), or with `str_keys_only` of any key but str and bytes."""
    found = codec.refused_map_key(value, where, lambda key: isinstance(key, (tuple, frozenset)) or (
        str_keys_only and not isinstance(key, codec.STRICT_MAP_KEY_TYPES)))
    if found is None:
        return
    where, key = found
    if isinstance(key, (tuple, frozenset)):
        raise codec.WireEncodeError(
            f"{where} has a {type(key).__name__} key {key!r:.80}, which msgpack sends as an array that no client can "
            "key a map by; expected str or bytes keys (e.g. a joined str)")
    raise codec.WireEncodeError(
        f"{where} has the {type(key).__name__} key {key!r:.80}, which reference clients cannot decode (msgpack's "
        "strict_map_key allows only str and bytes map keys); expected str or bytes keys (e.g. str(key))")


_LAST_RESORT_ERROR = codec.encode({"error": "internal error", ERROR_MARKER: True})


def last_resort_error_frames(request: Request) -> List[Any]:
    """An "internal error in <endpoint>" reply for when building the proper one failed: never raises."""
    try:
        return encode_reply(request, f"internal error in {request.endpoint[:100]}", ok=False)
    except Exception:
        return [_LAST_RESORT_ERROR]


_ENCODE_MS_PLACEHOLDER = codec.encode(0.0)  # msgpack packs every Python float as a float64: 9 bytes, whatever the value
_PAIR_HEADER = msgpack.Packer().pack_array_header(2)


def encode_timed_reply(request: Request, action: Any, info: Dict[str, Any], timing: Dict[str, Any], started: float) -> List[Any]:
    """Encode [action, info] with server_timing.encode_ms in info, timing the whole encode.

    info is packed with encode_ms last, as a placeholder float64 that ends the frame carrying info; once the reply is
    packed, joined and owns its bytes (multipart frames are copied from the policy's arrays, which it may reuse), the
    placeholder's 8 value bytes are written in place. An np.save-era request gets its reply in the np.save format,
    which packs Python floats as float64 too.
    """
    info = {key: value for key, value in info.items() if key != "server_timing"}
    info["server_timing"] = {**{key: value for key, value in timing.items() if key != "encode_ms"}, "encode_ms": 0.0}
    buffers: List[Any] = []
    if request.multipart:
        result = codec.join_packed_array([codec.pack_multipart_header(action, buffers, reply=True),
                                          codec.pack_multipart_header(info, buffers, reply=True)])
        frame = bytearray(codec.join_packed_map({"ok": codec.encode(True), "result": result}))
        buffers = [bytes(buffer) if isinstance(buffer, memoryview) else buffer for buffer in buffers]
        frames = [codec.MULTIPART_MAGIC, frame, *buffers]
    else:
        encode = codec.encode_early_n16 if request.wire_format == WIRE_NPSAVE else codec.encode
        frame = bytearray().join([_PAIR_HEADER, encode(action, reply=True), encode(info, reply=True)])
        frames = [frame]
    if not frame.endswith(_ENCODE_MS_PLACEHOLDER):
        raise RuntimeError("server_timing.encode_ms was not packed last in the reply's info")
    frame[-8:] = struct.pack(">d", (time.monotonic() - started) * 1000.0)
    return frames
