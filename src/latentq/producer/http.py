"""Producers that cannot reach Redis: the same submit / Job interface over the HTTP API (httpx).

Failures are latentq exceptions: a 503 (the API cannot reach Redis) or a
connection failure is ``Unavailable``; idempotent reads retry it a few times,
honoring ``Retry-After``. ``wait`` long-polls (``GET /v1/jobs/{id}?wait=S``)
instead of polling.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import torch

from ..config import api_key_from_env
from ..core.request import JobInfo, JobStatus, ResultObject
from ..core.wire import latent_to_bytes
from ..errors import (
    InvalidLatent,
    InvalidRequest,
    JobConflict,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LatentqError,
    LatentTooLarge,
    QueueFull,
    RateLimited,
    Unavailable,
    UnknownModel,
    UnsupportedFormat,
)

__all__ = ["AsyncHttpClient", "AsyncHttpJob", "HttpClient", "HttpJob", "auth_headers", "result_request"]

RETRIES = 3  # a GET answered 503 (or not at all) is tried again this many times
RETRY_AFTER_MAX_S = 30  # the longest Retry-After honored between tries
LONG_POLL_S = 60.0  # one long-poll request's wait; a longer wait takes several
DEFAULT_RETRY_AFTER_S = 2

_ERRORS: dict[str, type[InvalidRequest]] = {
    cls.__name__: cls for cls in (InvalidRequest, InvalidLatent, LatentTooLarge, UnknownModel, UnsupportedFormat)
}


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``api_key`` or ``$LATENTQ_API_KEY`` as a bearer token, when the API asks for one."""
    key = api_key or api_key_from_env()
    return {"authorization": f"Bearer {key}"} if key else {}


_auth_headers = auth_headers


def result_request(http: httpx.Client | httpx.AsyncClient, url: str) -> httpx.Request:
    """A GET of a result URL: the API key only for an unsigned URL of the API itself.

    A signed URL needs none, and an S3 presigned one must not carry any (S3 refuses a request
    authorised twice); a redirect to S3 drops it anyway (httpx strips it across origins).
    """
    target = httpx.URL(url)
    own = not target.is_absolute_url or target.copy_with(path="/", query=None) == http.base_url.copy_with(path="/")
    headers = None if own and "sig" not in target.params else {"authorization": ""}
    request = http.build_request("GET", url, headers=headers)
    if headers is not None:
        del request.headers["authorization"]
    return request


def _retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after", "")
    return min(int(value), RETRY_AFTER_MAX_S) if value.isdigit() else DEFAULT_RETRY_AFTER_S


def _unreachable(exc: httpx.TransportError) -> Unavailable:
    return Unavailable(f"the latentq API cannot be reached: {type(exc).__name__}: {exc}")


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
        limited = RateLimited if kind == "RateLimited" else QueueFull
        raise limited(message, retry_after=int(response.headers.get("retry-after", "5")))
    if response.status_code == 503:
        raise Unavailable(f"HTTP 503: {message}", retry_after=_retry_after(response))
    if response.status_code == 404 and kind == "JobNotFound":
        raise JobNotFound(message)
    if response.status_code == 409 and kind == "JobConflict":
        raise JobConflict(message)
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


def _final(job_id: str, info: JobInfo) -> list[ResultObject] | None:
    """The results of a finished job, None while it has not ended; JobFailed for every other end."""
    if info.status is JobStatus.FINISHED:
        return info.results
    if info.status.is_final:  # failed, canceled, expired
        raise JobFailed(job_id, info.error or info.status.value, info.failure)
    return None


