"""Host <-> device traffic of one model's decodes: the device-resident decode path.

On a CUDA device a decode runs in three stages, each on its own stream, handed over by events:

  copy-in   host latents -> a pinned staging buffer (from a small bounded pool) -> device, ``non_blocking``
  compute   the decode in the model's dtype, [0, 1] and uint8 (``unit_to_uint8``) on the device
  copy-out  only the uint8 pixels (and float pixels when a request asks for a tensor) -> pinned host memory

``to_host`` returns a ``Pending`` at once: the worker launches the next decode while the copy finishes,
and the encode thread waits on the copy's event only when it reads the pixels. On the CPU (and any
device without CUDA streams) the same functions run plainly: no pinning, no streams, nothing pending.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DevicePath", "Pending", "PendingSample", "PinnedPool", "Streams", "Timer", "unit_to_uint8"]


def unit_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float (B, 3, H, W) or (B, 3, F, H, W), on any device -> uint8 channels-last on that device.

    The values of ``loader.to_uint8`` bit for bit (x255, round half to even as VaeImageProcessor, clamp) in
    fewer full-size passes: the product is rounded and clamped in place. Clamping after the product is the
    same as before it: 255 * x is exact for x in [0, 1] and out-of-range values land on 0 or 255 either way.
    """
    pixels = images.mul(255)
    pixels.round_().clamp_(0, 255)
    return pixels.to(torch.uint8).movedim(1, -1).contiguous()


class _Done:
    """The event of work done when it was issued (the CPU's)."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


_DONE = _Done()


class _HostStream:
    """The CPU's stand-in for a CUDA stream: every operation is finished when it returns."""

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return _DONE

    def synchronize(self) -> None:
        pass


def _record_blocking(stream: Any) -> Any:
    """An event on ``stream`` that a host thread may wait on: ``Stream.record_event()`` makes a spinning one,
    so eight encode threads waiting for a copy each kept a core busy for the whole decode."""
    if isinstance(stream, torch.cuda.Stream):
        event = torch.cuda.Event(blocking=True)
        stream.record_event(event)
        return event
    return stream.record_event()


@dataclass(frozen=True)
class Streams:
    copy_in: Any
    compute: Any
    copy_out: Any

    @classmethod
    def for_device(cls, device: torch.device) -> Streams:
        if device.type == "cuda":
            return cls(*(torch.cuda.Stream(device=device) for _ in range(3)))
        host = _HostStream()
        return cls(host, host, host)


def _on(stream: Any) -> contextlib.AbstractContextManager:
    """Make ``stream`` current (CUDA streams only; a stand-in or fake stream has nothing to switch)."""
    if isinstance(stream, torch.cuda.Stream):
        return torch.cuda.stream(stream)
    return contextlib.nullcontext()


def _pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


class Pending:
    """A tensor whose producing copy may still be running; ``wait()`` returns it once the copy is done."""

    def __init__(self, tensor: torch.Tensor, event: Any = None) -> None:
        self._tensor = tensor
        self._event = event

    @property
    def done(self) -> bool:
        return self._event is None or bool(self._event.query())

    def wait(self) -> torch.Tensor:
        event = self._event
        if event is not None:
            event.synchronize()
            self._event = None
        return self._tensor


class PendingSample(Pending):
    """Sample ``index`` (the first dimension) of a batch's pending copy: one job's share of it."""

    def __init__(self, batch: Pending, index: int) -> None:
        self._batch = batch
        self._index = index

    @property
    def done(self) -> bool:
        return self._batch.done

    def wait(self) -> torch.Tensor:
        return self._batch.wait()[self._index]


