"""PolicyClient's arguments checked as it takes them (timeout, reply cap, host), and a host as a tcp:// endpoint
spells it."""

from __future__ import annotations

import ipaddress
import math
import numbers
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


def check_host(host: Any) -> str:
    """`host` as PolicyClient connects to it (an IPv6 literal without brackets); ValueError unless it is a non-empty
    name or IP address. A colon outside an IPv6 literal is a ':port', which ZeroMQ would retry in silence."""
    bare = normalize_host(host) if isinstance(host, str) else None
    if not bare:
        raise ValueError(f"host must be a non-empty str (a name or an IP address), got {host!r}")
    if ":" in bare and not is_ipv6_literal(bare):
        name, _, port = bare.rpartition(":")
        example = f" (host={name!r}, port={port})" if port.isdigit() else ""
        raise ValueError(f"host {host!r} is not a host name or an IP address: it holds a ':port' (or is a malformed "
                         f"IPv6 address); pass the host alone and the port as port={example}")
    return bare


def endpoint_host(host: str) -> str:
    """The host as a tcp:// endpoint spells it: IPv6 literals in brackets ('[::1]'), others unchanged."""
    bare = normalize_host(host)
    return f"[{bare}]" if is_ipv6_literal(bare) else bare
