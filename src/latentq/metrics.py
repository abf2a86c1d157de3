"""Moved to ``latentq.state.metrics``; this name stays for one release (the same module object)."""

import sys

from .state import metrics as _moved

sys.modules[__name__] = _moved
