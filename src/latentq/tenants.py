"""Moved to ``latentq.state.tenants``; this name stays for one release (the same module object)."""

import sys

from .state import tenants as _moved

sys.modules[__name__] = _moved
