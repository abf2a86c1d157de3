"""Moved to ``latentq.core.request``; this name stays for one release (the same module object)."""

import sys

from .core import request as _moved

sys.modules[__name__] = _moved
