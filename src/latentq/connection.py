"""Moved to ``latentq.state.connection``; this name stays for one release (the same module object)."""

import sys

from .state import connection as _moved

sys.modules[__name__] = _moved
