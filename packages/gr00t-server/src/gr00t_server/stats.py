"""Server counters reported by get_server_info."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class ServerStats:
    """Requests, errors and the sizes of the policy batches the server ran."""

    requests: int = 0
    errors: int = 0
    policy_calls: int = 0
    encode_ms_total: float = 0.0
    batch_sizes: Counter = field(default_factory=Counter)

    def record_batch(self, size: int) -> None:
        self.policy_calls += 1
        self.batch_sizes[size] += 1

    def snapshot(self) -> Dict[str, Any]:
        rows = sum(size * count for size, count in self.batch_sizes.items())
        return {
            "requests": self.requests,
            "errors": self.errors,
            "policy_calls": self.policy_calls,
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            "mean_batch_rows": rows / self.policy_calls if self.policy_calls else 0.0,
        }
