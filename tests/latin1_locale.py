"""A de_DE.ISO-8859-1 locale built with localedef into a test's folder (shared by the gr00t-eval and gr00t-server
tests of folder names that are not UTF-8 on disk): under it a non-ASCII name such as 'café' is Latin-1 bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional


def latin1_locale_env(folder: Path) -> Optional[Dict[str, str]]:
    """Environment variables for a child process under a de_DE.ISO-8859-1 locale built into `folder` (the tests folder
    importable); None where localedef cannot build it."""
    if shutil.which("localedef") is None:
        return None
    locales = Path(folder) / "locales"
    locales.mkdir()
    made = subprocess.run(["localedef", "-i", "de_DE", "-f", "ISO-8859-1", str(locales / "de_DE.ISO-8859-1")],
                          capture_output=True)
    if made.returncode not in (0, 1) or not (locales / "de_DE.ISO-8859-1").is_dir():  # 1: built, with warnings
        return None
    return {**os.environ, "LANG": "de_DE.ISO-8859-1", "LC_ALL": "de_DE.ISO-8859-1", "LOCPATH": str(locales),
            "PYTHONUTF8": "0", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
