"""A worker's stop is bounded by latentq, whatever redis-py does (issue: redis-py 8.2 stretched it to 60 s).

Real worker processes on a real Redis: SIGTERM on an idle worker, SIGTERM mid-batch (timed from the batch's
last job ending), and a ``--burst`` run (timed from its last job ending). The target is 2 s
(``bench/stop_times.py`` measures it over 20 tries); the bound asserted here is ``STOP_BOUND_S``, wide enough
for a loaded CI machine and far below the 60 s a library poll can add. The in-process command channel is
tested too: RQ's ``send_shutdown_command`` still reaches the worker, and its listener stops in one poll.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest
import torch
from helpers import wait_until
from redis import Redis

from latentq import Client, JobStatus
from latentq.local.stack import worker_command

pytestmark = [pytest.mark.timeout(120), pytest.mark.dependency_ends]

STOP_BOUND_S = 10.0


def faults(**values: object) -> dict[str, str]:
    import json

    return {"LATENTQ_FAULTS": json.dumps(values)}


def exit_time(process: subprocess.Popen, timeout: float = 60) -> float:
    """The wall-clock time the process was seen to exit (polled every 10 ms); fails past ``timeout``."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker is still running {timeout:.0f} s later")
        time.sleep(0.01)
    return time.time()