class HttpJob:
    def __init__(self, client: HttpClient, job_id: str, status_url: str) -> None:
        self._client = client
        self.id = job_id
        self.status_url = status_url

    def info(self, wait: float = 0.0) -> JobInfo:
        """The job's status; with ``wait``, the API answers as soon as the job ends (or after ``wait`` s)."""
        params = {"wait": round(wait, 3)} if wait > 0 else None
        response = self._client.request("GET", self.status_url, params=params, extra_timeout=wait)
        return _info(response.json())

    def status(self) -> JobStatus:
        return self.info().status

    def wait(self, timeout: float = 60.0, poll_interval: float = 0.05) -> list[ResultObject]:
        """Results once the job finishes; JobFailed if it fails, is canceled or expires; JobTimeout after ``timeout`` s.

        Long-polls the API; ``poll_interval`` only paces an API that answers before the job ends.
        """
        deadline = time.monotonic() + timeout
        delay = poll_interval
        while True:
            asked = min(max(deadline - time.monotonic(), 0.0), LONG_POLL_S)
            started = time.monotonic()
            info = self.info(wait=asked)
            results = _final(self.id, info)
            if results is not None:
                return results
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} still {info.status.value} after {timeout} s")
            if time.monotonic() - started < asked / 2:  # answered early without an end: do not spin
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 1.5, 1.0)

    def read(self, index: int = 0) -> bytes:
        url = self.info().results[index].url
        response = self._client.http.send(result_request(self._client.http, url), follow_redirects=True)
        _raise_for(response)
        return response.content

    def cancel(self) -> JobInfo:
        """Cancel the job if it has not started (JobConflict once started or ended)."""
        return _info(self._client.request("DELETE", self.status_url).json())


class HttpClient:
    """``HttpClient("http://host:8000").submit(latent, model="taef2").wait()``"""

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None,
                 http: httpx.Client | None = None, retries: int = RETRIES) -> None:  # fmt: skip
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout, headers=_auth_headers(api_key))
        self.retries = retries

    def request(self, method: str, url: str, *, extra_timeout: float = 0.0, **kwargs: Any) -> httpx.Response:
        """One request, its failure raised as a latentq exception; GETs retry ``Unavailable``."""
        if extra_timeout:  # a long-poll: the answer may take that much longer
            base = self.http.timeout.read or 30.0
            kwargs["timeout"] = httpx.Timeout(self.http.timeout.connect, read=base + extra_timeout,
                                              write=self.http.timeout.write, pool=self.http.timeout.pool)  # fmt: skip
        retries = self.retries if method == "GET" else 0  # a POST may have landed: never sent twice
        while True:
            try:
                try:
                    response = self.http.request(method, url, **kwargs)
                except httpx.TransportError as exc:
                    raise _unreachable(exc) from exc
                _raise_for(response)
                return response
            except Unavailable as exc:
                if retries <= 0:
                    raise
                retries -= 1
                time.sleep(exc.retry_after)

    def submit(
        self,
        latent: torch.Tensor,
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        audio_latents: torch.Tensor | None = None,
        **options: Any,
    ) -> HttpJob:
        """Submit one latent. Every submit carries an ``Idempotency-Key`` (``idempotency_key``, else a
        random one), so the retries this client makes on a 503 never make a second job.
        ``audio_latents``: a video's sound, decoded into the same MP4 (as ``Client.submit``)."""
        response = self.request(
            "POST",
            "/v1/jobs",
            params=_params(model, output_format, scaling_factor, shift_factor, metadata, options),
            content=latent_to_bytes(latent, audio_latents),
            headers={"content-type": "application/octet-stream",
                     "idempotency-key": idempotency_key or uuid.uuid4().hex},  # fmt: skip
        )
        body = response.json()
        return HttpJob(self, body["id"], body["status_url"])

    def submit_encode(self, image: torch.Tensor, model: str, *, idempotency_key: str | None = None,
                      **options: Any) -> HttpJob:  # fmt: skip
        """Encode an image (as ``Client.submit_encode``; ``vae_input=True``: what a pipeline hands
        ``vae.encode``, answered as ``vae.encode`` returns it, RemoteVAE's encode)."""
        return self.submit(image, model, "tensor", idempotency_key=idempotency_key, task="encode", **options)

    def submit_many(self, latents, model: str, *, audio_latents=None, **options: Any) -> list[HttpJob]:
        """One job per sample; ``audio_latents``: one per sample (a (B, ...) tensor or a list), as ``submit``'s."""
        samples = list(latents.unbind(0)) if isinstance(latents, torch.Tensor) else list(latents)
        audios = [None] * len(samples) if audio_latents is None else (
            list(audio_latents.unbind(0)) if isinstance(audio_latents, torch.Tensor) else list(audio_latents))
        if len(audios) != len(samples):
            raise InvalidLatent(f"audio_latents hold {len(audios)} samples for {len(samples)} latents: one each",
                                field="audio_latents")  # fmt: skip
        return [self.submit(sample, model, audio_latents=audio, **options) for sample, audio in zip(samples, audios)]

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

    async def info(self, wait: float = 0.0) -> JobInfo:
        params = {"wait": round(wait, 3)} if wait > 0 else None
        response = await self._client.request("GET", self.status_url, params=params, extra_timeout=wait)
        return _info(response.json())

    async def status(self) -> JobStatus:
        return (await self.info()).status

    async def wait(self, timeout: float = 60.0, poll_interval: float = 0.05) -> list[ResultObject]:
        """As ``HttpJob.wait``."""
        deadline = time.monotonic() + timeout
        delay = poll_interval
        while True:
            asked = min(max(deadline - time.monotonic(), 0.0), LONG_POLL_S)
            started = time.monotonic()
            info = await self.info(wait=asked)
            results = _final(self.id, info)
            if results is not None:
                return results
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} still {info.status.value} after {timeout} s")
            if time.monotonic() - started < asked / 2:
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 1.5, 1.0)

    async def read(self, index: int = 0) -> bytes:
        url = (await self.info()).results[index].url
        response = await self._client.http.send(result_request(self._client.http, url), follow_redirects=True)
        _raise_for(response)
        return response.content

    async def cancel(self) -> JobInfo:
        return _info((await self._client.request("DELETE", self.status_url)).json())


