"""Fixtures that start real processes: a Redis server, decode workers, the API under uvicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from latentq.redis_server import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TAEF2_DIR = SHARED / "models" / "taef2"
IMAGES_DIR = SHARED / "images"


@pytest.fixture(scope="session")
def redis_server():
    """One real Redis server per test session, on a free port (never 6379)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    connection = Redis.from_url(redis_server.url)
    connection.flushall()
    connection.close()
    return redis_server.url


@pytest.fixture
def redis_conn(redis_url):
    connection = Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def models_file(tmp_path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'[models.taef2]\nsource = "{TAEF2_DIR}"\n')
    return path


@pytest.fixture
def env(redis_url, models_file, tmp_path, monkeypatch) -> dict[str, str]:
    """The environment every process of one test shares (also applied to this process)."""
    values = {
        "LATENTQ_REDIS_URL": redis_url,
        "LATENTQ_MODELS": str(models_file),
        "LATENTQ_STORE": str(tmp_path / "results"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


class Processes:
    """Starts latentq processes and stops them (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []

    def spawn(self, *args: str, env: dict[str, str] | None = None, name: str = "proc") -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}-{len(self.started)}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "latentq", *args], env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        process.log_path = log.name  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def worker(self, *models: str, max_batch: int = 8, max_wait_ms: float = 5, name: str | None = None,
               extra: tuple[str, ...] = (), wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
        args = ["--log-level", "INFO", "worker", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
        for model in models or ("taef2",):
            args += ["--model", model]
        if name:
            args += ["--name", name]
        process = self.spawn(*args, *extra, env=env, name="worker")
        if wait:
            self.wait_for_worker(process, name)
        return process

    def wait_for_worker(self, process: subprocess.Popen, name: str | None = None, timeout: float = 90) -> None:
        from rq import Worker

        connection = Redis.from_url(self.env["LATENTQ_REDIS_URL"])
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited: {Path(process.log_path).read_text()[-3000:]}")
                workers = Worker.all(connection=connection)
                if (name and any(w.name == name for w in workers)) or (not name and workers):
                    return
                time.sleep(0.1)
        finally:
            connection.close()
        raise TimeoutError("worker did not register")

    def api(self) -> str:
        port = free_port()
        process = self.spawn("--log-level", "WARNING", "api", "--port", str(port), name="api")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"api exited: {Path(process.log_path).read_text()[-3000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("api did not start")

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def procs(env, tmp_path):
    processes = Processes(env, tmp_path)
    yield processes
    processes.stop_all()
