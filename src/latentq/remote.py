"""Moved to ``latentq.integrations.remote_decode``; this name stays for one release (the same module object)."""

import sys

from .integrations import remote_decode as _moved

sys.modules[__name__] = _moved
