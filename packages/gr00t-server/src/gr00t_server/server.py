"""Moved to `gr00t_server.serving.server`; this name stays importable for existing code (the same module object)."""

import sys

from .serving import server as _moved

sys.modules[__name__] = _moved
