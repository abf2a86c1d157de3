"""Admission: a submit's checks and its enqueue in one atomic Lua call.

The model's queue cap, the tenant's cap on queued jobs, the tenant's rate
and an ``Idempotency-Key`` are checked in the same script that writes the
jobs (their latents, RQ's own records, the batch), so no number of
concurrent producers overshoots a cap, and a retried submit returns the
first one's jobs instead of making more.

**Fair share.** Each model keeps one RQ queue (what ``rq info`` shows and
workers pop from the head of), but a job is not simply appended: its place
is the tenant's *round*. A tenant's n-th queued job is in round
``max(head round, the tenant's last round) + 1``, and the queue is ordered
by round, then by arrival. A tenant that queues 1,000 jobs fills rounds
1..1,000; another tenant's jobs then land in rounds 1, 2, ... next to them,
so they start after about one job of the first tenant each, not after its
backlog. The order lives in a sorted set beside the list; the insert is
one ``LINSERT`` after the job just before it in that order (a plain
``RPUSH`` when it is the last, as with a single tenant). Entries of jobs
that left the queue are dropped as they are met.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from . import keys
from ..errors import InvalidRequest, QueueFull, RateLimited
from .fence import run_script
from .tenants import Tenant

__all__ = ["Admission", "IDEMPOTENCY_KEY_MAX", "ROUND_SPAN", "admit", "check_idempotency_key"]

ROUND_SPAN = 10_000_000  # score = round * ROUND_SPAN + arrival (mod ROUND_SPAN): exact in a double to round 9e8
IDEMPOTENCY_TTL_S = 24 * 3600
IDEMPOTENCY_KEY_MAX = 255  # characters, as the IETF draft's examples and common APIs allow
TENANT_PRUNE_SCAN = 256  # a submit at a tenant's cap checks at most this many of its oldest counted jobs

# ARGV: see ``admit``. Returns {"ok"} | {"idem", first submit's JSON} | {"full", queued}
# | {"tenant", queued} | {"rate", ms to wait}.
_ADMIT = """
local A = ARGV
local idem, idem_ttl, idem_value = A[1], A[2], A[3]
local normal, high, cap, n = A[4], A[5], tonumber(A[6]), tonumber(A[7])
local tenant, tqueued, tcap, job_prefix = A[8], A[9], tonumber(A[10]), A[11]
local rate_key, rate, burst = A[12], tonumber(A[13]), tonumber(A[14])
local queue, order, rounds, seq, order_ttl, now = A[15], A[16], A[17], A[18], A[19], tonumber(A[20])
local span = tonumber(A[21])
local pos = 22
local ids = {}
for i = 1, tonumber(A[pos]) do ids[i] = A[pos + i] end
pos = pos + #ids + 1

if idem ~= '' then
  local first = redis.call('GET', idem)
  if first then return {'idem', first} end
end
local waiting = redis.call('LLEN', normal) + redis.call('LLEN', high)
if cap > 0 and waiting + n > cap then return {'full', tostring(waiting)} end
if tcap > 0 then
  local queued = redis.call('ZCARD', tqueued)
  if queued + n > tcap then
    -- at the cap: forget the jobs that started or ended since (nothing else removes them), looking at the
    -- oldest few only: a tenant's jobs leave about in submit order, and a tenant at its cap that keeps
    -- submitting must not make each refusal walk all its jobs (Redis would serve no one else meanwhile)
    for _, id in ipairs(redis.call('ZRANGE', tqueued, 0, PRUNE_SCAN - 1)) do
      if redis.call('HGET', job_prefix .. id, 'status') ~= 'queued' then redis.call('ZREM', tqueued, id) end
    end
    queued = redis.call('ZCARD', tqueued)
    if queued + n > tcap then return {'tenant', tostring(queued)} end
  end
end
local tokens
if rate > 0 then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local bucket = redis.call('HMGET', rate_key, 'tokens', 'at')
  tokens = tonumber(bucket[1]) or burst
  local at = tonumber(bucket[2]) or clock
  tokens = math.min(burst, tokens + math.max(0, clock - at) * rate)
  if tokens < 1 then return {'rate', tostring(math.ceil((1 - tokens) / rate * 1000))} end
  redis.call('HSET', rate_key, 'tokens', tostring(tokens - 1), 'at', tostring(clock))
  redis.call('PEXPIRE', rate_key, math.ceil(burst / rate * 1000) + 1000)
end

-- the writes: latents, RQ's records (its push excluded: the fair insert below places each id), batch
while pos <= #A do
  local argc = tonumber(A[pos])
  local command = {}
  for k = 1, argc do command[k] = A[pos + k] end
  pos = pos + argc + 1
  redis.call(unpack(command))
end

-- fair insert
local head = redis.call('LINDEX', queue, 0)
if not head then
  redis.call('DEL', order, rounds)
else
  local head_score = redis.call('ZSCORE', order, head)
  if head_score then redis.call('ZREMRANGEBYSCORE', order, '-inf', '(' .. head_score) end
