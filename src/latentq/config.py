"""Settings read from the environment (flags on the command line override them).

This module is the only one that reads the environment. Command-line flags do not write it either:
``set_overrides`` records them here, every reader below sees them, and ``child_environment`` hands
them to the processes latentq starts (workers under ``latentq up``).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .core.netguard import WebhookPolicy
from .core.request import Limits
from .errors import ConfigError, InvalidRequest

__all__ = [
    "DEFAULT_REDIS_URL",
    "TASK_FUNCTION",
    "Settings",
    "api_key_from_env",
    "child_environment",
    "default_up_store",
    "faults_from_env",
    "limits_from_env",
    "log_json_from_env",
    "models_file_from_env",
    "read_up_state",
    "redis_url_from_env",
    "s3_options_from_env",
    "set_overrides",
    "store_from_env",
    "up_state_path",
    "webhook_allow_from_env",
    "webhook_policy",
    "webhook_secret_from_env",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# This process's command-line flags, by the variable they stand for (see set_overrides).
_OVERRIDES: dict[str, str] = {}
OVERRIDABLE = ("LATENTQ_REDIS_URL", "LATENTQ_STORE", "LATENTQ_MODELS", "LATENTQ_PUBLIC_URL")


def _get(name: str, default: str | None = None) -> str | None:
    return _OVERRIDES.get(name) or os.environ.get(name, default)


def set_overrides(**values: object) -> None:
    """Flags that win over the environment for this process and the processes it starts:
    ``redis_url``, ``store``, ``models_file``, ``public_url`` (None: leave as is)."""
    names = {"redis_url": "LATENTQ_REDIS_URL", "store": "LATENTQ_STORE", "models_file": "LATENTQ_MODELS",
             "public_url": "LATENTQ_PUBLIC_URL"}  # fmt: skip
    for field_name, value in values.items():
        if value:
            _OVERRIDES[names[field_name]] = str(value)


def child_environment() -> dict[str, str]:
    """The environment of a process latentq starts: this one's, with its flags applied."""
    return {**os.environ, **_OVERRIDES}


def redis_url_from_env() -> str | None:
    """``--redis-url`` or ``LATENTQ_REDIS_URL``, when one is given (else None: see ``Settings.from_env``)."""
    return _get("LATENTQ_REDIS_URL") or None
