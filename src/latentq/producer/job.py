"""``Job``: a handle on one submitted job (what ``Client.submit`` answers), bound to the job service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.request import JobInfo, JobStatus, ResultObject
from ..errors import JobFailed, JobTimeout

if TYPE_CHECKING:
    from .service import JobService

__all__ = ["Job"]


class Job:
    """A handle on one submitted job."""

    def __init__(self, service: JobService, job_id: str, model: str, batch_id: str | None = None) -> None:
        self._service = service
        self.id = job_id
        self.model = model
        self.batch_id = batch_id

    def __repr__(self) -> str:
        return f"<latentq.Job {self.id} model={self.model}>"

    def info(self) -> JobInfo:
        return self._service.job_info(self.id)

    def status(self) -> JobStatus:
        return self.info().status

    def wait(self, timeout: float = 60.0) -> list[ResultObject]:
        """Block until the job ends; return its results or raise JobFailed / JobTimeout."""
        info = self._service.wait_for(self.id, timeout)
        if info.status is JobStatus.FINISHED:
            return info.results
        if info.status.is_final:
            raise JobFailed(self.id, info.error or info.status.value, info.failure)
        raise JobTimeout(f"job {self.id} still {info.status.value} after {timeout} s")

    def read(self, index: int = 0) -> bytes:
        """The bytes of one result object: from the store's directory when it is on this machine, else
        through its URL (no store settings needed: the deployment says where its results are)."""
        return self._service.read_result(self.info().results[index])

    def cancel(self) -> JobInfo:
        return self._service.cancel(self.id)