class AsyncHttpClient:
    """The asyncio twin of ``HttpClient``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None,
                 http: httpx.AsyncClient | None = None, retries: int = RETRIES) -> None:  # fmt: skip
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_auth_headers(api_key))
        self.retries = retries

    async def request(self, method: str, url: str, *, extra_timeout: float = 0.0, **kwargs: Any) -> httpx.Response:
        """As ``HttpClient.request``."""
        if extra_timeout:
            base = self.http.timeout.read or 30.0
            kwargs["timeout"] = httpx.Timeout(self.http.timeout.connect, read=base + extra_timeout,
                                              write=self.http.timeout.write, pool=self.http.timeout.pool)  # fmt: skip
        retries = self.retries if method == "GET" else 0
        while True:
            try:
                try:
                    response = await self.http.request(method, url, **kwargs)
                except httpx.TransportError as exc:
                    raise _unreachable(exc) from exc
                _raise_for(response)
                return response
            except Unavailable as exc:
                if retries <= 0:
                    raise
                retries -= 1
                await asyncio.sleep(exc.retry_after)

    async def submit(
        self,
        latent: torch.Tensor,
        model: str,
        output_format: str = "png",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        audio_latents: torch.Tensor | None = None,
        **options: Any,
    ) -> AsyncHttpJob:
        """As ``HttpClient.submit``: retried submits never make a second job."""
        response = await self.request(
            "POST",
            "/v1/jobs",
            params=_params(model, output_format, scaling_factor, shift_factor, metadata, options),
            content=latent_to_bytes(latent, audio_latents),
            headers={"content-type": "application/octet-stream",
                     "idempotency-key": idempotency_key or uuid.uuid4().hex},  # fmt: skip
        )
        body = response.json()
        return AsyncHttpJob(self, body["id"], body["status_url"])

    async def submit_encode(self, image: torch.Tensor, model: str, *, idempotency_key: str | None = None,
                            **options: Any) -> AsyncHttpJob:  # fmt: skip
        """As ``HttpClient.submit_encode``: an image in, the model's latent (a tensor object) out."""
        return await self.submit(image, model, "tensor", idempotency_key=idempotency_key, task="encode", **options)

    def job(self, job_id: str) -> AsyncHttpJob:
        return AsyncHttpJob(self, job_id, f"/v1/jobs/{job_id}")

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
