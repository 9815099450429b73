"""The errors PolicyClient raises for a server's error replies and for its silence, and the words of our server's
answers that pick them."""

from __future__ import annotations

from typing import Optional

from .peer_text import shown_text


class PolicyServerError(RuntimeError):
    """The server answered with an error; the message is the server's."""

    def __init__(self, message: str, endpoint: Optional[str] = None) -> None:
        super().__init__(f"Server error: {message}")
        self.server_message = message
        self.endpoint = endpoint

    def __reduce__(self):  # pickled (a Ray task's error) with the server's own words: "Server error: " once
        return (type(self), (self.server_message, self.endpoint))


SHUTTING_DOWN = "server is shutting down"  # how our server's answers begin once it is stopping (ServerStoppingError)
NOT_RUN_FOR_DEADLINE = "was not run: the client's deadline"  # our server's refusal of a request out of time
# ... and of a batched request whose merged call ran and failed (on another's input, say), out of time for another run
NOT_RERUN_FOR_DEADLINE = "could not run again in time"
# how our server's refusals at its queue's caps begin (the server-wide ones end "try again"): not run (ServerBusyError)
BUSY_REFUSALS = ("server busy", "this connection already has")
# how a relay's answer begins when its upstream did not answer or failed (gr00t_server.serving.relay)
UPSTREAM_FAILED = "upstream policy server failed"


class ServerStoppingError(PolicyServerError, ConnectionError):
    """The server answered that it is shutting down: the request was not run (or not finished), and later requests
    will find no server. An evaluation stops here rather than score the request's episode and time out on the next.
    A ConnectionError too, as the connection is as good as gone."""


class UpstreamFailedError(PolicyServerError, ConnectionError):
    """A relay (a gr00t-server serving a PolicyClient) answered that its upstream server did not answer or failed: the
    request was not served. A ConnectionError too, so an evaluation's liveness rules count it as a server gone."""


class ServerBusyError(PolicyServerError):
    """The server refused the request at one of its queue's caps ("server busy ... try again", or its connection's
    budget): it was not run, and the same request asked again once the queue drains may be served."""


def server_error(message: str, endpoint: Optional[str]) -> PolicyServerError:
    """The error for a server's error reply, its text bounded and escaped (peer_text.shown_text): ServerStoppingError
    when the server says it is shutting down, DeadlineNotRunError when it did not run the request for want of time,
    ServerBusyError when it refused it at a queue's cap."""
    message = shown_text(message)
    if message.startswith(SHUTTING_DOWN):
        return ServerStoppingError(message, endpoint)
    if message.startswith(UPSTREAM_FAILED):
        return UpstreamFailedError(message, endpoint)
    if NOT_RUN_FOR_DEADLINE in message or NOT_RERUN_FOR_DEADLINE in message:
        return DeadlineNotRunError(message, endpoint)
    if message.startswith(BUSY_REFUSALS):
        return ServerBusyError(message, endpoint)
    return PolicyServerError(message, endpoint)


class MessageTooLargeError(PolicyServerError):
    """A request larger than the server's `max_message_bytes`; it was not sent, and the client stays usable.

    A PolicyServerError because the server would refuse it as well (a frame over the limit is dropped there
    unanswered, so without this check the caller would only see a timeout).
    """

    def __init__(self, endpoint: str, size: int, limit: int) -> None:
        message = (
            f"request '{endpoint}' of {size} bytes exceeds this server's limit of {limit} bytes (max_message_bytes), "
            "so it was not sent; send smaller or fewer images, or start the server with a larger --max-message-mb"
        )
        super().__init__(message, endpoint)
        self.args = (message,)  # the client's words, not the server's: no "Server error:" prefix
        self.size = size
        self.limit = limit

    def __reduce__(self):  # pickled (a Ray task's error) as made: PolicyServerError's would call this with its args
        return (type(self), (self.endpoint, self.size, self.limit))


class ForkedSessionError(PolicyServerError):
    """A get_action in a child forked after its client had been served, refused before it was sent: the parent's session
    goes on in the parent, and the child has a session of its own that the server's policy keeps state for (a replay)
    and that has not been started. Calling reset in the child first starts it. A PolicyServerError, as the server's own
    refusal of a session it does not know is."""

    def __init__(self, endpoint: str, address: str, session_id: str) -> None:
        message = (f"'{endpoint}' was not sent: this process was forked from one whose client for {address} had been "
                   f"served, and the child has a session of its own ({session_id!r}) that the server's policy keeps "
                   "state for (a replay's episode and step) and has not started; call reset in this process first (a "
                   "replay then starts episode 0, or the one options['episode_index'] names)")
        super().__init__(message, endpoint)
        self.args = (message,)  # the client's words, not the server's: no "Server error:" prefix
        self.address = address
        self.session_id = session_id

    def __reduce__(self):  # pickled (a Ray task's error) as made
        return (type(self), (self.endpoint, self.address, self.session_id))


class ClientClosedError(ConnectionError, RuntimeError):
    """A call on a PolicyClient that close() had closed (from another thread while the call waited for its turn, or
    earlier): nothing was sent; or a call in flight that close() or interrupt_calls() ended. A RuntimeError too, as
    this refusal was before."""


class PolicyTimeoutError(TimeoutError):
    """The server did not answer within timeout_ms; the client's socket was replaced (the new one connects at once)."""


class DeadlineNotRunError(PolicyServerError, PolicyTimeoutError):
    """The server did not run the request: the client's deadline had passed, or was nearer than a policy call takes,
    when its turn came (or came again, after a batched call that failed). A PolicyTimeoutError too, so that a loop
    that holds position on a timeout does so here."""


class ReplyLostError(PolicyTimeoutError):
    """The connection closed while a reply was awaited, so none can come: raised at once instead of after timeout_ms.

    A PolicyTimeoutError, as these cases were before, so that code that handles timeouts handles it too.
    """
