"""Moved to ``latentq.state.recent``; this name stays for one release (the same module object)."""

import sys

from .state import recent as _moved

sys.modules[__name__] = _moved
