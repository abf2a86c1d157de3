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

__all__ = [
    "APPLIED", "GONE", "REFUSED", "Fenced", "ScriptKeys", "apply", "capture", "captured", "renew_leases", "run_script",
]  # fmt: skip

APPLIED, REFUSED, GONE = 1, 0, -1

_APPLY = """
-- Fenced writes: per item, check the job's fence, then run its reads and writes, or none of them.
-- KEYS[1..n] = every key the items name: each job's record (rq:job:<id>) and lease (latentq:lease:<id>), and
--              each key of their reads and writes (latents, RQ's registries and records, metrics, the
--              webhook outbox, ...); each distinct key once, referred to below by its index
-- ARGV[1] = item count; per item: kind ('lease', 'start', 'claim', 'queued' or 'none'), the KEYS index of
--           the job's record, the KEYS index of its lease (both 0 for 'none'), lease token, lease TTL in ms
--           (a claim's), its reads, its writes
-- ARGV[...] = then the global reads
-- Commands (reads, writes): their count; per command its argument count (its name included), how many
--           of the arguments after its name are keys, its name, those keys as KEYS indexes, the others.
-- Returns per item {code, reads' replies...} (code 1 applied, 0 refused, -1 gone); then the global reads' replies.
local pos = 1
local function take()
  local value = ARGV[pos]
  pos = pos + 1
  return value
end
local function commands()
  local list = {}
  for _ = 1, tonumber(take()) do
    local argc, keyc = tonumber(take()), tonumber(take())
    local command = {take()}
    for k = 2, keyc + 1 do command[k] = KEYS[tonumber(take())] end
    for k = keyc + 2, argc do command[k] = take() end
    list[#list + 1] = command
  end
  return list
end
local out = {}
for _ = 1, tonumber(take()) do
  local kind, job_key, lease_key, token, ttl = take(), KEYS[tonumber(take())], KEYS[tonumber(take())], take(), take()
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

_RENEW = """
-- Renew leases this worker still holds.
-- KEYS[1..n] = the leases (latentq:lease:<job id>)
-- ARGV[1] = lease TTL in ms
-- ARGV[2..n+1] = each lease's token (ARGV[i + 1] for KEYS[i])
-- Returns per lease 1 (renewed) or 0 (lost).
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


# Where a command's keys are, for ``ScriptKeys.commands``: how many of its first arguments (after its name)
# are keys where that is not exactly one (None: all of them); commands whose keys stand elsewhere are refused.
_LEADING_KEYS: dict[str, int | None] = {
    "DEL": None, "UNLINK": None, "EXISTS": None, "TOUCH": None, "MGET": None, "PFCOUNT": None,
    "LMOVE": 2, "RPOPLPUSH": 2, "SMOVE": 2, "RENAME": 2, "RENAMENX": 2, "COPY": 2, "ZRANGESTORE": 2, "LCS": 2,
    "PUBLISH": 0, "SPUBLISH": 0, "TIME": 0, "PING": 0, "ECHO": 0,
}  # fmt: skip
_KEYS_ELSEWHERE = frozenset({
    "MSET", "MSETNX", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "SORT", "SORT_RO",
    "ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE", "ZUNION", "ZINTER", "ZDIFF", "ZINTERCARD", "SINTERCARD",
    "SUNIONSTORE", "SINTERSTORE", "SDIFFSTORE", "SUNION", "SINTER", "SDIFF", "LMPOP", "ZMPOP", "BLMPOP", "BZMPOP",
    "XREAD", "XREADGROUP", "BITOP", "OBJECT", "MEMORY", "MIGRATE", "GEORADIUS", "GEORADIUSBYMEMBER",
    "GEOSEARCHSTORE", "PFMERGE", "BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX",
})  # fmt: skip


class ScriptKeys:
    """The KEYS of one script call: each distinct key once (in the order first named), by its 1-based index.

    ``commands`` encodes Redis commands for a script that runs them (``redis.call(unpack(command))``) with
    their keys passed as KEYS: per command its argument count (its name included), how many of the
    arguments after its name are keys, its name, those keys as KEYS indexes, then its other arguments.
    """

    def __init__(self, *fixed: Any) -> None:
        """``fixed``: keys at KEYS[1], KEYS[2], ... in this order, repeats included (a script's fixed slots)."""
        self.keys: list[Any] = []
        self._index: dict[Any, int] = {}
        for key in fixed:
            self.keys.append(key)
            self._index.setdefault(key, len(self.keys))

    def index(self, key: Any) -> int:
        """The key's KEYS index, adding it if new."""
        found = self._index.get(key)
        if found is None:
            self.keys.append(key)
            found = self._index[key] = len(self.keys)
        return found

    def command(self, command: Sequence[Any]) -> list[Any]:
        name = command[0]
        upper = (name.decode() if isinstance(name, bytes) else str(name)).upper()
        if upper in _KEYS_ELSEWHERE:
            raise ValueError(f"{upper}: its keys are not its first arguments, so ScriptKeys cannot pass them as KEYS")
        args = command[1:]
        keyc = _LEADING_KEYS.get(upper, 1)
        keyc = len(args) if keyc is None else min(keyc, len(args))
        return [len(command), keyc, name, *[self.index(key) for key in args[:keyc]], *args[keyc:]]

    def commands(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The commands' count, then each command as ``command`` encodes it."""
        out: list[Any] = [len(commands)]
        for command in commands:
            out.extend(self.command(command))
        return out


def apply(connection: Redis, items: Sequence[Fenced],
          global_reads: Sequence[tuple[Any, ...]] = ()) -> tuple[list[tuple[int, list[Any]]], list[Any]]:  # fmt: skip
    """Check each item's fence and run its reads and writes, all in one atomic script.

    Returns ``(code, reads)`` per item (``APPLIED``, ``REFUSED`` or ``GONE``) and the global reads' replies.
    """
    slots = ScriptKeys()
    argv: list[Any] = [len(items)]
    for item in items:
        if item.kind == "none":  # no fence: no job, nothing of it read
            argv += [item.kind, 0, 0, item.token, item.ttl_ms]
        else:
            job_key, lease_key = slots.index(item.job_key), slots.index(keys.lease_key(item.job_id))
            argv += [item.kind, job_key, lease_key, item.token, item.ttl_ms]
        argv += slots.commands(item.reads) + slots.commands(item.writes)
    argv += slots.commands(global_reads)
    replies = run_script(connection, _APPLY, len(slots.keys), *slots.keys, *argv)
    results = [(int(reply[0]), list(reply[1:])) for reply in replies[:-1]]
    return results, list(replies[-1])


def renew_leases(connection: Redis, leases: dict[str, str], ttl_ms: int) -> dict[str, bool]:
    """Extend the leases this worker holds (job id -> token); False for each one it no longer holds."""
    if not leases:
        return {}
    ids = list(leases)
    replies = run_script(connection, _RENEW, len(ids), *[keys.lease_key(i) for i in ids], ttl_ms, *[leases[i] for i in ids])
    return {job_id: bool(reply) for job_id, reply in zip(ids, replies)}
