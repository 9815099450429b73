#!/usr/bin/env python3
"""Set the release version of all three packages at once: `python scripts/set_version.py 0.2.0`.

Rewrites each package's `__version__` (what setuptools and the code read) and the `gr00t-*==` sibling pins
in the pyproject.toml files, so the three always release together. tests/e2e/test_dist_metadata.py checks
that they agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INITS = [REPO / "packages" / name / "src" / module / "__init__.py"
         for name, module in (("gr00t-client", "gr00t_client"), ("gr00t-eval", "gr00t_eval"), ("gr00t-server", "gr00t_server"))]
PYPROJECTS = sorted((REPO / "packages").glob("*/pyproject.toml"))
VERSION = re.compile(r"^\d+\.\d+\.\d+([abc]|rc|\.dev|\.post)?\d*$")


def set_version(version: str) -> None:
    """Write `version` into every __version__ and sibling pin; raise ValueError if one is not found."""
    if not VERSION.match(version):
        raise ValueError(f"version {version!r} is not of the form X.Y.Z (optionally aN, bN, rcN, .devN, .postN)")
    for init in INITS:
        text, count = re.subn(r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M)
        if count != 1:
            raise ValueError(f"{init}: expected one literal __version__ line, found {count}")
        init.write_text(text)
    for pyproject in PYPROJECTS:
        text = re.sub(r'"(gr00t-(?:client|eval|server)(?:\[[^\]]*\])?)==[^"]*"', rf'"\1=={version}"', pyproject.read_text())
        pyproject.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/set_version.py X.Y.Z")
    try:
        set_version(sys.argv[1])
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    print(f"all three packages are now {sys.argv[1]}; add a CHANGELOG.md section, then make dist-check")
