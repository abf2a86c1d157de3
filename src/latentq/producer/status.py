"""Moved to ``latentq.state.status``; this name stays for one release (the same module object)."""

import sys

from ..state import status as _moved

sys.modules[__name__] = _moved
