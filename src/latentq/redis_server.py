"""Moved to ``latentq.local.redis_server``; this name stays for one release (the same module object)."""

import sys

from .local import redis_server as _moved

sys.modules[__name__] = _moved
