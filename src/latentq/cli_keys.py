"""Moved to ``latentq.cli.keys``; this name stays for one release (the same module object)."""

import sys

from .cli import keys as _moved

sys.modules[__name__] = _moved
