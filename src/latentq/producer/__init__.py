"""Producers: ``Client`` (straight to Redis) and ``HttpClient`` / ``AsyncHttpClient`` (over the API)."""

from .client import Client, Job
from .http import AsyncHttpClient, AsyncHttpJob, HttpClient, HttpJob

__all__ = ["AsyncHttpClient", "AsyncHttpJob", "Client", "HttpClient", "HttpJob", "Job"]
