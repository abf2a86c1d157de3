"""Fenced writes: a job's Redis writes land only while the caller still owns the job.

Every change of a job's state (start, finish, fail, retry, cancel, expire) is
a list of Redis commands (most of them RQ's own, captured from a pipeline by
``capture``). ``apply`` sends many jobs' commands to one Lua script that, for
each job, first checks its fence and then runs its commands, or none of them:

- ``lease``: the job's lease still holds this worker's token (finish, fail, retry).
- ``start``: the same, and the job is still queued (a popped job being started).
- ``claim``: as ``start``, taking the lease first if nobody holds it (a blocking pop's job).
- ``queued``: the job is queued and no worker holds a lease on it (cancel, expire).

A Lua script runs atomically, so no other client's write can come between a
job's check and its writes: a frozen worker that wakes up after its jobs were
re-queued, or a worker whose pop lost to a cancel, changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from . import keys

__all__ = ["APPLIED", "GONE", "REFUSED", "Fenced", "apply", "capture", "captured", "renew_leases", "run_script"]

APPLIED, REFUSED, GONE = 1, 0, -1

# ARGV: item count; per item: kind, job key, lease key, token, lease TTL (ms, for a claim), read count, reads,
# write count, writes;
# then the global read count and reads. A command is its argument count and its arguments.
# Returns per item {code, reads...}; then the global reads' replies.
_APPLY = """
local pos = 1
local function take()
  local value = ARGV[pos]
  pos = pos + 1
  return value
end
local function commands()
  local list = {}
  for _ = 1, tonumber(take()) do
    local argc = tonumber(take())
    local command = {}
    for k = 1, argc do command[k] = take() end
    list[#list + 1] = command
  end
  return list
end
local out = {}
for _ = 1, tonumber(take()) do
  local kind, job_key, lease_key, token, ttl = take(), take(), take(), take(), take()
  local reads, writes = commands(), commands()
  local code = 1
  if kind ~= 'none' then
    local status = redis.call('HGET', job_key, 'status')
    local lease = redis.call('GET', lease_key)
    if not status then
      code = -1
    elseif kind == 'queued' then
      if status ~= 'queued' or lease then code = 0 end
    else
      if kind == 'claim' and not lease and status == 'queued' then
        redis.call('SET', lease_key, token, 'PX', ttl)
        lease = token
      end
      if lease ~= token or (kind ~= 'lease' and status ~= 'queued') then code = 0 end
    end
  end
  local item = {code}
  if code == 1 then
    for _, command in ipairs(reads) do item[#item + 1] = redis.call(unpack(command)) end
    for _, command in ipairs(writes) do redis.call(unpack(command)) end
  end
  out[#out + 1] = item
end
local globals = {}
for _, command in ipairs(commands()) do globals[#globals + 1] = redis.call(unpack(command)) end
out[#out + 1] = globals
return out
"""

# KEYS: lease keys; ARGV[1]: TTL in ms, ARGV[2..]: each lease's token. Returns 1 (renewed) or 0 (lost) per lease.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


@dataclass
class Fenced:
    """One job's writes and the fence they need; ``reads`` run (before the writes) only when it passes."""

    job_id: str
    job_key: str
    kind: str  # "lease", "start", "claim", "queued" or "none"
    token: str = ""
    writes: list[tuple[Any, ...]] = field(default_factory=list)
    reads: list[tuple[Any, ...]] = field(default_factory=list)
    ttl_ms: int = 0  # a claim's lease TTL


_SHAS: dict[str, str] = {}


def run_script(connection: Redis, script: str, numkeys: int, *args: Any) -> Any:
    """EVALSHA of a Lua script (its body is sent only the first time a server sees it: EVAL)."""
    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    try:
        return connection.evalsha(sha, numkeys, *args)
    except NoScriptError:  # a new or restarted server: it learns the script now
        return connection.eval(script, numkeys, *args)


def capture(connection: Redis) -> Pipeline:
    """A pipeline that is never sent: RQ's methods take a ``pipeline``, and ``captured`` then lists what
    they buffered into it, so RQ's own writes become fenced ones."""
    return connection.pipeline(transaction=False)


def captured(pipe: Pipeline) -> list[tuple[Any, ...]]:
    """The commands buffered into a ``capture`` pipeline (which is emptied)."""
    commands = [tuple(args) for args, _options in pipe.command_stack]
    pipe.reset()
    return commands


def _flatten(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = [len(commands)]
    for command in commands:
        out.append(len(command))
        out.extend(command)
    return out


def apply(connection: Redis, items: Sequence[Fenced],
          global_reads: Sequence[tuple[Any, ...]] = ()) -> tuple[list[tuple[int, list[Any]]], list[Any]]:  # fmt: skip
    """Check each item's fence and run its reads and writes, all in one atomic script.

    Returns ``(code, reads)`` per item (``APPLIED``, ``REFUSED`` or ``GONE``) and the global reads' replies.
    """
    argv: list[Any] = [len(items)]
    for item in items:
        argv += [item.kind, item.job_key, keys.lease_key(item.job_id), item.token, item.ttl_ms]
        argv += _flatten(item.reads) + _flatten(item.writes)
    argv += _flatten(global_reads)
    replies = run_script(connection, _APPLY, 0, *argv)
    results = [(int(reply[0]), list(reply[1:])) for reply in replies[:-1]]
    return results, list(replies[-1])


def renew_leases(connection: Redis, leases: dict[str, str], ttl_ms: int) -> dict[str, bool]:
    """Extend the leases this worker holds (job id -> token); False for each one it no longer holds."""
    if not leases:
        return {}
    ids = list(leases)
    replies = run_script(connection, _RENEW, len(ids), *[keys.lease_key(i) for i in ids], ttl_ms, *[leases[i] for i in ids])
    return {job_id: bool(reply) for job_id, reply in zip(ids, replies)}