class PinnedPool:
    """Reusable page-locked host buffers keyed by (shape, dtype), at most ``per_key`` of each and
    ``max_bytes`` in all kept; a buffer given back ``after`` an event is reused only once the event
    has passed (its asynchronous copy has read it). Disabled (plain ``torch.empty``, nothing kept)
    where pinning means nothing: without CUDA."""

    def __init__(self, *, enabled: bool | None = None, per_key: int = 2, max_bytes: int = 256 << 20,
                 allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None) -> None:  # fmt: skip
        self.enabled = torch.cuda.is_available() if enabled is None else enabled
        self.per_key = per_key
        self.max_bytes = max_bytes
        self._allocate = allocate or _pinned_empty
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._busy: list[tuple[torch.Tensor, Any]] = []
        self._lock = threading.Lock()
        self.allocated = 0  # buffers made
        self.reused = 0  # acquires served from the pool
        self.dropped = 0  # buffers given back beyond the bound (left to be freed)

    @staticmethod
    def _key(shape: tuple[int, ...], dtype: torch.dtype) -> tuple:
        return (tuple(shape), dtype)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for buffers in self._free.values() for b in buffers)

    def free_count(self, shape: tuple[int, ...], dtype: torch.dtype) -> int:
        with self._lock:
            self._reclaim()
            return len(self._free.get(self._key(shape, dtype), ()))

    def acquire(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if not self.enabled:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            self._reclaim()
            free = self._free.get(self._key(shape, dtype))
            if free:
                self.reused += 1
                return free.pop()
            self.allocated += 1
        return self._allocate(tuple(shape), dtype)

    def release(self, buffer: torch.Tensor, after: Any = None) -> None:
        if not self.enabled:
            return
        with self._lock:
            if after is not None and not after.query():
                self._busy.append((buffer, after))
            else:
                self._keep(buffer)

    def _reclaim(self) -> None:
        still = []
        for buffer, event in self._busy:
            if event.query():
                self._keep(buffer)
            else:
                still.append((buffer, event))
        self._busy = still

    def _keep(self, buffer: torch.Tensor) -> None:
        free = self._free.setdefault(self._key(tuple(buffer.shape), buffer.dtype), [])
        held = sum(b.nbytes for buffers in self._free.values() for b in buffers)
        if len(free) < self.per_key and held + buffer.nbytes <= self.max_bytes:
            free.append(buffer)
        else:
            self.dropped += 1


class Timer:
    """A decode's duration: CUDA events on the compute stream (the GPU's time, read when the work is done),
    else the wall clock."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._cuda = isinstance(stream, torch.cuda.Stream)
        self._start: Any = None
        self._end: Any = None
        self._ms: float | None = None

    def start(self) -> Timer:
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(self._stream)
        else:
            self._start = time.perf_counter()
        return self

    def stop(self) -> Timer:
        if self._cuda:  # blocking: ms() is read by a host thread (the committer), which should sleep, not spin
            self._end = torch.cuda.Event(enable_timing=True, blocking=True)
            self._end.record(self._stream)
        else:
            self._ms = (time.perf_counter() - self._start) * 1000
        return self

    def ms(self) -> float:
        if self._ms is None:
            self._end.synchronize()
            self._ms = float(self._start.elapsed_time(self._end))
        return self._ms


class DevicePath:
    """One model's staging between host and ``device``. ``staged``: pinned copies and a stream per stage
    (default: on CUDA devices); ``streams``/``pool`` may be given (tests hand in fakes)."""

    def __init__(self, device: torch.device, *, staged: bool | None = None, streams: Streams | None = None,
                 pool: PinnedPool | None = None) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.staged = self.device.type == "cuda" if staged is None else staged
        self.streams = streams or Streams.for_device(self.device if self.staged else torch.device("cpu"))
        self.pool = pool or PinnedPool(enabled=self.staged and self.device.type == "cuda")
        self._host_empty = _pinned_empty if self.pool.enabled and self.device.type == "cuda" else _plain_empty

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """The compute stream made current: a decode's kernels, and everything it hands on, run there."""
        with _on(self.streams.compute):
            yield

    def timer(self) -> Timer:
        return Timer(self.streams.compute)

    def to_device(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Host latents -> the device in ``dtype``, for the compute stream (which waits for the copy)."""
        if not self.staged or latents.device.type != "cpu":
            return latents.to(self.device, dtype)
        streams = self.streams
        staging = self.pool.acquire(tuple(latents.shape), latents.dtype)
        staging.copy_(latents)
        with _on(streams.copy_in):
            moved = staging.to(self.device, non_blocking=True, copy=True)  # never an alias of the reused buffer
            copied = streams.copy_in.record_event()
        streams.compute.wait_event(copied)
        if moved.is_cuda:  # allocated on copy-in, freed after compute's use: tell the caching allocator
            moved.record_stream(streams.compute)
        self.pool.release(staging, after=copied)  # reusable once the copy has read it
        with _on(streams.compute):
            return moved.to(dtype)

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] float -> uint8 channels-last where the images are (on the compute stream)."""
        with self.computing():
            return unit_to_uint8(images)

    def to_host(self, tensor: torch.Tensor) -> Pending:
        """A device tensor -> host memory, copied on the copy-out stream once compute has produced it."""
        if tensor.device.type == "cpu" and self.device.type != "cpu":
            return Pending(tensor)  # the family brought it back itself
        if not self.staged:
            return Pending(tensor.cpu())
        streams = self.streams
        produced = streams.compute.record_event()
        streams.copy_out.wait_event(produced)
        with _on(streams.copy_out):
            host = self._host_empty(tuple(tensor.shape), tensor.dtype)
            host.copy_(tensor, non_blocking=True)
            copied = _record_blocking(streams.copy_out)  # encode threads wait on it
        if tensor.is_cuda:  # made on compute, read on copy-out: not reused before the copy is done
            tensor.record_stream(streams.copy_out)
        return Pending(host, copied)

    def on_device(self, tensor: torch.Tensor) -> Pending:
        """A tensor left on the device (a consumer there, e.g. nvJPEG), ready once compute has made it."""
        if not self.staged:
            return Pending(tensor)
        return Pending(tensor, _record_blocking(self.streams.compute))

    def synchronize(self) -> None:
        """Wait until every stage's queued work is done: nothing of this model's reads its weights afterwards."""
        for stream in (self.streams.copy_in, self.streams.compute, self.streams.copy_out):
            synchronize = getattr(stream, "synchronize", None)
            if synchronize is not None:
                synchronize()


def _plain_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)
