"""Every Lua script names the keys it touches as KEYS, each slot documented at its top (as RQ's scripts.py does).

Two checks. A static one reads every Lua script of the package (module-level string constants holding
``redis.call``): each ``redis.call``'s key argument must be a ``KEYS[n]`` reference (directly or through a
local bound to one), never a literal name, an ARGV value or a name built from a prefix, except in a script
whose header documents why a key cannot be passed ("Not in KEYS:", for keys of ids the script itself reads);
and every KEYS slot the script uses is documented in its header. A regex reading of the Lua, not a parser:
it knows the shapes these scripts are written in, and the self-test below shows it catches the old ones.

A running one sends the scripts, with a prelude that logs each ``redis.call``, through the real code paths
(submits, a cancel, a worker's pops, start and ends, lease renewal, orphan recovery, the webhook outbox), and
asks Redis itself (``COMMAND GETKEYS``) which arguments of each call are keys: each one must be among the
call's KEYS or start with a prefix the header names as an exception.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import defaultdict
from pathlib import Path

import pytest
import rq
import torch
from redis.exceptions import ResponseError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

import latentq
from latentq import Client
from latentq.errors import QueueFull
from latentq.state import admission, fence, keys, rqstate
from latentq.state import outbox as state_outbox
from latentq.state.fence import APPLIED, Fenced, ScriptKeys, apply, capture, captured, renew_leases
from latentq.state.lifecycle import Ending, end_jobs
from latentq.state.tenants import TenantDirectory
from latentq.webhooks import outbox
from latentq.worker import reliable_queue
from latentq.worker.reliable_queue import ReliableQueue

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(latentq.__file__).resolve().parent
EXCEPTION = "Not in KEYS:"
NO_KEYS = {"TIME"}  # commands these scripts call without a key
TWO_KEYS = {"LMOVE", "RPOPLPUSH", "SMOVE"}  # their first two arguments are keys
ALL_KEYS = {"DEL", "UNLINK", "EXISTS", "TOUCH", "MGET"}  # every argument is a key


# --- the static check --------------------------------------------------------------------------------------
def lua_scripts() -> dict[str, str]:
    """Every Lua script in the package: module-level string constants whose text holds ``redis.call``."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if "redis.call" not in text and "redis.pcall" not in text:
            continue
        names = []
        for node in ast.parse(text).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            segment = ast.get_source_segment(text, node) or ""
            names += [t.id for t in targets if isinstance(t, ast.Name) and "redis." in segment and "call(" in segment]
        if not names:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for name in names:
            value = getattr(module, name)
            if isinstance(value, str) and ("redis.call(" in value or "redis.pcall(" in value):
                found[f"{module.__name__}.{name}"] = value
    return found


def split_header(script: str) -> tuple[str, str]:
    """The comment block at the script's top, and the rest (its code, other comments removed)."""
    lines = script.strip("\n").splitlines()
    count = 0
    while count < len(lines) and lines[count].lstrip().startswith("--"):
        count += 1
    body = "\n".join(re.sub(r"--.*$", "", line) for line in lines[count:])
    return "\n".join(lines[:count]), body


def balanced(text: str, start: int) -> tuple[str, int]:
    """The text from ``start`` to the bracket closing the one just before it, and the index after that."""
    depth, quote, i = 1, "", start
    while i < len(text):
        char = text[i]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return text[start:i], i + 1
        i += 1
    raise ValueError(f"unbalanced: {text[start - 20:start + 40]!r}")


