"""MP4 jobs encoded while their video decodes: a frame stream per job, from the decoding thread to an encoder.

For a group of MP4 jobs whose model decodes chunk by chunk (``models.chunked``), the worker submits each
job's encoder to its encode pool first, then decodes: every chunk of frames is made uint8 where it was
decoded (on CUDA: on the device, then a pending copy to the host, as ``DevicePath`` does for whole
outputs) and put on each job's ``FrameStream``; the encoder muxes the chunks as they come
(``encode.Mp4Writer``), so x264 runs beside the decode instead of after it.

- Bounded: a stream holds at most ``MAX_CHUNKS`` chunks (a few frames each); a slower encoder blocks the
  decode there, never memory.
- Ending: the decode that completes closes the streams once the worker has counted it (``GroupStream.end``);
  a decode that fails (exception, out of memory) aborts them, and each encoder drops its unfinished file and
  leaves its job alone (``StreamAborted``): the worker's fallbacks (split, tiled, one by one) decode the job
  again, whole, and decide its outcome; no job is failed twice or finished with part of its video. An encoder
  that fails cancels its stream (the decode goes on without it) and its job fails as a failed encode does.
- Only on a thread pool with a thread per job of the group (``Batcher._open_streams``): an encoder run
  in line, or waiting behind the group's other encoders, would wait for frames the decode cannot make yet.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..core.request import DecodeRequest
from ..errors import LatentqError
from ..models.device_path import DevicePath, Pending, PendingSample, Timer
from .encode import EXTENSIONS, EncodedObject, Mp4Writer

__all__ = ["MAX_CHUNKS", "FrameStream", "GroupStream", "StreamAborted", "StreamedVideo"]

MAX_CHUNKS = 4  # per job: Wan's chunks are 4 frames, so at most 16 decoded frames wait for an encoder


class StreamAborted(LatentqError):
    """The decode feeding a frame stream did not complete: its frames are not the job's video."""


class FrameStream:
    """A bounded, thread-safe queue of one job's frame chunks, in order: ``put`` (the decoding thread),
    iterate (the encoder), ``close`` / ``abort`` (the producer's end), ``cancel`` (the consumer's)."""

    def __init__(self, max_chunks: int = MAX_CHUNKS) -> None:
        self.max_chunks = max(1, max_chunks)
        self._chunks: deque[Any] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._cancelled = False

    def put(self, chunk: Any) -> None:
        """Add a chunk, waiting while the stream is full; dropped once the consumer cancelled."""
        with self._changed:
            while len(self._chunks) >= self.max_chunks and not self._cancelled:
                self._changed.wait()
            if self._cancelled:
                return
            if self._closed or self._error is not None:
                raise RuntimeError("a chunk put on an ended frame stream")
            self._chunks.append(chunk)
            self._changed.notify_all()

    def close(self) -> None:
        """The producer made every chunk: the consumer reads the rest, then stops."""
        with self._changed:
            if self._error is None:
                self._closed = True
            self._changed.notify_all()

    def abort(self, error: BaseException) -> None:
        """The producer failed: the consumer raises ``StreamAborted`` at its next read (unread chunks dropped)."""
        with self._changed:
            if not self._closed and self._error is None:
                self._error = error
                self._chunks.clear()
            self._changed.notify_all()

    def cancel(self) -> None:
        """The consumer stops reading: the producer's puts return at once from now on."""
        with self._changed:
            self._cancelled = True
            self._chunks.clear()
            self._changed.notify_all()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._changed:
                while not self._chunks and not self._closed and self._error is None:
                    self._changed.wait()
                if self._error is not None:
                    raise StreamAborted(f"the decode stopped: {type(self._error).__name__}: {self._error}")
                if not self._chunks:
                    return
                chunk = self._chunks.popleft()
                self._changed.notify_all()
            yield chunk


class StreamedVideo:
    """One job's video, arriving on ``stream``: what ``store_output`` encodes (once, by ``encode``) and the
    worker's ``Finisher`` records, in the place of a ``DecodedImage``."""

    tiled = False

    def __init__(self, stream: FrameStream, batch_size: int) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self._timer: Timer | float = 0.0
        self._outcome: tuple[bool, Any] | None = None  # (ok, outputs or the exception)
        self.encode_seconds = 0.0  # x264's own time (muxing the chunks and the end), not the waits for frames

    @property
    def decode_ms(self) -> float:
        return self._timer.ms() if isinstance(self._timer, Timer) else self._timer

    def encode(self, request: DecodeRequest) -> list[EncodedObject]:
        """The MP4, made from the stream's chunks as they come, the first time; the same outputs (or error)
        after that (``store_output`` is retried for the store's sake: the frames are gone)."""
        if self._outcome is None:
            try:
                self._outcome = (True, self._encode(request))
            except Exception as exc:
                self._outcome = (False, exc)
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _encode(self, request: DecodeRequest) -> list[EncodedObject]:
        writer = Mp4Writer(request.fps, request.quality)
        try:
            for chunk in self.stream:
                frames = chunk.wait() if isinstance(chunk, Pending) else chunk
                started = time.perf_counter()
                writer.write(frames)
                self.encode_seconds += time.perf_counter() - started
            started = time.perf_counter()
            data = writer.finish()
            self.encode_seconds += time.perf_counter() - started
        except BaseException:
            self.stream.cancel()  # the decode goes on without this job's frames
            raise
        finally:
            writer.close()
        return [EncodedObject(data, request.content_type, EXTENSIONS["mp4"], writer.width, writer.height,
                              writer.frames)]  # fmt: skip

    def consume(self, request: DecodeRequest, release: Callable[[], None], finish: Callable[..., None],
                *finish_args: Any) -> None:  # fmt: skip
        """The encode pool's task: encode as the frames come, then ``finish(*finish_args)`` (store, record,
        commit; it reports a failed encode). An aborted stream leaves the job to the decode's fallbacks:
        only ``release`` (the worker's pending slot) is called."""
        try:
            self.encode(request)
        except StreamAborted:
            release()
            return
        except Exception:
            pass  # kept by encode: finish fails the job with it
        finish(*finish_args)


class GroupStream:
    """The streams of one decode group's jobs (batch order), fed by ``models.chunked.decode_chunks``."""

    def __init__(self, path: DevicePath, jobs: int, max_chunks: int = MAX_CHUNKS) -> None:
        self.path = path
        self.videos = [StreamedVideo(FrameStream(max_chunks), jobs) for _ in range(jobs)]
        self._complete = False

    def feed(self, images: torch.Tensor) -> None:
        """A chunk (B, 3, f, H, W) in [0, 1] where it was decoded -> uint8 there -> host (pending) -> each job."""
        pixels = self.path.to_host(self.path.to_uint8(images))
        for index, video in enumerate(self.videos):
            video.stream.put(PendingSample(pixels, index))

    def decoded(self, timer: Timer | float) -> list[StreamedVideo]:
        """The decode completed: every chunk was fed. The streams close at ``end``."""
        for video in self.videos:
            video._timer = timer
        self._complete = True
        return self.videos

    def abort(self, error: BaseException) -> None:
        for video in self.videos:
            video.stream.abort(error)

    def end(self) -> None:
        """Close the streams of a completed decode, abort those of any other: no encoder waits after this."""
        if self._complete:
            for video in self.videos:
                video.stream.close()
        else:
            self.abort(StreamAborted("the decode did not complete"))
