"""Moved to ``latentq.cli.demo``; this name stays for one release (the same module object)."""

import sys

from .cli import demo as _moved

sys.modules[__name__] = _moved
