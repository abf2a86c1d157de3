"""Fixtures that start real processes: a Redis server, decode workers, the API under uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from latentq.local.redis_server import EmbeddedRedis, free_port
from latentq.local.stack import stop_processes, wait_for_workers, worker_command
from latentq.state.connection import redis_from_url

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
        # Where `latentq up` leaves its state file: this test's own, never a real one's (latentq.config).
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
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

    def spawn(self, *args: str, env: dict[str, str] | None = None, name: str = "proc",
              command: list[str] | None = None) -> subprocess.Popen:  # fmt: skip
        """``python -m latentq *args`` (or ``command``), its output in a log file of the test's directory."""
        log = open(self.tmp_path / f"{name}-{len(self.started)}.log", "wb")
        process = subprocess.Popen(command or [sys.executable, "-m", "latentq", *args], env={**self.env, **(env or {})},
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        process.log_path = log.name  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def worker(self, *models: str, max_batch: int = 8, max_wait_ms: float = 5, name: str | None = None,
               extra: tuple[str, ...] = (), wait: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
        """A decode worker, started as ``latentq up`` starts them (``latentq.local.stack.worker_command``)."""
        models = models or ("taef2",)
        command = worker_command(models, max_batch=max_batch, max_wait_ms=max_wait_ms, name=name, log_level="INFO",
                                 extra=extra)  # fmt: skip
        process = self.spawn(command=command, env=env, name="worker")
        process.models = models  # type: ignore[attr-defined]
        if wait:
            self.wait_for_worker(process, name)
        return process

    def wait_for_worker(self, process: subprocess.Popen, name: str | None = None, timeout: float = 90) -> None:
        """Until the worker (named ``name``, or any serving its first model) is registered; fails if it exits."""
        model = getattr(process, "models", ("taef2",))[0]

        def exited() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited: {Path(process.log_path).read_text()[-3000:]}")

        connection = redis_from_url(self.env["LATENTQ_REDIS_URL"])
        try:
            wait_for_workers(connection, model, 1, timeout, exited, name=name)
        finally:
            connection.close()

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
        stop_processes(self.started, 20)


@pytest.fixture
def procs(env, tmp_path):
    processes = Processes(env, tmp_path)
    yield processes
    processes.stop_all()


# ---------------------------------------------------------------- S3 wire servers (shared by the S3 tests)
# moto speaks S3 well enough for round trips, prefixes and lifecycle rules, but it checks neither
# presigned signatures nor their expiry. For those, s3rver (Node, from npm, installed once into
# ~/.cache/latentq-test/s3rver) is used: the @20minutes fork, because s3rver 3.x accepts any SigV4
# signature ("Signature version 4 calculation is unimplemented" in its authentication middleware).

import fcntl
import importlib.util
import shutil
import uuid

MOTO_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
S3RVER_CREDENTIALS = {"access_key_id": "S3RVER", "secret_access_key": "S3RVER"}  # s3rver's built-in account
S3RVER_PACKAGE = "@20minutes/s3rver@4"  # 5.x needs Node >= 24
S3RVER_MODULE = Path("node_modules/@20minutes/s3rver")
S3RVER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentq-test" / "s3rver"
# s3rver 4 ships no CLI script: start it through its JS API and print the port it bound.
S3RVER_LAUNCHER = (
    "const S3rver = require(process.argv[1]);"
    "new S3rver({address: '127.0.0.1', port: 0, directory: process.argv[2], silent: true})"
    ".run().then(a => console.log('listening ' + a.port), e => { console.error(e); process.exit(1); });"
)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """Until the server answers anything over HTTP (any status will do)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    stop_server(process)
    raise RuntimeError(f"server at {url} did not answer in {timeout} s:\n{log.read_text(errors='replace')}")


@pytest.fixture
def isolated_aws_env(monkeypatch, tmp_path):
    """No AWS or LATENTQ_S3 settings of the machine leak into a test (or the processes it starts)."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "LATENTQ_S3_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """moto's standalone S3 server in its own process on a free port; yields its endpoint URL."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto[server] is not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint, process, log)
        yield endpoint
    finally:
        stop_server(process)


def install_s3rver() -> Path:
    """The s3rver module directory, installed with npm into the cache once; skips if that cannot be done."""
    module = S3RVER_CACHE / S3RVER_MODULE
    if (module / "package.json").is_file():
        return module
    if not shutil.which("npm") or not shutil.which("node"):
        pytest.skip("node/npm not found: cannot install s3rver")
    S3RVER_CACHE.mkdir(parents=True, exist_ok=True)
    with open(S3RVER_CACHE.parent / "s3rver.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions install once
        if (module / "package.json").is_file():
            return module
        try:
            subprocess.run(["npm", "view", S3RVER_PACKAGE, "version"], check=True, capture_output=True, timeout=60)
            subprocess.run(
                ["npm", "install", "--prefix", str(S3RVER_CACHE), "--no-audit", "--no-fund", S3RVER_PACKAGE],
                check=True, capture_output=True, timeout=240,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"cannot install {S3RVER_PACKAGE} with npm: {exc}: {output.decode(errors='replace')[-500:]}")
    return module


@pytest.fixture(scope="session")
def s3rver_endpoint(tmp_path_factory):
    """s3rver (checks SigV4 signatures and expiry) in a node process on a free port; yields its endpoint."""
    module = install_s3rver()
    workdir = tmp_path_factory.mktemp("s3rver")
    log = workdir / "s3rver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["node", "-e", S3RVER_LAUNCHER, str(module), str(workdir / "data")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (lines := [line for line in log.read_text().splitlines() if line.startswith("listening ")]):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"s3rver did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{int(lines[0].split()[1])}"
        wait_for_http(endpoint, process, log)
        yield endpoint
    finally:
        stop_server(process)


def use_s3_store(env: dict[str, str], monkeypatch, endpoint: str, credentials: dict[str, str],
                 prefix: str = "results") -> dict[str, str]:  # fmt: skip
    """Point this test's processes (started afterwards) and this process at a fresh bucket; returns the settings.

    Only the variables set here reach them: nothing of this machine's AWS setup leaks in.
    """
    from latentq.store.s3 import S3Store

    bucket = f"latentq-{uuid.uuid4().hex[:16]}"
    values = {
        "LATENTQ_STORE": f"s3://{bucket}/{prefix}",
        "LATENTQ_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": credentials["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": credentials["secret_access_key"],
    }
    for name in [n for n in env if n.startswith(("AWS_", "LATENTQ_S3_"))]:
        env.pop(name)
    for name in [n for n in os.environ if n.startswith(("AWS_", "LATENTQ_S3_"))]:
        monkeypatch.delenv(name)
    isolation = {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                 "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    for name, value in {**values, **isolation}.items():
        env[name] = value
        monkeypatch.setenv(name, value)
    S3Store.from_url(values["LATENTQ_STORE"]).ensure_bucket()
    return {**values, "bucket": bucket, "prefix": prefix, "endpoint": endpoint}


@pytest.fixture(params=["local", "s3"])
def store_env(request, env, monkeypatch) -> dict[str, str]:
    """Run the test once with the local directory store and once with S3 (moto's server)."""
    if request.param == "local":
        return {"kind": "local", "LATENTQ_STORE": env["LATENTQ_STORE"]}
    pytest.importorskip("boto3")
    endpoint = request.getfixturevalue("moto_endpoint")
    return {"kind": "s3", **use_s3_store(env, monkeypatch, endpoint, MOTO_CREDENTIALS, "results/param")}


# ---------------------------------------------------------------- test tiers
# unit: starts no process (no Redis, no server, no subprocess) and finishes in seconds: `pytest -m unit`.
# integration: everything else (real Redis, uvicorn, workers, S3 servers, browsers, the CLI).
PROCESS_FIXTURES = frozenset({"redis_server", "redis_url", "redis_conn", "env", "procs", "moto_endpoint",
                              "s3rver_endpoint", "store_env"})  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("bench") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is None and not PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.unit)
        elif item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_processes(request, monkeypatch):
    """A test classified unit that starts a process fails, so the tier stays fast and honest."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError("a unit test started a process: mark it @pytest.mark.integration")

    monkeypatch.setattr(subprocess, "Popen", refuse)
