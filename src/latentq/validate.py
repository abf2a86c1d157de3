"""Moved to ``latentq.models.validate``; this name stays for one release (the same module object)."""

import sys

from .models import validate as _moved

sys.modules[__name__] = _moved
