"""Load on the HTTP API: health under many long-polls, and submit + status traffic.

    python bench/api_load.py [--polls 500] [--clients 32] [--seconds 10] [--no-worker]

Starts a private redis-server and `python -m latentq api` (uvicorn, its own
process) on free ports of 127.0.0.1, then, from this process (httpx, asyncio):

(a) ``--polls`` long-polls (``GET /v1/jobs/{id}?wait=...`` on jobs that stay
    queued: no worker yet) are sent and held; once the API reports them all
    waiting, ``--clients`` clients call ``GET /healthz`` back to back for
    ``--seconds``. The jobs are then canceled, which ends every long-poll.
(b) one CPU decode worker (`python -m latentq worker`, unless ``--no-worker``)
    is started, and ``--clients`` clients each submit a small latent
    (``POST /v1/jobs``) and read its status (``GET /v1/jobs/{id}``), back to back,
    for ``--seconds``.

Prints one markdown row per request kind: requests, requests/s, p50/p99 latency
and the count of 5xx answers (the long-polls' own answers included in (a)).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, percentile, stop_processes, taef2_models, write_models_file

from latentq.core.wire import latent_to_bytes
from latentq.local.redis_server import EmbeddedRedis, free_port

__all__ = ["main"]


class Tally:
    """Latencies and status codes of one kind of request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.codes: Counter[int] = Counter()
        self.elapsed = 0.0

    def row(self) -> list[str]:
        n = len(self.latencies)
        ms = [s * 1000 for s in self.latencies]
        rate = f"{n / self.elapsed:.0f}" if self.elapsed else "-"
        server_errors = sum(c for code, c in self.codes.items() if code >= 500)
        other = sum(c for code, c in self.codes.items() if code < 200 or 300 <= code < 500)
        return [self.name, str(n), rate, f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}",
                str(server_errors), str(other)]  # fmt: skip


async def timed(http: httpx.AsyncClient, tally: Tally, method: str, url: str, **kwargs) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.HTTPError:
        tally.codes[599] += 1  # no answer: counted with the 5xx
        return None
    tally.latencies.append(time.perf_counter() - started)
    tally.codes[response.status_code] += 1
    return response


async def health_under_long_polls(api: str, polls: int, clients: int, seconds: float) -> list[Tally]:
    latent = latent_to_bytes(torch.randn(32, 2, 2))
    health, long_polls = Tally(f"GET /healthz under {polls} long-polls"), Tally(f"GET /v1/jobs/{{id}}?wait (x{polls})")
    # Two httpx clients: a pool of 500 busy connections would slow the health callers' own requests.
    polling = httpx.AsyncClient(base_url=api, limits=httpx.Limits(max_connections=polls + 10), timeout=seconds + 120)
    calling = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with polling, httpx.AsyncClient(base_url=api, limits=calling, timeout=60) as http:
        ids = [(await http.post("/v1/jobs", params={"model": "taef2"}, content=latent)).json()["id"] for _ in range(20)]
        held = [asyncio.create_task(timed(polling, long_polls, "GET", f"/v1/jobs/{ids[i % len(ids)]}",
                                          params={"wait": seconds + 60})) for i in range(polls)]  # fmt: skip
        deadline = time.monotonic() + 120
        while (await http.get("/healthz")).json().get("waiting", 0) < polls:
            if time.monotonic() > deadline:
                raise SystemExit("the long-polls did not all arrive at the API")
            await asyncio.sleep(0.1)

        async def caller(until: float) -> None:
            while time.monotonic() < until:
                await timed(http, health, "GET", "/healthz")

        started = time.monotonic()
        await asyncio.gather(*[caller(started + seconds) for _ in range(clients)])
        health.elapsed = time.monotonic() - started
        for job_id in ids:  # their done messages end every long-poll at once
            await http.delete(f"/v1/jobs/{job_id}")
        await asyncio.gather(*held)
    return [health, long_polls]


async def submit_and_status(api: str, clients: int, seconds: float) -> list[Tally]:
    latent = latent_to_bytes(torch.randn(32, 4, 4))
    submits, statuses = Tally("POST /v1/jobs"), Tally("GET /v1/jobs/{id}")
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=api, limits=limits, timeout=60) as http:

        async def caller(until: float) -> None:
            while time.monotonic() < until:
                response = await timed(http, submits, "POST", "/v1/jobs", params={"model": "taef2"}, content=latent)
                if response is not None and response.status_code == 202:
                    await timed(http, statuses, "GET", f"/v1/jobs/{response.json()['id']}")

        started = time.monotonic()
        await asyncio.gather(*[caller(started + seconds) for _ in range(clients)])
        submits.elapsed = statuses.elapsed = time.monotonic() - started
    return [submits, statuses]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "latentq", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(api: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-worker", action="store_true", help="(b) without a worker: the queue only grows")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * (args.polls + args.clients) + 256  # both ends of each socket, here and in the API
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )

    processes: list[subprocess.Popen] = []
    with EmbeddedRedis() as redis, tempfile.TemporaryDirectory(prefix="latentq-api-load-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "LATENTQ_REDIS_URL": redis.url, "LATENTQ_STORE": str(work / "results"),
               "LATENTQ_MODELS": str(write_models_file(work / "models.toml", taef2_models()))}  # fmt: skip
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        try:
            processes.append(spawn(["--log-level", "WARNING", "api", "--port", str(port)], env, work / "api.log"))
            wait_healthy(api, processes[0], work / "api.log")
            tallies = asyncio.run(health_under_long_polls(api, args.polls, args.clients, args.seconds))
            if not args.no_worker:
                processes.append(
                    spawn(["--log-level", "WARNING", "worker", "--model", "taef2"], env, work / "worker.log")
                )
            tallies += asyncio.run(submit_and_status(api, args.clients, args.seconds))
        finally:
            stop_processes(processes)
    print(f"{args.clients} clients, {args.seconds:g} s per scenario, API and Redis on 127.0.0.1, {os.cpu_count()} CPUs"
          f"{'' if args.no_worker else ', one CPU worker in (b)'}")  # fmt: skip
    print(markdown_table(["requests", "n", "req/s", "p50 ms", "p99 ms", "5xx", "other non-2xx"],
                         [t.row() for t in tallies]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
