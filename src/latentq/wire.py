"""Moved to ``latentq.core.wire``; this name stays for one release (the same module object)."""

import sys

from .core import wire as _moved

sys.modules[__name__] = _moved
