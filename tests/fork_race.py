"""Two threads of a forked child making their first calls at once on an object it inherited (a PolicyClient or an
ActionChunker), one of them held inside the object's fork adoption, where the other could see it half done."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, List, Optional


def first_calls_with_one_held_mid_adoption(owner: Any, call: Callable[[], Any], hold_s: float = 0.5) -> List[Optional[Any]]:
    """In a forked child: thread A's call(), held in owner._adopt_after_fork from its first line at which `owner` has
    the child's pid, and thread B's call(), made while A is held; A goes on after `hold_s`. Returns each call's result
    (None for a call that had not returned 5 s later)."""
    held, go_on = threading.Event(), threading.Event()
    results: List[Optional[Any]] = [None, None]

    def in_adoption(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and not held.is_set() and owner._pid == os.getpid():
            held.set()
            go_on.wait(5)
        return in_adoption

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return in_adoption if frame.f_code.co_name == "_adopt_after_fork" and frame.f_locals.get("self") is owner else None

    def run(index: int, traced: bool) -> None:
        if traced:
            sys.settrace(tracer)
        try:
            results[index] = call()
        finally:
            sys.settrace(None)

    first = threading.Thread(target=run, args=(0, True), daemon=True)
    first.start()
    held.wait(1)  # never set where the adoption shows the child's pid only once it is done
    second = threading.Thread(target=run, args=(1, False), daemon=True)
    second.start()
    second.join(hold_s)
    go_on.set()
    first.join(5)
    second.join(5)
    return results