# The RQ job function, by dotted path: producers never import the worker.
TASK_FUNCTION = "latentq.worker.tasks.decode_job"


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    store: str | None = None
    models_file: str | None = None
    public_url: str | None = None
    latent_ttl: int = 24 * 3600  # seconds a queued latent may wait
    result_ttl: int = 24 * 3600  # seconds a finished job's outputs and stored record are kept
    # Seconds Redis keeps a finished job's RQ record (capped at result_ttl); then the stored record answers.
    record_ttl: int = 60
    failure_ttl: int = 7 * 24 * 3600
    job_timeout: int = 600  # seconds one job may run once started
    max_queued: int = 10_000  # per model: beyond it submit raises QueueFull / the API answers 429
    max_retries: int = 2  # re-runs of a job whose worker died or whose store write kept failing
    limits: Limits = field(default_factory=Limits)
    api_keys: tuple[str, ...] = ()  # bearer tokens the API accepts; empty: no authentication
    # Hosts and CIDR networks webhooks may go to besides public addresses (see latentq.core.netguard).
    webhook_allow: tuple[str, ...] = ()
    # Webhooks (latentq.webhooks.outbox): the signing secret (whsec_<base64> or any string; None: unsigned),
    # attempts per delivery, the first retry's delay (doubling, up to an hour) and one attempt's timeout.
    webhook_secret: str | None = field(default=None, repr=False)  # never in a log line
    webhook_attempts: int = 8
    webhook_backoff: float = 1.0
    webhook_timeout: float = 10.0
    # Seconds a signed result URL of the local store stays valid (GET /v1/jobs/{id} signs fresh ones).
    result_url_ttl: int = 3600

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = {**os.environ, **_OVERRIDES}
        values: dict[str, object] = {
            # Explicit settings win; else a running `latentq up` on this machine (its state file).
            "redis_url": env.get("LATENTQ_REDIS_URL")
            or (None if overrides.get("redis_url") else (read_up_state() or {}).get("redis_url"))
            or DEFAULT_REDIS_URL,
            "store": env.get("LATENTQ_STORE") or None,
            "models_file": env.get("LATENTQ_MODELS") or None,
            "public_url": env.get("LATENTQ_PUBLIC_URL") or None,
            "limits": limits_from_env(),
            "api_keys": tuple(k.strip() for k in env.get("LATENTQ_API_KEYS", "").split(",") if k.strip()),
            "webhook_allow": webhook_allow_from_env(),
            "webhook_secret": webhook_secret_from_env(),
        }
        for name, kind in (("webhook_attempts", int), ("webhook_backoff", float), ("webhook_timeout", float)):
            if raw := env.get(f"LATENTQ_{name.upper()}"):
                values[name] = kind(raw)
        for name in ("latent_ttl", "result_ttl", "record_ttl", "failure_ttl", "job_timeout", "max_queued", "max_retries",
                     "result_url_ttl"):
            raw = env.get(f"LATENTQ_{name.upper()}")
            if raw:
                values[name] = int(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def webhook_policy(self) -> WebhookPolicy:
        return WebhookPolicy.from_entries(self.webhook_allow)

    @property
    def redis_record_ttl(self) -> int:
        """RQ's result_ttl for a job: how long Redis keeps it once finished (0: deleted at once)."""
        return max(0, min(self.record_ttl, self.result_ttl))


# --- every other reader of the environment: this module is the only one that reads it -----------------
def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be a number, got {raw!r}", field=name) from exc
    if not 0 < value < float("inf"):
        raise InvalidRequest(f"{name} must be a positive number, got {raw!r}", field=name)
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an integer, got {raw!r}", field=name) from exc


def limits_from_env() -> Limits:
    """``LATENTQ_MAX_*`` and ``LATENTQ_BODY_TIMEOUT``: the size limits (defaults: ``Limits()``)."""
    base = Limits()
    return Limits(
        max_body_bytes=_env_int("LATENTQ_MAX_BODY_BYTES", base.max_body_bytes),
        max_latent_elements=_env_int("LATENTQ_MAX_LATENT_ELEMENTS", base.max_latent_elements),
        max_output_pixels=_env_int("LATENTQ_MAX_OUTPUT_PIXELS", base.max_output_pixels),
        max_encode_pixels=_env_int("LATENTQ_MAX_ENCODE_PIXELS", base.max_encode_pixels),
        max_frames=_env_int("LATENTQ_MAX_FRAMES", base.max_frames),
        max_batch_submit=_env_int("LATENTQ_MAX_BATCH_SUBMIT", base.max_batch_submit),
        body_timeout_s=_env_float("LATENTQ_BODY_TIMEOUT", base.body_timeout_s),
    )


def models_file_from_env() -> str | None:
    """``LATENTQ_MODELS``: the models file (TOML)."""
    return _get("LATENTQ_MODELS") or None


def store_from_env() -> tuple[str | None, str | None]:
    """``LATENTQ_STORE`` and ``LATENTQ_PUBLIC_URL``: this process's own store setting and public URL."""
    return _get("LATENTQ_STORE") or None, _get("LATENTQ_PUBLIC_URL") or None


def s3_options_from_env() -> dict[str, object]:
    """An S3 store's endpoint, region, public base URL and presign expiry (``LATENTQ_S3_*``, ``AWS_*``).
    Credentials are boto3's to find (its own environment variables, files, instance roles)."""
    env = os.environ
    options: dict[str, object] = {
        "endpoint_url": env.get("LATENTQ_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None,
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        "public_base_url": env.get("LATENTQ_S3_PUBLIC_URL") or None,
    }
    if value := env.get("LATENTQ_S3_PRESIGN_EXPIRY"):
        try:
            options["presign_expiry"] = int(value)
        except ValueError:

            raise ConfigError(f"LATENTQ_S3_PRESIGN_EXPIRY is not an integer: {value!r}") from None
    return options


def api_key_from_env() -> str | None:
    """``LATENTQ_API_KEY``: the key the HTTP clients and ``latentq submit --api`` send."""
    return os.environ.get("LATENTQ_API_KEY") or None


def faults_from_env() -> dict[str, object]:
    """``LATENTQ_FAULTS``: fault injection for tests and benchmarks (a JSON object; empty: none)."""
    raw = os.environ.get("LATENTQ_FAULTS")
    return dict(json.loads(raw)) if raw else {}


def log_json_from_env() -> bool:
    """``LATENTQ_LOG_JSON``: JSON log lines."""
    return bool(os.environ.get("LATENTQ_LOG_JSON"))


def webhook_allow_from_env() -> tuple[str, ...]:
    """``LATENTQ_WEBHOOK_ALLOW``: comma-separated hosts and CIDR networks webhooks may go to."""
    return tuple(e.strip() for e in os.environ.get("LATENTQ_WEBHOOK_ALLOW", "").split(",") if e.strip())


def webhook_secret_from_env() -> str | None:
    """``LATENTQ_WEBHOOK_SECRET``: the key webhooks are signed with (``whsec_<base64>`` or any string)."""
    return os.environ.get("LATENTQ_WEBHOOK_SECRET") or None


def webhook_policy() -> WebhookPolicy:
    """This process's webhook policy, for code that has no Settings at hand (a request, a sender)."""
    return WebhookPolicy.from_entries(webhook_allow_from_env())


def default_up_store() -> str:
    """``latentq up``'s result directory when none is configured: absolute, the same whatever the cwd."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data) / "latentq" / "results")


def up_state_path() -> Path:
    """Where a running ``latentq up`` says where it is: ``$XDG_RUNTIME_DIR/latentq/up.json``, else
    ``$XDG_CACHE_HOME/latentq/up.json`` (``~/.cache``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "latentq" / "up.json"


def read_up_state() -> dict | None:
    """The state file of a ``latentq up`` that still runs, else None (missing, unreadable or stale).

    Stale: its process is gone, or its Redis no longer accepts connections (a reused pid).
    """
    try:
        state = json.loads(up_state_path().read_text())
        pid, redis_url = int(state["pid"]), str(state["redis_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    try:
        parts = urlsplit(redis_url)
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5):
            pass
    except (OSError, ValueError):
        return None
    return state
