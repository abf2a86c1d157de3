"""Moved to ``latentq.integrations.vae``; this name stays for one release (the same module object)."""

import sys

from .integrations import vae as _moved

sys.modules[__name__] = _moved
