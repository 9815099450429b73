"""Pairing the keys a policy asks for with the keys a dataset or env has: by name, then the rest by position."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple


def match_keys(wanted: Sequence[str], available: Sequence[str]) -> Optional[Tuple[Dict[str, str], List[Tuple[str, str]]]]:
    """({wanted: available}, the pairs made by position) or None when they cannot be paired.

    Keys of the same name pair first; the wanted keys left over pair by position with the available keys left
    over when there are as many of each. (Pairing every key by position as soon as one name differed gave a camera
    of a matching name another camera's frames.)"""
    named = {key: key for key in wanted if key in available}
    left_wanted = [key for key in wanted if key not in named]
    left_available = [key for key in available if key not in named.values()]
    if not left_wanted:
        return named, []
    if len(left_wanted) != len(left_available):
        return None
    by_position = list(zip(left_wanted, left_available))
    return {**named, **dict(by_position)}, by_position
