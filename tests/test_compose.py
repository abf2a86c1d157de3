"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed).

The api and worker commands are parsed with the project's real CLI parser, so a
renamed or removed flag breaks this test rather than the deployment.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from latentq.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SERVICES = ("redis", "minio", "minio-init", "api", "worker", "rq-dashboard")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _service(compose: dict, name: str) -> dict:
    return compose["services"][name]


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _volumes(service: dict) -> list[tuple[str | None, str]]:
    """(source, container path) for each mount; source is None for anonymous volumes."""
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((entry.get("source"), entry["target"]))
            continue
        parts = entry.split(":")
        out.append((None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return out


def _is_named(source: str | None) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def _parse(service: dict):
    argv = _argv(service["command"])
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse reports bad flags by exiting
        pytest.fail(f"not a valid latentq invocation: {argv!r} ({exc})")


def _published(service: dict) -> set[tuple[str, str]]:
    ports = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add((str(entry.get("published")), str(entry["target"])))
        else:
            host, _, container = str(entry).rpartition(":")
            ports.add((host.rsplit(":", 1)[-1], container.split("/")[0]))
    return ports


@pytest.mark.timeout(30)
def test_services_exist(compose):
    assert set(SERVICES) <= set(compose["services"])


@pytest.mark.timeout(30)
def test_redis_persists_with_aof(compose):
    redis = _service(compose, "redis")
    assert str(redis["image"]).startswith("redis:7")
    argv = _argv(redis["command"])
    assert " ".join(argv).count("--appendonly yes") == 1
    assert "--appendfsync" in argv and argv[argv.index("--appendfsync") + 1] == "everysec"
    data = [source for source, target in _volumes(redis) if target == "/data"]
    assert data and _is_named(data[0]), "Redis /data must be on a named volume"
    assert "redis-cli" in _argv(redis["healthcheck"]["test"])
    assert "ping" in _argv(redis["healthcheck"]["test"])


@pytest.mark.timeout(30)
def test_worker_reserves_nvidia_gpu(compose):
    worker = _service(compose, "worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert worker["stop_grace_period"] == "60s"


@pytest.mark.timeout(30)
def test_api_and_worker_share_redis_and_the_bucket(compose):
    minio = _env(_service(compose, "minio"))
    stores = {}
    for name in ("api", "worker"):
        service = _service(compose, name)
        env = _env(service)
        redis_url = urlparse(env["LATENTQ_REDIS_URL"])
        assert redis_url.scheme == "redis" and redis_url.hostname == "redis"
        assert redis_url.hostname in compose["services"]
        store = urlparse(env["LATENTQ_STORE"])
        assert store.scheme == "s3" and store.netloc and store.path.strip("/"), "results go to s3://bucket/prefix"
        stores[name] = env["LATENTQ_STORE"]
        endpoint = urlparse(env["LATENTQ_S3_ENDPOINT_URL"])
        assert endpoint.hostname == "minio" and endpoint.port == 9000
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])  # fmt: skip
        # Result URLs are for clients on the host: not a compose-internal hostname.
        public = urlparse(env["LATENTQ_S3_PUBLIC_URL"])
        assert public.scheme == "http" and public.hostname not in compose["services"]
        assert public.port == 9000 and public.path.strip("/") == store.netloc  # path style: /bucket
        assert not any(source == "results" for source, _ in _volumes(service)), "no shared results volume needed"
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert stores["api"] == stores["worker"]


@pytest.mark.timeout(30)
def test_minio_serves_s3_and_its_console_from_a_named_volume(compose):
    minio = _service(compose, "minio")
    assert str(minio["image"]).startswith("minio/minio")
    argv = _argv(minio["command"])
    assert argv[:2] == ["server", "/data"]
    assert argv[argv.index("--console-address") + 1] == ":9001"
    data = [source for source, target in _volumes(minio) if target == "/data"]
    assert data and _is_named(data[0]), "MinIO /data must be on a named volume"
    assert {("9000", "9000"), ("9001", "9001")} <= _published(minio)
    assert _argv(minio["healthcheck"]["test"])[-3:] == ["mc", "ready", "local"]


@pytest.mark.timeout(30)
def test_minio_init_creates_the_bucket_and_its_expiry_rule(compose):
    init = _service(compose, "minio-init")
    assert str(init["image"]).startswith("minio/mc")
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init.get("restart") == "no", "a one-shot service"
    script = "\n".join(_argv(init["command"])) if isinstance(init["command"], list) else init["command"]
    env = _env(_service(compose, "api"))
    bucket, prefix = urlparse(env["LATENTQ_STORE"]).netloc, urlparse(env["LATENTQ_STORE"]).path.strip("/")
    assert "mc alias set local http://minio:9000" in script
    assert f"mc mb --ignore-existing local/{bucket}" in script
    # The objects live at least as long as the job records that point at them.
    days = math.ceil(int(env["LATENTQ_RESULT_TTL"]) / 86400)
    rule = re.search(r"mc ilm rule add --prefix (\S+) --expire-days (\d+) local/(\S+)", script)
    assert rule and rule.groups() == (f"{prefix}/", str(days), bucket)
    assert f"arn:aws:s3:::{bucket}/{prefix}/*" in script and '"s3:GetObject"' in script
    assert "s3:ListBucket" not in script, "anonymous listing would reveal every result key"
    assert _env(init) == {k: v for k, v in _env(_service(compose, "minio")).items() if k.startswith("MINIO_ROOT")}


@pytest.mark.timeout(30)
def test_api_publishes_port_8000(compose):
    api = _service(compose, "api")
    assert ("8000", "8000") in _published(api)
    args = _parse(api)
    assert args.command == "api" and args.host == "0.0.0.0" and args.port == 8000


@pytest.mark.timeout(30)
def test_worker_command_is_valid(compose):
    worker = _service(compose, "worker")
    args = _parse(worker)
    assert args.command == "worker"
    assert args.models == ["sd15"]
    assert args.device == "cuda"
    assert args.max_batch == 8 and args.max_wait_ms == 10.0
    flavor = str(worker["build"]["args"]["TORCH_FLAVOR"])
    assert flavor.startswith("cu"), "the worker image needs CUDA torch"


@pytest.mark.timeout(30)
def test_rq_dashboard(compose):
    dash = _service(compose, "rq-dashboard")
    assert "rq-dashboard" in dash["image"]
    assert urlparse(_env(dash)["RQ_DASHBOARD_REDIS_URL"]).hostname == "redis"
    assert ("9181", "9181") in _published(dash)


@pytest.mark.timeout(30)
def test_named_volumes_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for name, service in compose["services"].items()
        for source, _ in _volumes(service)
        if _is_named(source)
    }
    assert used, "expected named volumes"
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert {"redis-data", "minio-data", "hf-cache"} <= declared


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.mark.timeout(30)
def test_dockerfile(compose):
    assert DOCKERFILE.is_file()
    text = DOCKERFILE.read_text()
    assert "pip install" in text and " ." in text
    instructions = _instructions()
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    assert any("pip install" in run and "." in shlex.split(run) for run in runs), "the project is not installed"
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["latentq"]
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    # Every build arg compose passes is declared in the Dockerfile.
    declared = {rest.split("=", 1)[0] for keyword, rest in instructions if keyword == "ARG"}
    for name in ("api", "worker"):
        assert set(_service(compose, name)["build"].get("args") or {}) <= declared
    # The hf-cache mount is the non-root user's Hugging Face cache.
    hf = [target for source, target in _volumes(_service(compose, "worker")) if source == "hf-cache"]
    assert hf == [f"/home/{users[-1]}/.cache/huggingface"]
