"""Moved to ``latentq.core.payload``; this name stays for one release (the same module object)."""

import sys

from .core import payload as _moved

sys.modules[__name__] = _moved
