"""Host name lookups shared process-wide: at most one getaddrinfo of a host in flight, whose outcome every client of
that host waits on. A slow resolver (a DNS server that does not answer, an mDNS '.local' name) held a thread per new
client for its whole hang; a robot making a client per episode or retry piled them up.

No lock or Event is shared: a robot's signal handler that raises (a SIGALRM watchdog) in the middle of acquiring one
can leave it held, and then every later client of the host would wait on it for good. The table's changes are
single dict operations, and waiting polls `finished`."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Dict

_POLL_FIRST_S = 0.0005  # a name in /etc/hosts resolves in well under a millisecond
_POLL_MAX_S = 0.02


class HostLookup:
    """One host's getaddrinfo, run on a daemon thread: once `finished`, `outcome` holds 'ipv4' (addresses) or
    'error', and 'ipv6' where a name without IPv4 addresses has IPv6 ones."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.started = time.monotonic()
        self.outcome: Dict[str, Any] = {}
        self.finished = False

    def age_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def wait(self, timeout_s: float) -> bool:
        """Whether the lookup has finished, waiting up to `timeout_s` for it."""
        end = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while not self.finished:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX_S)
        return True

    def _run(self) -> None:
        try:
            self.outcome["ipv4"] = socket.getaddrinfo(self.host, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            self.outcome["error"] = exc
            try:  # a name with IPv6 addresses only: ZeroMQ is not told to use IPv6 for names
                self.outcome["ipv6"] = socket.getaddrinfo(self.host, None, socket.AF_INET6, socket.SOCK_STREAM)
            except (socket.gaierror, OSError):
                pass
        except (OSError, UnicodeError) as exc:
            self.outcome["error"] = exc
        finally:
            if _IN_FLIGHT.get(self.host) is self:  # only this thread removes this entry, and none replaces it
                del _IN_FLIGHT[self.host]  # the next client of this host asks afresh (DNS may have changed)
            self.finished = True


_IN_FLIGHT: Dict[str, HostLookup] = {}


def look_up(host: str) -> HostLookup:
    """The lookup of `host` in flight, started when none is; wait on it with `wait`."""
    shared = _IN_FLIGHT.get(host)
    if shared is not None and not shared.finished:
        return shared
    lookup = HostLookup(host)
    # Started before it is shared: a start a signal handler interrupts leaves no entry that nothing will finish.
    threading.Thread(target=lookup._run, name="gr00t-client-resolve", daemon=True).start()
    shared = _IN_FLIGHT.setdefault(host, lookup)  # two clients at once: the second waits on the first's (its own ends)
    if shared is not lookup and shared.finished:  # an entry left finished (below): not a lookup in flight
        _IN_FLIGHT[host] = shared = lookup
    if lookup.finished and _IN_FLIGHT.get(host) is lookup:
        # It finished before it was shared (a name in /etc/hosts answers at once), so its thread found no entry to
        # remove: left, it would answer every later lookup of the host for the process's life, a DNS change unseen
        _IN_FLIGHT.pop(host, None)
    return shared


if hasattr(os, "register_at_fork"):  # a forked child has none of its parent's lookup threads
    os.register_at_fork(after_in_child=_IN_FLIGHT.clear)
