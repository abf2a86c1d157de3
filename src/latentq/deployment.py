"""Moved to ``latentq.state.deployment``; this name stays for one release (the same module object)."""

import sys

from .state import deployment as _moved

sys.modules[__name__] = _moved