def split_top(text: str) -> list[str]:
    """``text`` split at its commas outside brackets and strings."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def bindings(body: str) -> dict[str, list[str]]:
    """What each local name is bound to: ``local a, b = x, y`` and the value names of ``for _, v in ipairs(t)``."""
    joined = re.sub(r",[ \t]*\n\s*", ", ", body)  # a statement continued on the next line
    bound: dict[str, list[str]] = defaultdict(list)
    for match in re.finditer(r"^\s*local\s+([\w\s,]+?)\s*=\s*(.+)$", joined, re.M):
        names = [name.strip() for name in match[1].split(",")]
        values = split_top(match[2])
        for i, name in enumerate(names):
            bound[name].append(values[i] if i < len(values) else "nil")
    for match in re.finditer(r"for\s+([\w\s,]+?)\s+in\s+ipairs\(", joined):
        name = match[1].split(",")[-1].strip()
        table = balanced(joined, match.end())[0].strip()
        if table == "KEYS":
            bound[name].append("KEYS[i]")
        elif table.startswith("{"):
            bound[name] += split_top(table[1:-1])
        else:
            bound[name].append(f"<an element of {table}>")
    return bound


def is_key(expr: str, bound: dict[str, list[str]], exception: bool, seen: frozenset[str] = frozenset()) -> bool:
    expr = expr.strip()
    if re.fullmatch(r"KEYS\[[^\]]+\]", expr):
        return True
    if re.fullmatch(r"[A-Za-z_]\w*", expr):
        values = bound.get(expr)
        return bool(values) and expr not in seen and all(is_key(v, bound, exception, seen | {expr}) for v in values)
    return exception and ".." in expr  # a key built from a prefix: the documented exception only


def problems(script: str) -> list[str]:
    """What the script does against the rule (empty: it keeps it)."""
    header, body = split_header(script)
    found = []
    exception = EXCEPTION in header
    singles = {int(n) for n in re.findall(r"KEYS\[(\d+)\]\s*=", header)}
    ranges = [int(n) for n in re.findall(r"KEYS\[(\d+)\.\.\w+\]\s*=", header)]
    for index in re.findall(r"KEYS\[([^\]]+)\]", body):
        if index.isdigit():
            if int(index) not in singles and not any(start <= int(index) for start in ranges):
                found.append(f"KEYS[{index}] is not documented in the header")
        elif not ranges:
            found.append(f"KEYS[{index}]: a variable slot, but the header documents no KEYS[a..n] range")
    if re.search(r"ipairs\(KEYS\)|#KEYS|unpack\(KEYS", body) and not ranges:
        found.append("all of KEYS is used, but the header documents no KEYS[a..n] range")
    bound = bindings(body)
    for match in re.finditer(r"redis\.p?call\(", body):
        args = split_top(balanced(body, match.end())[0])
        call = f"redis.call({', '.join(args)})"
        if args[0].startswith("unpack("):  # a command passed in ARGV: its keys must be given as KEYS indexes
            if not re.search(r"\w+\[\w+\]\s*=\s*KEYS\[", body):
                found.append(f"{call}: runs commands whose keys are not mapped from KEYS")
            continue
        name = args[0].strip("'\"").upper()
        positions = [] if name in NO_KEYS else [1, 2] if name in TWO_KEYS else [1]
        positions = list(range(1, len(args))) if name in ALL_KEYS else positions
        for position in positions:
            if position < len(args) and not is_key(args[position], bound, exception):
                found.append(f"{call}: key argument {args[position]!r} is not a KEYS reference")
    if "KEYS" not in header:
        found.append("no KEYS documented in a header at the script's top")
    return found


def test_the_package_has_the_scripts_this_test_knows_of():
    assert set(lua_scripts()) >= {
        "latentq.state.admission._ADMIT", "latentq.state.fence._APPLY", "latentq.state.fence._RENEW",
        "latentq.worker.reliable_queue._POP_MANY", "latentq.worker.reliable_queue._REQUEUE_ORPHANS",
        "latentq.webhooks.outbox._TAKE",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(lua_scripts()))
def test_every_script_passes_its_keys_as_documented_KEYS(name):
    assert problems(lua_scripts()[name]) == []


def test_exceptions_are_few_and_each_says_why():
    excepted = sorted(name for name, script in lua_scripts().items() if EXCEPTION in split_header(script)[0])
    assert excepted == ["latentq.state.admission._ADMIT", "latentq.worker.reliable_queue._POP_MANY",
                        "latentq.worker.reliable_queue._REQUEUE_ORPHANS"]  # fmt: skip
    for name in excepted:
        header = split_header(lua_scripts()[name])[0]
        assert re.search(r"ARGV\[\d+\] \.\. id", header.split(EXCEPTION, 1)[1]), name  # which keys, from which prefix


# The admission script as it was (abridged): no KEYS, key names passed in ARGV or built from a prefix.
OLD_ADMIT = """
local A = ARGV
local idem, idem_ttl, idem_value = A[1], A[2], A[3]
local normal, high, cap, n = A[4], A[5], tonumber(A[6]), tonumber(A[7])
local tenant, tqueued, tcap, job_prefix = A[8], A[9], tonumber(A[10]), A[11]
if idem ~= '' then
  local first = redis.call('GET', idem)
  if first then return {'idem', first} end
end
local waiting = redis.call('LLEN', normal) + redis.call('LLEN', high)
for _, id in ipairs(redis.call('ZRANGE', tqueued, 0, 255)) do
  if redis.call('HGET', job_prefix .. id, 'status') ~= 'queued' then redis.call('ZREM', tqueued, id) end
end
while pos <= #A do
  local argc = tonumber(A[pos])
  local command = {}
  for k = 1, argc do command[k] = A[pos + k] end
  pos = pos + argc + 1
  redis.call(unpack(command))
