"""Moved to ``latentq.integrations.pipeline_queue``; this name stays for one release (the same module object)."""

import sys

from .integrations import pipeline_queue as _moved

sys.modules[__name__] = _moved
