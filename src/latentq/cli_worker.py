"""Moved to ``latentq.cli.worker``; this name stays for one release (the same module object)."""

import sys

from .cli import worker as _moved

sys.modules[__name__] = _moved
