"""Moved to `gr00t_server.serving.stats`; this name stays importable for existing code (the same module object)."""

import sys

from .serving import stats as _moved

sys.modules[__name__] = _moved
