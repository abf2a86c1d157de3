"""Moved to ``latentq.state.fence``; this name stays for one release (the same module object)."""

import sys

from .state import fence as _moved

sys.modules[__name__] = _moved