def last_ended_at(redis_conn: Redis, job_ids: list[str]) -> float:
    ends = []
    for job_id in job_ids:
        raw = redis_conn.hget(f"rq:job:{job_id}", "ended_at")
        assert raw, f"job {job_id} has no ended_at"
        ends.append(datetime.strptime(raw.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp())
    return max(ends)


def test_an_idle_worker_exits_promptly_on_sigterm(procs):
    worker = procs.worker("taef2")
    time.sleep(0.5)  # idle in its blocking pop
    signalled = time.time()
    worker.send_signal(signal.SIGTERM)
    took = exit_time(worker) - signalled
    assert worker.returncode == 0
    assert took < STOP_BOUND_S, f"idle worker took {took:.1f} s to exit"


def test_a_busy_worker_exits_promptly_once_its_batch_ends(procs, redis_conn):
    worker = procs.worker("taef2", max_wait_ms=200, env=faults(decode_delay_s=2))
    jobs = Client().submit_many(torch.randn(4, 32, 4, 4), model="taef2")
    wait_until(lambda: jobs[0].status() is JobStatus.STARTED, 30)
    worker.send_signal(signal.SIGTERM)
    exited = exit_time(worker)
    assert worker.returncode == 0
    assert [job.status() for job in jobs] == [JobStatus.FINISHED] * 4  # the batch was finished, not abandoned
    took = exited - last_ended_at(redis_conn, [job.id for job in jobs])
    assert took < STOP_BOUND_S, f"the worker took {took:.1f} s to exit after its batch ended"


def test_a_burst_run_returns_promptly_after_its_last_job(procs, redis_conn):
    jobs = Client().submit_many(torch.randn(3, 32, 4, 4), model="taef2")
    worker = procs.spawn(command=worker_command(["taef2"], log_level="INFO", extra=("--burst",)), name="burst")
    exited = exit_time(worker, timeout=90)
    assert worker.returncode == 0
    assert [job.status() for job in jobs] == [JobStatus.FINISHED] * 3
    took = exited - last_ended_at(redis_conn, [job.id for job in jobs])
    assert took < STOP_BOUND_S, f"the burst run took {took:.1f} s to return after its last job"


def test_rqs_shutdown_command_reaches_the_worker(procs):
    from rq.command import send_shutdown_command

    worker = procs.worker("taef2", name="commanded")
    connection = Redis.from_url(procs.env["LATENTQ_REDIS_URL"])
    try:  # the listener subscribes just after registration: send until the command lands
        wait_until(lambda: connection.pubsub_numsub("rq:pubsub:commanded")[0][1] == 1, 30)
        send_shutdown_command(connection, "commanded")
    finally:
        connection.close()
    exit_time(worker)
    assert worker.returncode == 0


def test_the_command_listener_holds_commands_until_accepted_survives_a_bad_one_and_stops_in_bound(redis_conn):
    from latentq.worker.commands import CommandChannel

    seen: list[bytes] = []

    def handle(message: dict) -> None:
        if message["data"] == b"bad":
            raise ValueError("not a command")
        seen.append(message["data"])

    channel = CommandChannel(redis_conn, "latentq-test:commands", handle)
    channel.start()
    try:
        assert channel.subscribed.wait(10)
        redis_conn.publish("latentq-test:commands", "bad")
        redis_conn.publish("latentq-test:commands", "early")
        time.sleep(0.5)  # (a few polls: nothing is handled before accept, whatever the wait)
        assert seen == []
        channel.accept()
        redis_conn.publish("latentq-test:commands", "good")
        wait_until(lambda: seen == [b"early", b"good"], 10)
    finally:
        stopped = channel.stop()  # True only if the thread ended within STOP_WAIT_S
    assert stopped and not channel.running


def test_an_in_process_burst_run_returns_promptly(env, redis_conn, tmp_path):
    """``DecodeWorker.work(burst=True)`` in this process: the case redis-py 8.2 stretched to 60 s every time."""
    from latentq.config import Settings
    from latentq.models.loader import load_model
    from latentq.models.registry import load_registry
    from latentq.store import LocalStore
    from latentq.worker import DecodeWorker

    model = load_model(load_registry(Settings.from_env().models_file).get("taef2"))
    for attempt in range(12):  # the stretched stop was a race in RQ's listener (1 run in 5 here): 12 chances to show
        job = Client().submit(torch.randn(32, 4, 4), model="taef2")
        worker = DecodeWorker({"taef2": model}, redis_conn, LocalStore(tmp_path / "store"), name=f"burst-{attempt}")
        worker.work(burst=True)
        returned = time.time()
        assert worker.pubsub_thread is None  # RQ's own listener never ran: the command channel is latentq's
        assert job.status() is JobStatus.FINISHED
        took = returned - last_ended_at(redis_conn, [job.id])
        assert took < STOP_BOUND_S, f"work(burst=True) returned {took:.1f} s after its last job"


def test_ctrl_c_on_a_worker_per_device_finishes_every_childs_batch(procs, redis_conn):
    """``--device cuda:all``'s supervisor (here over two CPU devices): a terminal's Ctrl-C (SIGINT to the
    foreground process group) reaches each child once, forwarded, so each warm-stops and finishes its batch.
    Children sharing the group got it twice, which RQ reads as a cold shutdown that abandons the batch."""
    import os
    import sys

    from rq import Worker

    from latentq.local.stack import wait_for_workers

    argv = worker_command(["taef2"], max_batch=2, max_wait_ms=200, log_level="INFO")[3:]  # after `python -m latentq`
    script = ("import argparse, sys; from latentq.cli.worker import _worker_per_device; "
              "sys.exit(_worker_per_device(argparse.Namespace(argv=sys.argv[1:], name=None), ['cpu', 'cpu']))")
    log = open(procs.tmp_path / "per-device.log", "wb")
    supervisor = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=log, stderr=subprocess.STDOUT,
                                  env={**procs.env, **faults(decode_delay_s=2)}, start_new_session=True)  # fmt: skip
    procs.started.append(supervisor)
    wait_for_workers(redis_conn, "taef2", 2, 90)
    children = [worker.pid for worker in Worker.all(connection=redis_conn)]
    assert len(children) == 2 and all(os.getpgid(pid) != os.getpgid(supervisor.pid) for pid in children)
    jobs = Client().submit_many(torch.randn(6, 32, 4, 4), model="taef2")
    wait_until(lambda: sum(job.status() is JobStatus.STARTED for job in jobs) >= 2, 30)
    os.killpg(supervisor.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    exit_time(supervisor, timeout=90)
    assert supervisor.returncode == 0, (procs.tmp_path / "per-device.log").read_text()[-3000:]
    statuses = [job.status() for job in jobs]
    assert JobStatus.STARTED not in statuses, statuses  # no batch abandoned mid-way
    assert statuses.count(JobStatus.FINISHED) >= 2
