"""The decode worker: batching, decode, encode, store, and the RQ glue."""

from .rq_worker import DecodeWorker

__all__ = ["DecodeWorker"]
