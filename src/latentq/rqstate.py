"""Moved to ``latentq.state.rqstate``; this name stays for one release (the same module object)."""

import sys

from .state import rqstate as _moved

sys.modules[__name__] = _moved
