"""The webhook outbox's writing side: one entry per ended job with a ``callback_url``, added to a Redis stream
in the same fenced transaction that ends the job (``lifecycle``), so the job's end and its webhook happen
together, once. The entry holds the final body (made once: every retry sends the same bytes) and the
event's ``webhook-id``. Draining and sending are ``latentq.webhooks``'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from . import keys
from .status import job_info

__all__ = ["MAX_ENTRIES", "add", "event_body", "event_data", "event_type", "message_id", "pending"]

MAX_ENTRIES = 100_000  # the stream's cap (MAXLEN ~): bounds Redis's memory under a dead receiver


def event_type(status: str) -> str:
    return f"job.{status}"


def message_id(job_id: str, status: str) -> str:
    """One id per job event: a job ends once, so its id and final status name the event."""
    return f"msg_{job_id}_{status}"


def event_body(status: str, data: dict[str, Any], occurred: float | None = None) -> bytes:
    """The delivered JSON, made once when the job ends (every retry sends these same bytes)."""
    moment = datetime.fromtimestamp(occurred if occurred is not None else time.time(), UTC)
    payload = {"type": event_type(status), "timestamp": moment.isoformat().replace("+00:00", "Z"), "data": data}
    return json.dumps(payload, separators=(",", ":")).encode()


def event_data(job: Any, status: str, url_for: Callable[[str], str | None], result: dict | None = None,
               reason: str = "") -> dict[str, Any]:  # fmt: skip
    """The ended job's status JSON (as ``GET /v1/jobs/{id}`` reports it), from the job as its end's writes
    left it in memory (they are not sent yet)."""
    info = job_info(job, url_for, result=result if status == "finished" else None)
    data = info.to_dict()
    if reason and status in ("failed", "expired"):
        data["error"] = reason
    return data


def add(pipe: Any, job_id: str, model: str, status: str, url: str, data: dict[str, Any]) -> None:
    """Queue one job event's delivery (into ``pipe``: the caller's transaction)."""
    fields = {"id": message_id(job_id, status), "url": url, "model": model, "job": job_id,
              "body": event_body(status, data)}  # fmt: skip
    pipe.xadd(keys.WEBHOOK_OUTBOX, fields, maxlen=MAX_ENTRIES, approximate=True)


def pending(connection: Redis) -> int:
    """Deliveries not yet made (nor given up)."""
    return int(connection.xlen(keys.WEBHOOK_OUTBOX))
