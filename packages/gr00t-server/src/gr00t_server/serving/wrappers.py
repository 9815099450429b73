"""Policy wrappers: a wrapper (e.g. Gr00tSimPolicyWrapper) holds the policy it wraps in `.policy`; what the chain serves."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from gr00t_client.embodiment import EmbodimentTag, names_tag


def policy_chain(policy: Any) -> Iterator[Any]:
    """The policy, then each policy it wraps through `.policy`, outermost first; a cycle ends the chain."""
    seen = set()
    while policy is not None and id(policy) not in seen:
        yield policy
        seen.add(id(policy))
        policy = getattr(policy, "policy", None)


def served_embodiment_tag(policy: Any, given: Optional[str] = None) -> Optional[str]:
    """The embodiment tag a server reports for `policy`: the first `embodiment_tag_value` in its wrapper chain, which
    `given` must name (as serve resolves a tag); `given` alone for a policy that names none (an EmbodimentTag
    member's name as its value); None when neither does."""
    given = given.value if isinstance(given, EmbodimentTag) else given
    if given is not None and (not isinstance(given, str) or not given.strip()):
        raise ValueError(f"embodiment_tag must be a non-empty str (a tag such as 'new_embodiment') or None, got "
                         f"{given!r}")
    own = next((link.embodiment_tag_value for link in policy_chain(policy)
                if isinstance(getattr(link, "embodiment_tag_value", None), str)), None)
    if given is None:
        return own
    if own is None:
        # An enum member's name ("LIBERO_PANDA") is its tag's value, as serve reports it; any other text is reported as
        # given: a checkpoint's or .py config's own tag (an N1.6-era 'libero_panda' is not libero_sim)
        member = EmbodimentTag.__members__.get(given.strip())
        return member.value if member is not None else given.strip()
    if not names_tag(given, own):
        raise ValueError(f"embodiment_tag {given!r} is not the embodiment the policy serves ({type(policy).__name__} "
                         f"serves {own!r}); pass embodiment_tag={own!r}, or leave it out to report the policy's")
    return own
