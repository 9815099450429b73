"""Locks of live policies and processors made afresh in a child made by os.fork: a parent thread inside a call at the
fork leaves them held in the child, where no thread will ever release them (the child's first call waited for ever)."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

_owners: "weakref.WeakSet[Any]" = weakref.WeakSet()  # objects with a _renew_locks() method
_owners_lock = threading.Lock()
_hook_registered = False


def _renew_locks_in_forked_child() -> None:
    global _owners_lock
    _owners_lock = threading.Lock()  # a parent thread may have been adding an owner at the fork
    for owner in list(_owners):
        owner._renew_locks()


def renew_locks_after_fork(owner: Any) -> None:
    """Have `owner._renew_locks()` called in every child this process forks while `owner` lives (the hook is
    registered once per process)."""
    global _hook_registered
    with _owners_lock:
        if not _hook_registered and hasattr(os, "register_at_fork"):  # Windows has no fork
            os.register_at_fork(after_in_child=_renew_locks_in_forked_child)
            _hook_registered = True
        _owners.add(owner)
