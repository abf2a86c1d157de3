"""Producers: ``Client`` (straight to Redis) and ``HttpClient`` / ``AsyncHttpClient`` (over the API).

``Client`` fronts ``service.JobService`` (submit, status, cancel, batches for any tenant), which the
HTTP API uses directly.
"""

from .client import Client, Job
from .http import AsyncHttpClient, AsyncHttpJob, HttpClient, HttpJob

__all__ = ["AsyncHttpClient", "AsyncHttpJob", "Client", "HttpClient", "HttpJob", "Job"]