end
redis.call('SET', 'latentq:literal', 1)
redis.call('DEL', KEYS[1], 'latentq:second')
"""


def test_the_check_catches_keys_passed_any_other_way():
    found = problems(OLD_ADMIT)
    for key in ("'idem'", "'normal'", "'high'", "'tqueued'", "'job_prefix .. id'", "\"'latentq:literal'\"",
                "\"'latentq:second'\""):
        assert any(f"key argument {key}" in problem for problem in found), (key, found)
    assert any("not mapped from KEYS" in problem for problem in found)
    assert any("no KEYS documented" in problem for problem in found)
    undocumented = "-- KEYS[1] = a list\nredis.call('LLEN', KEYS[1])\nredis.call('LLEN', KEYS[2])\n"
    assert problems(undocumented) == ["KEYS[2] is not documented in the header"]


# --- the encoding of commands run by a script -----------------------------------------------------------
def decode(keys_: list, argv: list) -> list[list]:
    """What the scripts' command loop rebuilds from ``ScriptKeys.commands``' encoding."""
    argv = list(argv)
    commands = []
    for _ in range(argv.pop(0)):
        argc, keyc, name = argv.pop(0), argv.pop(0), argv.pop(0)
        command = [name] + [keys_[argv.pop(0) - 1] for _ in range(keyc)]
        command += [argv.pop(0) for _ in range(argc - 1 - keyc)]
        commands.append(command)
    assert argv == []
    return commands


def test_script_keys_pass_each_key_once_as_KEYS_and_the_script_rebuilds_the_commands():
    commands = [
        ("HSET", "rq:job:1", "status", "queued"), ("DEL", "latentq:latent:1", "latentq:lease:1"),
        ("PUBLISH", "latentq:done:1", "canceled"), ("LMOVE", "rq:queue:a", "rq:queue:b", "LEFT", "RIGHT"),
        ("EXPIRE", "rq:job:1", 60), ("SET", "latentq:latent:2", b"\x00bytes", "EX", 10),
    ]  # fmt: skip
    slots = ScriptKeys("rq:queue:a", "rq:queue:a")  # fixed slots keep their places, repeats included
    argv = slots.commands(commands)
    assert slots.keys == ["rq:queue:a", "rq:queue:a", "rq:job:1", "latentq:latent:1", "latentq:lease:1",
                          "rq:queue:b", "latentq:latent:2"]  # fmt: skip
    assert not set(slots.keys[2:]) & set(argv)  # no key travels in ARGV
    assert "latentq:done:1" in argv  # a channel is no key
    assert decode(slots.keys, argv) == [list(command) for command in commands]
    with pytest.raises(ValueError, match="ZUNIONSTORE"):
        slots.command(("ZUNIONSTORE", "dest", 2, "a", "b"))


# --- the running check --------------------------------------------------------------------------------------
LOG = "lua-keys-test:calls"


def logged(script: str) -> str:
    """The script with a prelude that logs its KEYS, its exception prefixes and every ``redis.call``."""
    header = split_header(script)[0]
    prefixes = re.findall(r"ARGV\[(\d+)\] \.\. id", header.split(EXCEPTION, 1)[1]) if EXCEPTION in header else []
    prefix_args = "".join(f", ARGV[{n}]" for n in prefixes)
    prelude = f"""
