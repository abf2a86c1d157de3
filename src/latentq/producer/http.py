"""Producers that cannot reach Redis: the same submit / Job interface over the HTTP API (httpx)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx
import torch

from ..errors import (
    InvalidLatent,
    InvalidRequest,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LatentqError,
    LatentTooLarge,
    QueueFull,
    UnknownModel,
    UnsupportedFormat,
)
from ..spec import JobInfo, JobStatus, ResultObject
from ..wire import latent_to_bytes

__all__ = ["AsyncHttpClient", "AsyncHttpJob", "HttpClient", "HttpJob"]

_ERRORS: dict[str, type[InvalidRequest]] = {
    cls.__name__: cls for cls in (InvalidRequest, InvalidLatent, LatentTooLarge, UnknownModel, UnsupportedFormat)
}


def _auth_headers(api_key: str | None) -> dict[str, str]:
    """``api_key`` or ``$LATENTQ_API_KEY`` as a bearer token, when the API asks for one."""
    key = api_key or os.environ.get("LATENTQ_API_KEY")
    return {"authorization": f"Bearer {key}"} if key else {}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = error.get("message") or response.text or response.reason_phrase
    kind = error.get("type", "")
    if response.status_code == 429:
        raise QueueFull(message, retry_after=int(response.headers.get("retry-after", "5")))
    if response.status_code == 404 and kind == "JobNotFound":
        raise JobNotFound(message)
    if kind in _ERRORS:
        raise _ERRORS[kind](message, field=error.get("field"))
    if 400 <= response.status_code < 500:
        raise InvalidRequest(f"HTTP {response.status_code}: {message}", field=error.get("field"))
    raise LatentqError(f"HTTP {response.status_code}: {message}")


def _info(data: dict[str, Any]) -> JobInfo:
    data = dict(data)
    data.pop("status_url", None)
    data["status"] = JobStatus(data["status"])
    data["results"] = [ResultObject.from_dict(item) for item in data.get("results", [])]
    if data.get("preview"):
        data["preview"] = ResultObject.from_dict(data["preview"])
    return JobInfo(**data)


def _params(model: str, output_format: str, scaling_factor, shift_factor, metadata, options) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "output_format": output_format}
    params.update({k: v for k, v in options.items() if v is not None})
    if scaling_factor is not None:
        params["scaling_factor"] = scaling_factor
    if shift_factor is not None:
        params["shift_factor"] = shift_factor
    if metadata:
        params["metadata"] = json.dumps(metadata)
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}


class HttpJob:
    def __init__(self, client: HttpClient, job_id: str, status_url: str) -> None:
        self._client = client
        self.id = job_id
        self.status_url = status_url

    def info(self) -> JobInfo:
        response = self._client.http.get(self.status_url)
        _raise_for(response)
        return _info(response.json())

    def status(self) -> JobStatus:
        return self.info().status

    def wait(self, timeout: float = 60.0, poll_interval: float = 0.05) -> list[ResultObject]:
        deadline = time.monotonic() + timeout
        delay = poll_interval
        while True:
            info = self.info()
            if info.status is JobStatus.FINISHED:
                return info.results
            if info.status in (JobStatus.FAILED, JobStatus.CANCELED):
                raise JobFailed(self.id, info.error or info.status.value)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} still {info.status.value} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def read(self, index: int = 0) -> bytes:
        url = self.info().results[index].url
        response = self._client.http.get(url)
        _raise_for(response)
        return response.content


class HttpClient:
    """``HttpClient("http://host:8000").submit(latent, model="taef2").wait()``"""

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None,
                 http: httpx.Client | None = None) -> None:  # fmt: skip
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout, headers=_auth_headers(api_key))

    def submit(
        self,
        latent: torch.Tensor,
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> HttpJob:
        response = self.http.post(
            "/v1/jobs",
            params=_params(model, output_format, scaling_factor, shift_factor, metadata, options),
            content=latent_to_bytes(latent),
            headers={"content-type": "application/octet-stream"},
        )
        _raise_for(response)
        body = response.json()
        return HttpJob(self, body["id"], body["status_url"])

    def submit_many(self, latents, model: str, **options: Any) -> list[HttpJob]:
        samples = list(latents.unbind(0)) if isinstance(latents, torch.Tensor) else list(latents)
        return [self.submit(sample, model, **options) for sample in samples]

    def job(self, job_id: str) -> HttpJob:
        return HttpJob(self, job_id, f"/v1/jobs/{job_id}")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncHttpJob:
    def __init__(self, client: AsyncHttpClient, job_id: str, status_url: str) -> None:
        self._client = client
        self.id = job_id
        self.status_url = status_url

    async def info(self) -> JobInfo:
        response = await self._client.http.get(self.status_url)
        _raise_for(response)
        return _info(response.json())

    async def status(self) -> JobStatus:
        return (await self.info()).status

    async def wait(self, timeout: float = 60.0, poll_interval: float = 0.05) -> list[ResultObject]:
        deadline = time.monotonic() + timeout
        delay = poll_interval
        while True:
            info = await self.info()
            if info.status is JobStatus.FINISHED:
                return info.results
            if info.status in (JobStatus.FAILED, JobStatus.CANCELED):
                raise JobFailed(self.id, info.error or info.status.value)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} still {info.status.value} after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def read(self, index: int = 0) -> bytes:
        url = (await self.info()).results[index].url
        response = await self._client.http.get(url)
        _raise_for(response)
        return response.content


class AsyncHttpClient:
    """The asyncio twin of ``HttpClient``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None,
                 http: httpx.AsyncClient | None = None) -> None:  # fmt: skip
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_auth_headers(api_key))

    async def submit(
        self,
        latent: torch.Tensor,
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncHttpJob:
        response = await self.http.post(
            "/v1/jobs",
            params=_params(model, output_format, scaling_factor, shift_factor, metadata, options),
            content=latent_to_bytes(latent),
            headers={"content-type": "application/octet-stream"},
        )
        _raise_for(response)
        body = response.json()
        return AsyncHttpJob(self, body["id"], body["status_url"])

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
