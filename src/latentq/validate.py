"""Moved to ``latentq.core.validate``; this name stays for one release (the same module object)."""

import sys

from .core import validate as _moved

sys.modules[__name__] = _moved
