"""Moved to ``latentq.state.payload``; this name stays for one release (the same module object)."""

import sys

from .state import payload as _moved

sys.modules[__name__] = _moved
