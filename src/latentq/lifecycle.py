"""Moved to ``latentq.state.lifecycle``; this name stays for one release (the same module object)."""

import sys

from .state import lifecycle as _moved

sys.modules[__name__] = _moved
