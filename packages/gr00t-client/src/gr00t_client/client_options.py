"""PolicyClient's arguments checked as it takes them (timeout, reply cap, host), and a host as a tcp:// endpoint
spells it."""

from __future__ import annotations

import ipaddress
import math
import numbers
import re
from typing import Any, Optional

import numpy as np

MAX_TIMEOUT_MS = 2**31 - 1  # ZeroMQ's poll timeout is a C int of milliseconds (about 24.8 days)
# gr00t-server's default max_message_bytes: a request may be this large, and replies (action chunks of KBs to a few
# MB, configs, info) never come near it; a robot can afford it, unlike the GBs a wrong or hostile peer could send.
DEFAULT_MAX_REPLY_BYTES = 256 * 1024 * 1024
MAX_REPLY_BYTES_LIMIT = 2**63 - 1  # ZMQ_MAXMSGSIZE is an int64


def check_timeout_ms(value: Any) -> int:
    """`value` as a PolicyClient timeout in whole milliseconds; ValueError naming it unless it is a whole number from 1
    to MAX_TIMEOUT_MS (bool is an int, NaN fails every comparison, inf is out of range: each is refused, naming
    itself). A fractional value is refused, not truncated: 1.9 would wait 1 ms."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy numbers too
    whole = number and (isinstance(value, numbers.Integral) or (math.isfinite(value) and value == int(value)))
    if not (whole and 1 <= value <= MAX_TIMEOUT_MS):
        raise ValueError(f"timeout_ms must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}, got {value!r}")
    return int(value)


def check_max_reply_bytes(value: Any) -> Optional[int]:
    """`value` as PolicyClient's reply cap in bytes (None: no cap); ValueError naming it unless it is a whole number
    of bytes from 1 to 2**63 - 1 (as gr00t-server checks its max_message_bytes) or None."""
    if value is None:
        return None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy numbers too
    whole = number and (isinstance(value, numbers.Integral) or (math.isfinite(value) and value == int(value)))
    if not (whole and 1 <= value <= MAX_REPLY_BYTES_LIMIT):
        raise ValueError(
            f"max_reply_bytes must be a whole number of bytes from 1 to {MAX_REPLY_BYTES_LIMIT}, or None for no cap, "
            f"got {value!r}"
        )
    return int(value)


def check_flag(name: str, value: Any) -> bool:
    """A True/False argument (numpy's bools too) as a bool; ValueError naming it otherwise, since bool("false") and
    bool("no") are True."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r:.60} ({type(value).__name__})")
    return bool(value)


def check_api_token(value: Any) -> Optional[str]:
    """`value` as PolicyClient's api_token (None: send none); TypeError naming it unless it is a str: bytes or a
    number was sent as given and refused by the server as an invalid token, saying nothing of its type."""
    if value is not None and not isinstance(value, str):
        hint = "; decode bytes first: api_token.decode()" if isinstance(value, (bytes, bytearray)) else ""
        raise TypeError(f"api_token must be a str (or None for no token), got {type(value).__name__}{hint}")
    return value


def normalize_host(host: str) -> str:
    """The host without the brackets an IPv6 literal may be written in: '[::1]' -> '::1'."""
    if isinstance(host, str) and host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def is_ipv6_literal(host: str) -> bool:
    """True for an IPv6 address such as '::1', '[::1]' or 'fe80::1%eth0'; not for a name, an IPv4 address or a
    'host:port'."""
    try:
        ipaddress.IPv6Address(str(normalize_host(host)))
    except ValueError:
        return False
    return True


_ENDPOINT_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)  # 'tcp://127.0.0.1:5555', 'ipc://...'


def check_host(host: Any) -> str:
    """`host` as PolicyClient connects to it (an IPv6 literal without brackets); ValueError unless it is a non-empty
    name or IP address. An endpoint URL (the 'tcp://host:port' the server prints) is refused with the host and port
    it names; a colon outside an IPv6 literal is a ':port', which ZeroMQ would retry in silence."""
    bare = normalize_host(host) if isinstance(host, str) else None
    if not bare:
        raise ValueError(f"host must be a non-empty str (a name or an IP address), got {host!r}")
    url = _ENDPOINT_URL.match(bare)
    if url is not None:
        raise ValueError(_endpoint_url_advice(host, url.group(1), url.group(2)))
    if ":" in bare and not is_ipv6_literal(bare):
        raise ValueError(f"host {host!r} is not a host name or an IP address: it holds a ':port' (or is a malformed "
                         f"IPv6 address); pass the host alone and the port as port={_host_port_example(bare)}")
    return bare


def _host_port_example(written: str) -> str:
    """' (host=..., port=...)' for a 'host:port' (an IPv6 literal alone or in brackets), ' (host=...)' for a host
    without a port, '' for no host or a port that is not a number."""
    if not written:
        return ""
    if is_ipv6_literal(written) or ":" not in written:
        return f" (host={normalize_host(written)!r})"
    name, _, port = written.rpartition(":")
    return f" (host={normalize_host(name)!r}, port={port})" if port.isdigit() else ""


def _endpoint_url_advice(host: str, scheme: str, rest: str) -> str:
    """Why an endpoint URL is not a host: a tcp:// one with the host and port to pass instead, another transport
    (ipc://, inproc://) as not taken."""
    if scheme.lower() == "tcp":
        return (f"host {host!r} is an endpoint URL, not a host name or an IP address: pass the host alone (no scheme) "
                f"and the port as port={_host_port_example(rest)}")
    return (f"host {host!r} is an endpoint URL of the {scheme}:// transport, which is not taken: only TCP is, as a host "
            "name or an IP address and the port as port= (e.g. host='127.0.0.1', port=5555)")


def endpoint_host(host: str) -> str:
    """The host as a tcp:// endpoint spells it: IPv6 literals in brackets ('[::1]'), others unchanged."""
    bare = normalize_host(host)
    return f"[{bare}]" if is_ipv6_literal(bare) else bare
