"""Moved to ``latentq.core.netguard``; this name stays for one release (the same module object)."""

import sys

from .core import netguard as _moved

sys.modules[__name__] = _moved
