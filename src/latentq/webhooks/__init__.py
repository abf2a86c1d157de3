"""Webhooks: the outbox in Redis (written in each job's end) and its sender.

``latentq.webhooks`` was the sender's module: its names stay importable from here for one release.
"""

from .sender import *
from .sender import __all__  # noqa: F401