end
local head_round = 0
local first = redis.call('ZRANGE', order, 0, 0, 'WITHSCORES')
if first[2] then head_round = math.floor(tonumber(first[2]) / span) end
local round = math.max(head_round, tonumber(redis.call('HGET', rounds, tenant)) or 0)
for _, id in ipairs(ids) do
  round = round + 1
  local score = round * span + (redis.call('INCR', seq) % span)
  local last = redis.call('ZREVRANGE', order, 0, 0, 'WITHSCORES')
  redis.call('ZADD', order, score, id)
  if not last[2] or tonumber(last[2]) < score then
    redis.call('RPUSH', queue, id)
  else
    local placed = false
    local exclusive = '(' .. string.format('%.0f', score)
    while not placed do
      local before = redis.call('ZREVRANGEBYSCORE', order, exclusive, '-inf', 'LIMIT', 0, 1)[1]
      if before then
        if redis.call('LINSERT', queue, 'AFTER', before, id) >= 0 then
          placed = true
        else
          redis.call('ZREM', order, before)  -- it left the queue (popped, canceled)
        end
      else
        -- first in the order: ahead of the first ordered job still in the queue
        local after = redis.call('ZRANGEBYSCORE', order, exclusive, '+inf', 'LIMIT', 0, 1)[1]
        if not after then
          redis.call('RPUSH', queue, id)
          placed = true
        elseif redis.call('LINSERT', queue, 'BEFORE', after, id) >= 0 then
          placed = true
        else
          redis.call('ZREM', order, after)
        end
      end
    end
  end
  if tcap > 0 then redis.call('ZADD', tqueued, now, id) end  -- only a capped tenant's jobs are counted
end
redis.call('HSET', rounds, tenant, round)
for _, key in ipairs({order, rounds, seq}) do redis.call('EXPIRE', key, order_ttl) end
if tcap > 0 then redis.call('EXPIRE', tqueued, order_ttl) end
if idem ~= '' then redis.call('SET', idem, idem_value, 'EX', idem_ttl) end
return {'ok'}
""".replace("PRUNE_SCAN", str(TENANT_PRUNE_SCAN))


@dataclass(frozen=True)
class Admission:
    """What a submit got: its own new jobs, or (``replayed``) those of the first submit with its key."""

    job_ids: list[str]
    batch_id: str | None
    model: str
    replayed: bool = False


def check_idempotency_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable characters", field="idempotency_key"
        )


def _flatten(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    for command in commands:
        out.append(len(command))
        out.extend(command)
    return out


def admit(
    connection: Redis,
    *,
    queue_key: str,
    model_queue_keys: tuple[str, str],
    model_cap: int,
    tenant: Tenant,
    job_ids: list[str],
    batch_id: str | None,
    model: str,
    writes: Sequence[tuple[Any, ...]],
    job_key_prefix: str,
    order_ttl: int,
    now: float,
    idempotency_digest: str | None = None,
) -> Admission:
    """Check the caps, the rate and the idempotency key, then write the jobs and place them fairly.

    ``writes``: every command of the enqueue except the push of the ids onto ``queue_key``.
    Raises ``QueueFull`` (the model's or the tenant's cap) or ``RateLimited``.
    """
    idem_key = keys.idempotency_key(tenant.name, idempotency_digest) if idempotency_digest else ""
    first = json.dumps({"job_ids": job_ids, "batch_id": batch_id, "model": model})
    argv: list[Any] = [
        idem_key, IDEMPOTENCY_TTL_S, first,
        *model_queue_keys, model_cap, len(job_ids),
        tenant.name, keys.tenant_queued_key(tenant.name), tenant.max_queued, job_key_prefix,
        keys.tenant_rate_key(tenant.name), repr(float(tenant.rate)), repr(float(tenant.burst)),
        queue_key, keys.fair_order_key(queue_key), keys.fair_rounds_key(queue_key), keys.fair_sequence_key(queue_key),
        order_ttl, repr(float(now)), ROUND_SPAN,
        len(job_ids), *job_ids,
        *_flatten(writes),
    ]  # fmt: skip
    reply = run_script(connection, _ADMIT, 0, *argv)
    verdict = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    detail = reply[1].decode() if len(reply) > 1 and isinstance(reply[1], bytes) else (reply[1] if len(reply) > 1 else "")
    if verdict == "ok":
        return Admission(job_ids, batch_id, model)
    if verdict == "idem":
        data = json.loads(detail)
        return Admission(list(data["job_ids"]), data.get("batch_id"), data["model"], replayed=True)
    if verdict == "full":
        raise QueueFull(
            f"model {model} has {detail} jobs queued; the limit is {model_cap}. Retry later.", retry_after=5
        )
    if verdict == "tenant":
        raise QueueFull(
            f"tenant {tenant.name} has {detail} jobs queued; its limit is {tenant.max_queued}. Retry later.",
            retry_after=5,
        )
    wait_ms = int(detail)
    raise RateLimited(
        f"tenant {tenant.name} may submit {tenant.rate:g} times per second; retry in {wait_ms / 1000:.2f} s",
        retry_after=max(1, -(-wait_ms // 1000)),
    )
