"""The command line's logging: plain or JSON lines (one object per line, with the job and batch ids when known)."""

from __future__ import annotations

import json
import logging
import re
import time

__all__ = ["JsonFormatter", "configure_logging"]

# Libraries that log one INFO line per request: `submit --wait` polls, so they would drown its progress bar.
_CHATTY = ("httpx", "httpcore")

# RQ's own log lines name the job in their text; pick the id up so every line can be joined on it.
_JOB_ID = re.compile(r"\b([0-9a-f]{32})\b")
_FIELDS = ("job_id", "batch_id", "model", "worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if "job_id" not in entry and (match := _JOB_ID.search(message)):
            entry["job_id"] = match.group(1)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """One stderr handler on the root logger; per-request library lines only at DEBUG."""
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    level = level.upper()
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
