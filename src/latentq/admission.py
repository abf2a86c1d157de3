"""Moved to ``latentq.state.admission``; this name stays for one release (the same module object)."""

import sys

from .state import admission as _moved

sys.modules[__name__] = _moved
