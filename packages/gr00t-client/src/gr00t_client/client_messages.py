"""The messages PolicyClient exchanges: the envelope's field names (shared with gr00t-server), the envelope around
a request, the size check before it is sent, and a reply read into its result or the server's error."""

from __future__ import annotations

import logging
from typing import Any, Dict, List

from . import codec
from .client_errors import MessageTooLargeError, PolicyServerError, server_error
from .client_sockets import _nbytes

logger = logging.getLogger("gr00t_client.client")  # PolicyClient's one logger, whichever of its modules logs

PROTOCOL_VERSION = 1
ERROR_MARKER = "__gr00t_error__"
TIMING_OPTION = "return_server_timing"
TIMEOUT_FIELD = "timeout_ms"  # envelope field: the client's remaining budget; gr00t-server drops the request after it
SESSION_CONTINUES_FIELD = "session_continues"  # see _session_served (gr00t_server.serving.messages reads it)
# get_server_info envelope field of a relay's client asking for a robot that connected to the relay since it last
# asked: a relay receiving it asks its own upstream in turn, as for a connection it has not answered yet, so a restart
# of the upstream while a chain of relays idled reaches the new robot (ServerFacts.refresh_server_facts)
ASKS_UPSTREAM_FIELD = "asks_upstream"
# get_action info field of a relay (a gr00t-server serving a PolicyClient): its client's server_changes, which moves
# when the upstream may serve another model; the robot's client then counts a server change of its own (on_new_server)
UPSTREAM_CHANGES_FIELD = "upstream_server_changes"
# get_action info field of a relay whose upstream is not a gr00t-server: the option names that upstream ignores (those
# its client warns of, client_server_facts.options_not_applied); the robot's client warns of them as if connected
OPTIONS_NOT_APPLIED_FIELD = "options_not_applied"


class ClientMessages:
    """PolicyClient's requests and replies (a mixin of PolicyClient): what a request is sent in, and what its reply
    says."""

    def _envelope(self, endpoint: str, data: Any, requires_input: bool) -> Dict[str, Any]:
        envelope: Dict[str, Any] = {"endpoint": endpoint}
        if requires_input:
            envelope["data"] = data
        if self.api_token:
            envelope["api_token"] = self.api_token
        envelope["session_id"] = self.session_id
        if self._session_served or (self._forked_session and endpoint == "get_action"):
            # a forked child's first get_action too: a server whose policy keeps sessions refuses it until the child
            # resets (its client could not tell whether the policy keeps them); its reset starts the new session
            envelope[SESSION_CONTINUES_FIELD] = True
        if endpoint == "get_server_info" and getattr(self._call, "asks_upstream", False):
            envelope[ASKS_UPSTREAM_FIELD] = True
        return envelope

    def _check_size(self, frames: List[Any], endpoint: str) -> None:
        """Refuse, before sending, a request over the server's limit (a frame over it would get no reply at all)."""
        limit = self.server_max_message_bytes
        if limit is not None:
            size = _nbytes(frames)
            if size > limit:
                raise MessageTooLargeError(endpoint, size, limit)

    def _refuse_number_keys(self, data: Any, endpoint: str) -> None:
        """Refuse, before sending to a reference server, a request whose maps hold a key other than str or bytes: it
        decodes with msgpack's strict_map_key, and would answer only msgpack's own words, naming no key."""
        found = codec.refused_map_key(data, "", lambda key: not isinstance(key, codec.STRICT_MAP_KEY_TYPES))
        if found is not None:
            where, key = found
            raise codec.WireEncodeError(
                f"{endpoint}: {where or 'data'} has the {type(key).__name__} key {key!r:.80}, which a reference server "
                "cannot decode (msgpack's strict_map_key allows only str and bytes map keys); expected str or bytes "
                "keys (e.g. str(key))")

    def _decode_reply(self, reply: List[Any], endpoint: str) -> Any:
        """The reply's result, decoded within this client's limits; PolicyServerError for the server's errors."""
        limits = self._reply_limits
        if len(reply) > 1 and self.max_reply_bytes is not None:
            size = _nbytes(reply)  # ZMQ_MAXMSGSIZE bounds each frame, not their sum
            if size > self.max_reply_bytes:
                raise codec.DecodeLimitError(
                    f"its {size} bytes in {len(reply)} frames exceed this client's max_reply_bytes of "
                    f"{self.max_reply_bytes} bytes; if this server's replies really are that large, pass a larger "
                    "max_reply_bytes to PolicyClient, or None for no cap"
                )
        try:
            return self._decoded_reply(reply, endpoint, limits)
        except codec.WireDecodeError as exc:  # the refused value's key path alone named neither reply nor server
            if not isinstance(exc, codec.DecodeLimitError) and not str(exc).startswith("reply to "):
                exc.args = (f"reply to '{endpoint}' from the policy server at {self.address}: {exc}",)
            raise

    def _decoded_reply(self, reply: List[Any], endpoint: str, limits: Any) -> Any:
        if codec.is_multipart(reply):
            return self._unwrap_multipart(codec.decode_multipart(reply, limits), endpoint)
        if len(reply) != 1:
            raise codec.WireDecodeError(f"reply to '{endpoint}' has {len(reply)} frames; expected 1")
        if len(reply[0]) == 5 and reply[0].bytes == b"ERROR":
            raise PolicyServerError("Make sure we are running the correct policy server.", endpoint)
        if self._server_is_ours:  # ours answers in the format it is asked in: nothing to learn
            return self._unwrap_reference(codec.decode(memoryview(reply[0]), limits), endpoint)
        try:
            message, written_npsave = codec.decode_noting_npsave(memoryview(reply[0]), limits)
        except codec.WireDecodeError as exc:  # e.g. a ModalityConfig this client cannot read: still learn the wire
            if getattr(exc, "written_npsave", False) and not self.speaks_npsave:
                self.speaks_npsave = True
            raise
        if written_npsave and not self.speaks_npsave:
            self.speaks_npsave = True
            logger.info("server at %s speaks the np.save-era wire; sending that format from now on", self.address)
        return self._unwrap_reference(message, endpoint)

    def _unwrap_multipart(self, message: Any, endpoint: str) -> Any:
        if not isinstance(message, dict) or "ok" not in message:
            raise codec.WireDecodeError(f"multipart reply to '{endpoint}' lacks the 'ok' field")
        if not self._is_flag(message["ok"], "ok", endpoint):
            raise server_error(str(message.get("error", "unknown error")), endpoint)
        return message.get("result")

    def _unwrap_reference(self, reply: Any, endpoint: str) -> Any:
        if isinstance(reply, dict) and "error" in reply:
            # Our server marks its errors, so a real result with an "error" key passes through intact.
            marked = ERROR_MARKER in reply and self._is_flag(reply[ERROR_MARKER], ERROR_MARKER, endpoint)
            if marked or not self._server_is_ours:
                raise server_error(str(reply["error"]), endpoint)
        return reply

    def _is_flag(self, value: Any, field: str, endpoint: str) -> bool:
        """A reply's success or error flag, which our server sends as a msgpack bool: anything else (the str "false",
        a numpy array or bool) is refused rather than read by its truth value."""
        if type(value) is not bool:
            raise codec.WireDecodeError(
                f"reply to '{endpoint}' from the policy server at {self.address} has '{field}' of type "
                f"{_type_name(value)} ({value!r:.40}); expected a msgpack bool, true or false")
        return value


def _type_name(value: Any) -> str:
    """A value's type as a message names it: numpy's bool is 'numpy.bool' (its __name__ under numpy 2 is 'bool')."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
