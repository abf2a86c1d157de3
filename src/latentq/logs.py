"""JSON log lines for log pipelines: one object per line, with the job and batch ids when known."""

from __future__ import annotations

import json
import logging
import re
import time

__all__ = ["JsonFormatter"]

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
