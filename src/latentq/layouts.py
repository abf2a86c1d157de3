"""Moved to ``latentq.core.layouts``; this name stays for one release (the same module object)."""

import sys

from .core import layouts as _moved

sys.modules[__name__] = _moved
