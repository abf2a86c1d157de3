"""How long a decode worker takes to stop: idle SIGTERM, SIGTERM mid-batch, and a --burst run's return.

    .venv/bin/python bench/stop_times.py                 # 20 tries of each, about 4 minutes on 2 cores
    .venv/bin/python bench/stop_times.py --tries 5

Real worker processes (``python -m latentq worker``, as ``latentq up`` starts them) on a private Redis,
with TAEF2's real weights. The target is 2 s for each (a stop bounded by latentq whatever redis-py does):

- idle: the worker is registered and waiting for work; SIGTERM; seconds until the process has exited.
- mid-batch: four jobs decode in one batch slowed to 2 s (``LATENTQ_FAULTS`` decode_delay_s); SIGTERM once
  they started; seconds from the last job's ``ended_at`` (its RQ record) to the exit. Every job must finish.
- burst: three jobs queued, then ``latentq worker --burst``; seconds from the last job's ``ended_at`` to the exit.

The exit is observed by polling every 10 ms. Markdown (median and maximum of each) to stdout and ``--out``,
with the redis-py and rq versions it ran against.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import DEFAULT_TAEF2, RESULTS_DIR, BenchStack, machine_summary, markdown_table

TARGET_S = 2.0


def exit_time(process, timeout: float = 90.0) -> float:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker is still running {timeout:.0f} s later")
        time.sleep(0.01)
    return time.time()


def last_ended_at(stack: BenchStack, job_ids: list[str]) -> float:
    ends = []
    for job_id in job_ids:
        raw = stack.conn.hget(f"rq:job:{job_id}", "ended_at")
        if not raw:
            raise RuntimeError(f"job {job_id} did not end")
        parsed = dt.datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        ends.append(parsed.timestamp())
    return max(ends)


def idle_stop(stack: BenchStack, attempt: int) -> float:
    worker = stack.spawn_worker(f"idle-{attempt}")
    stack.wait_for_workers(1)
    time.sleep(0.3)  # in its blocking pop
    signalled = time.time()
    worker.process.send_signal(signal.SIGTERM)
    return exit_time(worker.process) - signalled


def busy_stop(stack: BenchStack, attempt: int) -> float:
    worker = stack.spawn_worker(f"busy-{attempt}", max_wait_ms=200,
                                env={"LATENTQ_FAULTS": json.dumps({"decode_delay_s": 2})})  # fmt: skip
    stack.wait_for_workers(1)
    client = stack.client()
    jobs = client.submit_many(torch.randn(4, 32, 4, 4), model="taef2")
    deadline = time.monotonic() + 60
    while jobs[0].status().value != "started":
        if time.monotonic() > deadline:
            raise RuntimeError("the batch did not start")
        time.sleep(0.02)
    worker.process.send_signal(signal.SIGTERM)
    exited = exit_time(worker.process)
    statuses = [job.status().value for job in jobs]
    if statuses != ["finished"] * 4:
        raise RuntimeError(f"SIGTERM mid-batch left {statuses}")
    return exited - last_ended_at(stack, [job.id for job in jobs])


def burst_return(stack: BenchStack, attempt: int) -> float:
    jobs = stack.client().submit_many(torch.randn(3, 32, 4, 4), model="taef2")
    worker = stack.spawn_worker(f"burst-{attempt}", extra=("--burst",))
    exited = exit_time(worker.process)
    return exited - last_ended_at(stack, [job.id for job in jobs])


CASES = {"idle SIGTERM (to exit)": idle_stop, "mid-batch SIGTERM (batch end to exit)": busy_stop,
         "--burst (last job to exit)": burst_return}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)  # fmt: skip
    parser.add_argument("--tries", type=int, default=20, help="tries of each case (default 20)")
    parser.add_argument("--taef2", type=Path, default=DEFAULT_TAEF2, help="TAEF2 weights directory")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default bench/results/stop-times-DATE.md)")
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / f"stop-times-{dt.date.today().isoformat()}.md"

    rows = []
    with BenchStack({"taef2": {"source": str(args.taef2)}}) as stack:
        for label, case in CASES.items():
            times = []
            for attempt in range(args.tries):
                stack.new_scenario()
                times.append(case(stack, attempt))
                print(f"{label}: try {attempt + 1}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
            worst = max(times)
            rows.append([label, str(len(times)), f"{statistics.median(times):.3f}", f"{worst:.3f}",
                         "yes" if worst <= TARGET_S else "NO"])  # fmt: skip
    report = "\n".join([
        f"# Worker stop times ({dt.date.today().isoformat()})", "",
        f"`python bench/stop_times.py --tries {args.tries}`; redis-py {version('redis')}, rq {version('rq')}, "
        f"{machine_summary()}.", "",
        markdown_table(["case", "tries", "median s", "max s", f"max <= {TARGET_S:g} s"], rows), ""])  # fmt: skip
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
