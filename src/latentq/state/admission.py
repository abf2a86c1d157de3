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

from ..errors import InvalidRequest, QueueFull, RateLimited
from . import keys
from .fence import ScriptKeys, run_script
from .tenants import Tenant

__all__ = ["IDEMPOTENCY_KEY_MAX", "ROUND_SPAN", "Admission", "admit", "check_idempotency_key"]

ROUND_SPAN = 10_000_000  # score = round * ROUND_SPAN + arrival (mod ROUND_SPAN): exact in a double to round 9e8
IDEMPOTENCY_TTL_S = 24 * 3600
IDEMPOTENCY_KEY_MAX = 255  # characters, as the IETF draft's examples and common APIs allow
TENANT_PRUNE_SCAN = 256  # a submit at a tenant's cap checks at most this many of its oldest counted jobs

_ADMIT = """
-- Admission: the caps, the rate and the idempotency key checked, then the jobs written and placed fairly.
-- KEYS[1] = the model's normal-priority RQ queue (list rq:queue:latentq.<model>)
-- KEYS[2] = the model's high-priority RQ queue (list rq:queue:latentq.<model>.high)
-- KEYS[3] = the queue the jobs go in (KEYS[1] or KEYS[2] again)
-- KEYS[4] = its fair-share order (sorted set latentq:fair:order:<queue>)
-- KEYS[5] = its tenants' last rounds (hash latentq:fair:rounds:<queue>)
-- KEYS[6] = its enqueue counter (latentq:fair:seq:<queue>)
-- KEYS[7] = the tenant's queued jobs (sorted set latentq:tenant-queued:<tenant>)
-- KEYS[8] = the tenant's submit token bucket (hash latentq:tenant-rate:<tenant>)
-- KEYS[9] = the submit's idempotency key (latentq:idempotency:<tenant>:<digest>), only when ARGV[1] is '1'
-- KEYS[9..n] = the keys the writes name (from KEYS[10] when KEYS[9] is the idempotency key): latents, RQ's
--              job records, the batch, the recent-jobs index, RQ's set of queues, ...; each distinct key once,
--              referred to by its index in the writes (a fixed key above is referred to by its own index)
-- ARGV[1] = '1' when the submit has an idempotency key (KEYS[9]), else '0'
-- ARGV[2] = the idempotency key's TTL (s)
-- ARGV[3] = the value it keeps: the first submit's JSON (job ids, batch id, model)
-- ARGV[4] = the model's cap on queued jobs (0: none)
-- ARGV[5] = how many jobs this submit adds
-- ARGV[6] = the tenant's name
-- ARGV[7] = the tenant's cap on queued jobs (0: none)
-- ARGV[8] = RQ's job key prefix (rq:job:)
-- ARGV[9] = the tenant's rate (submits per second, 0: none), ARGV[10] = its burst
-- ARGV[11] = TTL (s) of the fair-share keys and of the tenant's queued jobs
-- ARGV[12] = now (s since the epoch): a counted job's score in KEYS[7]
-- ARGV[13] = ROUND_SPAN
-- ARGV[14] = the number of job ids, then the ids
-- ARGV[...] = then the writes: their count; per command its argument count (its name included), how many of
--             the arguments after its name are keys, its name, those keys as KEYS indexes, the other arguments
-- Not in KEYS: the job records (ARGV[8] .. id) of the tenant's queued jobs pruned at its cap: their ids
-- are read here (ZRANGE of KEYS[7]), and which ones and how many only the script knows; passing them all would
-- mean reading the set first, outside the script's atomicity.
-- Returns {'ok'} | {'idem', the first submit's JSON} | {'full', queued} | {'tenant', queued} | {'rate', ms to wait}.
local normal, high, queue, order, rounds, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tqueued, rate_key = KEYS[7], KEYS[8]
local has_idem, idem_ttl, idem_value = ARGV[1] == '1', ARGV[2], ARGV[3]
local cap, n, tenant, tcap, job_prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local rate, burst, order_ttl, now, span = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11], tonumber(ARGV[12]),
  tonumber(ARGV[13])
local pos = 14
local function take()
  local value = ARGV[pos]
  pos = pos + 1
  return value
end
local ids = {}
for i = 1, tonumber(take()) do ids[i] = take() end

if has_idem then
  local first = redis.call('GET', KEYS[9])
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
for _ = 1, tonumber(take()) do
  local argc, keyc = tonumber(take()), tonumber(take())
  local command = {take()}
  for k = 2, keyc + 1 do command[k] = KEYS[tonumber(take())] end
  for k = keyc + 2, argc do command[k] = take() end
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
if has_idem then redis.call('SET', KEYS[9], idem_value, 'EX', idem_ttl) end
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
    first = json.dumps({"job_ids": job_ids, "batch_id": batch_id, "model": model})
    fixed = [
        *model_queue_keys, queue_key,
        keys.fair_order_key(queue_key), keys.fair_rounds_key(queue_key), keys.fair_sequence_key(queue_key),
        keys.tenant_queued_key(tenant.name), keys.tenant_rate_key(tenant.name),
    ]  # fmt: skip
    if idempotency_digest:
        fixed.append(keys.idempotency_key(tenant.name, idempotency_digest))
    slots = ScriptKeys(*fixed)
    argv: list[Any] = [
        "1" if idempotency_digest else "0", IDEMPOTENCY_TTL_S, first,
        model_cap, len(job_ids), tenant.name, tenant.max_queued, job_key_prefix,
        repr(float(tenant.rate)), repr(float(tenant.burst)),
        order_ttl, repr(float(now)), ROUND_SPAN,
        len(job_ids), *job_ids,
        *slots.commands(writes),
    ]  # fmt: skip
    reply = run_script(connection, _ADMIT, len(slots.keys), *slots.keys, *argv)
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
