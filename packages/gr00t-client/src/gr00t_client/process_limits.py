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
