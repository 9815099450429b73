"""Policy wrappers: a wrapper (e.g. Gr00tSimPolicyWrapper) holds the policy it wraps in `.policy`."""

from __future__ import annotations

from typing import Any, Iterator


def policy_chain(policy: Any) -> Iterator[Any]:
    """The policy, then each policy it wraps through `.policy`, outermost first; a cycle ends the chain."""
    seen = set()
    while policy is not None and id(policy) not in seen:
        yield policy
        seen.add(id(policy))
        policy = getattr(policy, "policy", None)
