"""Moved to ``latentq.local.stack``; this name stays for one release (the same module object)."""

import sys

from .local import stack as _moved

sys.modules[__name__] = _moved
