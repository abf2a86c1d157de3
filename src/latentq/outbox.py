"""Moved to ``latentq.webhooks.outbox``; this name stays for one release (the same module object)."""

import sys

from .webhooks import outbox as _moved

sys.modules[__name__] = _moved