local real = redis
real.call('RPUSH', '{LOG}', 'run', #KEYS, unpack(KEYS))
real.call('RPUSH', '{LOG}', 'prefixes', {len(prefixes)}{prefix_args})
local redis = {{call = function(...)
  real.call('RPUSH', '{LOG}', 'call', select('#', ...), ...)
  return real.call(...)
end}}
"""
    return prelude + script


def undeclared_keys(connection) -> list[tuple[str, list[str]]]:
    """Each logged call's keys (as Redis finds them) that are neither among its run's KEYS nor excepted."""
    log = connection.lrange(LOG, 0, -1)
    found, declared, prefixes, i = [], set(), [], 0
    while i < len(log):
        tag, count = log[i], int(log[i + 1])
        values = log[i + 2: i + 2 + count]
        i += 2 + count
        if tag == b"run":
            declared = set(values)
        elif tag == b"prefixes":
            prefixes = values
        else:
            try:
                touched = connection.command_getkeys(*values)
            except ResponseError:  # a command with no key (TIME, PUBLISH)
                touched = []
            for key in touched:
                key = key.encode() if isinstance(key, str) else key
                if key not in declared and not any(key.startswith(prefix) for prefix in prefixes):
                    found.append((values[0].decode(), [v.decode(errors="replace") for v in values[1:4]]))
    assert log, "no script ran"
    return found


@pytest.fixture
def logging_scripts(monkeypatch):
    for module, name in ((admission, "_ADMIT"), (fence, "_APPLY"), (fence, "_RENEW"), (outbox, "_TAKE"),
                         (reliable_queue, "_POP_MANY"), (reliable_queue, "_REQUEUE_ORPHANS")):  # fmt: skip
        monkeypatch.setattr(module, name, logged(getattr(module, name)))


class Worker(rq.Worker):
    """RQ's worker with the stats key latentq's ends write to: the worker ``rqstate`` and ``end_jobs`` are given."""

    @property
    def stats_key(self) -> str:
        return keys.worker_stats_key(self.name)


def test_every_key_the_scripts_touch_is_among_their_KEYS_or_a_documented_exception(env, redis_conn, logging_scripts):
    # admission: a capped and rate-limited tenant, an idempotent submit and its replay, a refusal at the cap
    TenantDirectory(redis_conn).create_key("capped", max_queued=2, rate=100)
    capped = Client(tenant="capped")
    first = capped.submit(torch.randn(32, 2, 2), model="taef2", idempotency_key="k")
    assert capped.submit(torch.randn(32, 2, 2), model="taef2", idempotency_key="k").id == first.id
    capped.submit(torch.randn(32, 2, 2), model="taef2")
    with pytest.raises(QueueFull):  # the prune at the cap reads its jobs' records
        capped.submit(torch.randn(32, 2, 2), model="taef2")
    client = Client()
    jobs = client.submit_many(torch.randn(4, 32, 2, 2), model="taef2")
    client.submit(torch.randn(32, 2, 2), model="taef2", priority="high")
    first.cancel()  # a fenced end of a queued job

    # a worker's pops (by Lua, with their leases; one by LMOVE, its lease claimed), its fenced start (as the
    # decode worker's intake writes it), lease renewal, its ends: finished, failed, retry
    queues = [ReliableQueue(name, connection=redis_conn, serializer=JSONSerializer)
              for name in (keys.high_priority_queue_name("taef2"), keys.queue_name("taef2"))]  # fmt: skip
    worker = Worker(queues, connection=redis_conn, name="keys", serializer=JSONSerializer)
    worker.register_birth()
    job, _ = ReliableQueue.dequeue_any(queues, None, connection=redis_conn, serializer=JSONSerializer)
    popped = [(RQJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer), queues[0], job.lease_token)]
    more = ReliableQueue.pop_many(queues, 2, redis_conn, serializer=JSONSerializer)
    popped += [(j, q, j.lease_token) for j, q in more]
    claimed = redis_conn.lmove(queues[1].key, queues[1].intermediate_queue_key).decode()
    popped.append((RQJob.fetch(claimed, connection=redis_conn, serializer=JSONSerializer), queues[1], "claimer"))
    busy = capture(redis_conn)
    rqstate.worker_busy_writes(worker, busy)
    items, executions = [Fenced("", "", "none", writes=captured(busy))], {}
    for j, q, token in popped:
        pipe = capture(redis_conn)
        executions[j.id] = rqstate.start_writes(worker, j, q, 600, pipe)
        items.append(Fenced(j.id, j.key, "claim" if token == "claimer" else "start", token, captured(pipe),
                            [("HGETALL", j.key), ("GET", keys.latent_key(j.id))], ttl_ms=10_000))  # fmt: skip
    results, depths = apply(redis_conn, items, [("LLEN", q.key) for q in queues])
    assert [code for code, _ in results] == [APPLIED] * 5 and len(depths) == 2
    assert all(renew_leases(redis_conn, {j.id: token for j, _, token in popped}, 10_000).values())
    ends = (("finished", {"result": {"results": []}}), ("failed", {"reason": "test"}), ("retry", {"reason": "test"}))
    endings = [Ending(j, status, q, executions[j.id], token, **options)
               for (j, q, token), (status, options) in zip(popped, ends)]  # fmt: skip
    assert end_jobs(redis_conn, endings, worker=worker) == [True, True, True]

    # recovery: a popped id without a lease, put back on the second look
    waiting = redis_conn.lpop(queues[1].key)  # the retried job, at least
    assert waiting is not None
    redis_conn.rpush(queues[1].intermediate_queue_key, waiting)
    assert ReliableQueue.requeue_orphans(queues[1], redis_conn) == 1

    # the webhook outbox: a due entry taken
    with redis_conn.pipeline() as pipe:
        state_outbox.add(pipe, jobs[3].id, "taef2", "canceled", "https://example.invalid/hook", {"id": jobs[3].id})
        pipe.execute()
    entry_id = redis_conn.xrange(keys.WEBHOOK_OUTBOX)[0][0]
    redis_conn.zadd(keys.WEBHOOK_DUE, {entry_id: 0})
    drainer = outbox.Drainer(redis_conn)
    try:
        assert len(drainer._take(5)) == 1
    finally:
        drainer._pool.shutdown()

    assert undeclared_keys(redis_conn) == []
