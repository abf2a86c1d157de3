"""Moved to ``latentq.cli.submit``; this name stays for one release (the same module object)."""

import sys

from .cli import submit as _moved

sys.modules[__name__] = _moved
