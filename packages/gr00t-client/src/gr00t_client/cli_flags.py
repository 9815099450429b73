"""For the command lines of gr00t-server and gr00t-eval: the spellings of a flag."""

from __future__ import annotations

from typing import List


def flag(name: str) -> List[str]:
    """Both spellings the reference's scripts accept for a flag, --kebab-case first, then --snake_case (one when the
    name has neither '-' nor '_'); `name` may be given in either."""
    kebab = "--" + name.replace("_", "-")
    snake = "--" + name.replace("-", "_")
    return [kebab] if kebab == snake else [kebab, snake]
