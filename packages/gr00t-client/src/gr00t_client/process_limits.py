"""This process's resource limits and open descriptors, for errors and warnings that name the limit to raise."""

from __future__ import annotations

import errno
import os
from typing import Optional, Tuple

try:
    import resource  # not on Windows
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


def resource_limits(name: str) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """The soft and hard limit of resource `name` ("RLIMIT_NOFILE", "RLIMIT_NPROC"), None for no limit; None where this
    platform has no such limit."""
    which = getattr(resource, name, None) if resource is not None else None
    if which is None:
        return None
    soft, hard = resource.getrlimit(which)
    return tuple(None if limit == resource.RLIM_INFINITY else int(limit) for limit in (soft, hard))  # type: ignore


def shown_limit(limit: Optional[int]) -> str:
    """A limit of resource_limits as text: "unlimited" for none."""
    return "unlimited" if limit is None else str(limit)


def shown_limits(name: str) -> Optional[Tuple[str, str]]:
    """The soft and hard limit of resource `name` as text (shown_limit); None where this platform has no such limit."""
    limits = resource_limits(name)
    return None if limits is None else (shown_limit(limits[0]), shown_limit(limits[1]))


def open_descriptor_count() -> Optional[int]:
    """How many file descriptors this process holds open (not counting the one that lists them), or None where that
    cannot be counted (no /proc/self/fd). At the limit, where listing them takes one too many, the soft limit."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError as exc:
        limits = resource_limits("RLIMIT_NOFILE") if exc.errno == errno.EMFILE else None
        return None if limits is None else limits[0]


def descriptors_left() -> Optional[int]:
    """How many more file descriptors this process may open before its soft limit; None where that is not known (no
    limit, or no /proc/self/fd to count them)."""
    limits, held = resource_limits("RLIMIT_NOFILE"), open_descriptor_count()
    if limits is None or limits[0] is None or held is None:
        return None
    return max(0, limits[0] - held)


def descriptor_words(state: str, holder: str, or_else: str) -> str:
    """'this process <state> (its limits), and <holder>: raise the soft limit, e.g. ..., or <or_else>': what ran out
    and how to raise it, in the words every out-of-descriptors error of the client and the server uses."""
    shown = shown_limits("RLIMIT_NOFILE")
    limits = f" (soft limit {shown[0]}, hard limit {shown[1]})" if shown is not None else ""
    return (f"this process {state}{limits}, and {holder}: raise the soft limit, e.g. `ulimit -n 65536` in the shell "
            f"that starts it, or resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard)) in it, or {or_else}")
