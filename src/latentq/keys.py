"""Moved to ``latentq.state.keys``; this name stays for one release (the same module object)."""

import sys

from .state import keys as _moved

sys.modules[__name__] = _moved
