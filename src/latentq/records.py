"""Moved to ``latentq.state.records``; this name stays for one release (the same module object)."""

import sys

from .state import records as _moved

sys.modules[__name__] = _moved
