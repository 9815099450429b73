"""The serving package: PolicyServer and its parts.

server (lifecycle, public API), builtin_endpoints (ping, kill, get_action, reset, info and the policy facts they
ask), loop (the socket thread's turn: receive, parse, route, admit, gather, send), gathering (which gathered
get_action batches go when), transport (the ROUTER socket's I/O), execution (running jobs: policy calls, batches),
reply_frames (reply and error frames), endpoints (the endpoint table's parts, error replies), worker (the policy
thread), sessions (session table, eviction), wrappers (the chain of wrapped policies), batching, limits (per-request
work limits, finite in and out), messages (frames <-> requests), stats.
"""

from .limits import ServerLimits
from .server import DEFAULT_MAX_MESSAGE_BYTES, PolicyServer, RequestError, is_loopback_host

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "PolicyServer", "RequestError", "ServerLimits", "is_loopback_host"]
