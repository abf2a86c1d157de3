"""A worker process rides out Redis: started before it, through a crash and restart; SIGTERM stops it idle."""

from __future__ import annotations

import signal
import time

import pytest
import torch
from redis import Redis
from rq import Worker

from latentq import Client
from latentq.config import Settings
from latentq.local.redis_server import EmbeddedRedis

pytestmark = pytest.mark.timeout(150)


def test_an_idle_worker_stops_on_sigterm(procs):
    worker = procs.worker()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0


def test_a_worker_started_before_redis_waits_then_serves_through_a_redis_crash(procs, tmp_path):
    redis = EmbeddedRedis(appendonly=True, appendfsync="always")  # not started yet: its port is free
    env = {"LATENTQ_REDIS_URL": redis.url}
    try:
        worker = procs.worker(wait=False, env=env)
        redis.start()
        with Redis.from_url(redis.url) as connection:
            while not Worker.all(connection=connection):
                assert worker.poll() is None, open(worker.log_path).read()[-3000:]
                time.sleep(0.1)
        client = Client(settings=Settings.from_env(redis_url=redis.url))
        (before,) = client.submit(torch.randn(32, 4, 4), model="taef2").wait(60)

        redis.kill()  # a crash: the worker's connections break mid-poll
        redis.start()  # same port, same AOF directory
        after = client.submit(torch.randn(32, 4, 4), model="taef2")
        assert after.wait(90)[0].width == before.width
        assert worker.poll() is None  # the same process served it: nothing was restarted
        client.close()
    finally:
        redis.stop()
