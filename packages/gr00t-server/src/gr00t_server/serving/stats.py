"""Server counters reported by get_server_info; updated from the socket thread and the policy worker."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class ServerStats:
    """Requests, errors, refusals, expired, late and undelivered requests, evicted sessions and the sizes of the policy
    batches run."""

    requests: int = 0
    errors: int = 0
    refused: int = 0  # over a queue or connection budget, the server's or a connection's (also counted in errors)
    expired: int = 0  # dropped before the policy because the client's deadline had passed (also counted in errors)
    late: int = 0  # served, but after the client's deadline: the client had given up (not counted as an error)
    undelivered: int = 0  # served, but its client's connection was gone (or not reading) when the reply was sent
    internal_errors: int = 0
    sessions_evicted: int = 0
    policy_calls: int = 0  # calls that ran the policy: returned, or failed inside it (not refused by its input checks)
    inline_jobs: int = 0  # get_action jobs the socket thread ran itself (cheap policies; worker.InlineGate)
    encode_ms_total: float = 0.0
    batch_sizes: Counter = field(default_factory=Counter)  # requests per policy call -> calls
    batch_rows: int = 0  # rows of all policy calls, as their actions have them (a request of B rows counts B)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, amount: float = 1) -> None:
        """Add to a counter (thread-safe: both serving threads count)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def record_batch(self, size: int, rows: int) -> None:
        """One policy call that served `size` requests of `rows` observation rows in all."""
        with self._lock:
            self.policy_calls += 1
            self.batch_sizes[size] += 1
            self.batch_rows += rows

    def snapshot(self) -> Dict[str, Any]:
        """The counters as plain values for get_server_info."""
        with self._lock:
            return {
                "requests": self.requests,
                "errors": self.errors,
                "refused": self.refused,
                "expired": self.expired,
                "late": self.late,
                "undelivered": self.undelivered,
                "internal_errors": self.internal_errors,
                "sessions_evicted": self.sessions_evicted,
                "policy_calls": self.policy_calls,
                "inline_jobs": self.inline_jobs,
                "encode_ms_total": round(self.encode_ms_total, 3),
                "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
                "mean_batch_rows": self.batch_rows / self.policy_calls if self.policy_calls else 0.0,
            }
