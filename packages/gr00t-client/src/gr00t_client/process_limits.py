"""This process's resource limits and open descriptors, for errors and warnings that name the limit to raise."""

from __future__ import annotations

import errno
import os
from typing import Optional, Tuple

try:
    import resource  # not on Windows
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


def shown_limits(name: str) -> Optional[Tuple[str, str]]:
    """The soft and hard limit of resource `name` ("RLIMIT_NOFILE", "RLIMIT_NPROC") as text ("unlimited" for none);
    None where this platform has no such limit."""
    which = getattr(resource, name, None) if resource is not None else None
    if which is None:
        return None
    limits = resource.getrlimit(which)
    return tuple("unlimited" if limit == resource.RLIM_INFINITY else str(limit) for limit in limits)  # type: ignore


def open_descriptor_count() -> Optional[int]:
    """How many file descriptors this process holds open (not counting the one that lists them), or None where that
    cannot be counted (no /proc/self/fd). At the limit, where listing them takes one too many, the soft limit."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError as exc:
        if exc.errno != errno.EMFILE or resource is None:
            return None
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
