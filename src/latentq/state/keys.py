"""Every Redis key and queue name latentq uses, in one place.

RQ owns its own keys (``rq:job:*``, ``rq:queue:*``, registries, workers);
latentq adds only the ones below, all under the ``latentq:`` prefix.
"""

from __future__ import annotations

__all__ = [
    "JOB_DONE_PATTERN",
    "LATENT_PATTERN",
    "LEASE_PREFIX",
    "ORPHAN_PREFIX",
    "PREFIX",
    "QUEUE_PREFIX",
    "WORKER_STATS_PATTERN",
    "batch_key",
    "finished_per_minute_key",
    "high_priority_queue_name",
    "job_done_channel",
    "latent_key",
    "lease_key",
    "metrics_key",
    "model_from_queue",
    "queue_name",
    "recent_jobs_key",
    "recovery_lock",
    "worker_stats_key",
]

PREFIX = "latentq:"
# RQ queue names; RQ stores the list under "rq:queue:<name>".
QUEUE_PREFIX = "latentq."

LATENT_PATTERN = PREFIX + "latent:*"
WORKER_STATS_PATTERN = PREFIX + "worker-stats:*"
# Every job's done channel (see job_done_channel): one PSUBSCRIBE per process serves all waiters.
JOB_DONE_PATTERN = PREFIX + "done:*"


def queue_name(model: str) -> str:
    """One RQ queue per model."""
    return QUEUE_PREFIX + model


HIGH_SUFFIX = ".high"


def high_priority_queue_name(model: str) -> str:
    """High-priority jobs of a model: workers listen on it before the normal queue."""
    return QUEUE_PREFIX + model + HIGH_SUFFIX


def model_from_queue(name: str) -> str | None:
    if not name.startswith(QUEUE_PREFIX):
        return None
    return name[len(QUEUE_PREFIX):].removesuffix(HIGH_SUFFIX)


def latent_key(job_id: str) -> str:
    """The safetensors bytes of one job's latent (string, with a TTL)."""
    return f"{PREFIX}latent:{job_id}"


def batch_key(batch_id: str) -> str:
    """The job ids of one ``submit_many`` batch (list, with a TTL)."""
    return f"{PREFIX}batch:{batch_id}"


def worker_stats_key(worker_name: str) -> str:
    """Counters of one decode worker (hash: decode_calls, jobs, ...)."""
    return f"{PREFIX}worker-stats:{worker_name}"


def metrics_key(model: str) -> str:
    """Counters and histogram buckets of one model (hash), rendered by GET /metrics."""
    return f"{PREFIX}metrics:{model}"


def finished_per_minute_key(model: str, minute: int) -> str:
    """Jobs of a model finished in one wall-clock minute (``int(time / 60)``; counter, expires after 3)."""
    return f"{PREFIX}finished-minute:{model}:{minute}"


def job_done_channel(job_id: str) -> str:
    """Pub/sub channel a worker publishes to when a job ends (waiters subscribe; no polling)."""
    return f"{PREFIX}done:{job_id}"


LEASE_PREFIX = PREFIX + "lease:"
# A popped job seen without a lease by recovery (string, with a TTL): put back when seen so twice.
ORPHAN_PREFIX = PREFIX + "orphan:"


def lease_key(job_id: str) -> str:
    """Which pop owns a job (string: the popping worker's token, with a TTL the worker's heartbeat renews).

    Set when a worker pops the job, checked when it starts and when it ends the job: a worker that lost
    it (frozen, partitioned, beaten by a re-queue) can write nothing for it.
    """
    return LEASE_PREFIX + job_id


def recovery_lock(queue: str) -> str:
    """Held by the one worker that recovers a queue's abandoned jobs at a time: each is recovered once."""
    return f"{PREFIX}lock:recovery:{queue}"


# --- tenants (latentq.state.tenants) and admission (latentq.state.admission) ------------------------------
# API keys, by the SHA-256 of the key (hash: hex digest -> JSON {tenant, label, prefix, created}).
API_KEYS = PREFIX + "api-keys"
# Tenants and their limits (hash: tenant -> JSON {max_queued, rate, created}).
TENANTS = PREFIX + "tenants"


def tenant_queued_key(tenant: str) -> str:
    """The tenant's jobs that were queued (sorted set: id -> submit time), pruned of started ones at its cap."""
    return f"{PREFIX}tenant-queued:{tenant}"


def tenant_rate_key(tenant: str) -> str:
    """The tenant's submit token bucket (hash: tokens, at)."""
    return f"{PREFIX}tenant-rate:{tenant}"


def idempotency_key(tenant: str, key_digest: str) -> str:
    """The first submit made with an ``Idempotency-Key`` (string: JSON of its job ids, 24 h)."""
    return f"{PREFIX}idempotency:{tenant}:{key_digest}"


def fair_order_key(queue_key: str) -> str:
    """Fair-share order of a queue's jobs (sorted set: id -> round * ROUND_SPAN + sequence)."""
    return f"{PREFIX}fair:order:{queue_key}"


def fair_rounds_key(queue_key: str) -> str:
    """Each tenant's last round in a queue (hash: tenant -> round)."""
    return f"{PREFIX}fair:rounds:{queue_key}"


def fair_sequence_key(queue_key: str) -> str:
    """A queue's enqueue counter (FIFO within one round)."""
    return f"{PREFIX}fair:seq:{queue_key}"


__all__ += [
    "API_KEYS",
    "TENANTS",
    "fair_order_key",
    "fair_rounds_key",
    "fair_sequence_key",
    "idempotency_key",
    "tenant_queued_key",
    "tenant_rate_key",
]

# --- the deployment's description (latentq.state.deployment) ---------------------------------------
# Hash: id, secret (signs result URLs), public_url (the API's), store (location), store_options (JSON),
# cleanups (a counter latentq cleanup bumps: cached job records are dropped when it changes).
DEPLOYMENT = PREFIX + "deployment"

__all__ += ["DEPLOYMENT"]


def recent_jobs_key(tenant: str) -> str:
    """A tenant's recent jobs, newest last (sorted set: job id -> submit time; trimmed to a bound)."""
    return f"{PREFIX}recent:{tenant}"


# --- webhooks (latentq.webhooks.outbox) -------------------------------------------------------------------
# The webhook outbox (stream: one entry per job event to deliver: id, url, model, job, body), written in
# the job's end transaction and drained by every worker and API process through one consumer group.
WEBHOOK_OUTBOX = PREFIX + "webhooks"
WEBHOOK_GROUP = "latentq-webhooks"
# When each outbox entry is next due (sorted set: entry id -> ms since the epoch): a retry's time after
# a failed attempt, or while an attempt runs the moment it is given up for lost (its drainer died).
WEBHOOK_DUE = PREFIX + "webhooks:due"
# Attempts made per outbox entry (hash: entry id -> count).
WEBHOOK_ATTEMPTS = PREFIX + "webhooks:attempts"

__all__ += ["WEBHOOK_ATTEMPTS", "WEBHOOK_DUE", "WEBHOOK_GROUP", "WEBHOOK_OUTBOX"]
