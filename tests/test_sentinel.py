"""LATENTQ_REDIS_URL may name Redis Sentinel: producer and worker find the master through a real sentinel."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch
from redis import Redis

from latentq import Client
from latentq.errors import ConfigError
from latentq.local.redis_server import free_port, redis_server_binary
from latentq.state.connection import redis_from_url

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sentinel_url(redis_server, tmp_path):
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor primary 127.0.0.1 {redis_server.port} 1\n"
    )
    process = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if Redis(port=port).execute_command("SENTINEL", "get-master-addr-by-name", "primary"):
                    break
            except Exception:
                time.sleep(0.1)
        Redis.from_url(redis_server.url).flushall()
        yield f"redis+sentinel://127.0.0.1:{port}/primary/0"
    finally:
        process.terminate()
        process.wait(10)


def test_submit_and_decode_through_sentinel(procs, sentinel_url, redis_server):
    procs.env = {**procs.env, "LATENTQ_REDIS_URL": sentinel_url}
    procs.worker("taef2")
    job = Client(sentinel_url).submit(torch.randn(32, 4, 4), model="taef2")
    assert job.wait(60)[0].width == 32
    assert Redis.from_url(redis_server.url).exists(f"rq:job:{job.id}")  # it went to the monitored master


@pytest.mark.parametrize("url", ["redis+sentinel://host/primary", "redis+sentinel://h:1"])
def test_bad_sentinel_urls(url):
    with pytest.raises(ConfigError):
        redis_from_url(url)
