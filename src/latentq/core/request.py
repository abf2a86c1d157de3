"""The decode request, its validation limits, job statuses and result records.

These are plain data shared by the producer, the worker and the API; they
travel through RQ as JSON (``to_dict`` / ``from_dict``), never pickled.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest, UnsupportedFormat
from .metadata import METADATA_MAX_BYTES, METADATA_MAX_DEPTH, check_metadata, json_depth, parse_metadata
from .netguard import host_port

__all__ = [
    "ACCEPTED_DTYPES",
    "ARRAY_FORMATS",
    "AUDIO_FORMATS",
    "IMAGE_FORMATS",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_DEPTH",
    "OUTPUT_FORMATS",
    "VIDEO_FORMATS",
    "DecodeRequest",
    "FailureKind",
    "JobInfo",
    "JobResult",
    "JobStatus",
    "Limits",
    "ResultObject",
    "check_metadata",
    "json_depth",
    "parse_metadata",
]

IMAGE_FORMATS: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
ARRAY_FORMATS: dict[str, str] = {
    "tensor": "application/vnd.safetensors",  # the decoded float tensor in [0, 1]
    "uint8": "application/vnd.safetensors",  # the postprocessed 8-bit pixels
}
VIDEO_FORMATS: dict[str, str] = {
    "mp4": "video/mp4",  # H.264 through PyAV
    "frames": "image/png",  # one PNG object per frame
}
AUDIO_FORMATS: dict[str, str] = {
    "wav": "audio/wav",  # 16-bit PCM
    "flac": "audio/flac",  # lossless, 16-bit
}
OUTPUT_FORMATS: dict[str, str] = {**IMAGE_FORMATS, **VIDEO_FORMATS, **AUDIO_FORMATS, **ARRAY_FORMATS}
FORMAT_ALIASES = {"jpg": "jpeg"}
TASKS = ("decode", "encode")
PRIORITIES = ("normal", "high")
ACCEPTED_DTYPES = ("float16", "bfloat16", "float32")
# A job's metadata travels in its RQ record, its stored record, every status and webhook: kept small
# and shallow so no JSON encoder or decoder on the way (RQ's, Redis clients', ours) recurses deeply.


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"  # not started by its deadline

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED)


class FailureKind(str, enum.Enum):
    """Why a failed (or expired) job failed, recorded with its failure: what the API answers for it
    (``errors.HTTP_ERRORS``: 422, 409, 502) is chosen by this, never by reading the reason's text."""

    INPUT = "input"  # its input was refused (a bad latent, an option its model does not take): the caller's
    ENDED = "ended"  # someone ended it: its deadline passed, or it was canceled
    WORKER = "worker"  # the service's trouble: a decode, a model load or a store failed

    @classmethod
    def of(cls, exc: BaseException) -> FailureKind:
        return cls.INPUT if isinstance(exc, InvalidRequest) else cls.WORKER


@dataclass(frozen=True)
class Limits:
    """Size limits enforced by the API, the producer and again by the worker."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_latent_elements: int = 16 * 1024 * 1024
    max_output_pixels: int = 4096 * 4096
    # Images sent to encode are decoded in the API: fewer pixels than a decode may output, so
    # a tiny, highly compressed PNG cannot make the API allocate hundreds of MB.
    max_encode_pixels: int = 2048 * 2048
    max_frames: int = 1024
    max_batch_submit: int = 1024
    body_timeout_s: float = 30.0  # a request body not received within this is refused (408)


@dataclass(frozen=True)
class DecodeRequest:
    """What to do with one latent: which model, how to un-scale it, how to encode the pixels."""

    model: str
    output_format: str = "png"
    scaling_factor: float | None = None
    shift_factor: float | None = None
    quality: int = 90
    metadata: dict[str, Any] = field(default_factory=dict)
    height: int | None = None  # image height, for packed (FLUX) latents
    width: int | None = None
    fps: int = 24  # mp4 frame rate
    preview: bool = False  # publish a fast tiny-autoencoder decode first
    # The latent is what a pipeline hands vae.decode (RemoteVAE): the family's unpacking and normalising
    # are skipped, its decode and postprocessing are not.
    vae_input: bool = False
    tile: bool | None = None  # None: tiled decode above the model's threshold
    task: str = "decode"  # or "encode": an image in, a latent out
    priority: str = "normal"  # or "high": workers take high-priority jobs first
    deadline: float | None = None  # unix time; a job not started by then ends "expired"
    callback_url: str | None = None  # webhook: the job's status JSON is POSTed here when it ends
    # What some video and audio pipelines need besides the latent (names as their __call__ spells them):
    num_frames: int | None = None  # the video's frames: LTX's packed tokens, CogVideoX 1.5's padding, Allegro's crop
    decode_timestep: float | None = None  # LTX: the timestep-conditioned decoder's timestep
    decode_noise_scale: float | None = None  # LTX: noise mixed in before decoding (None: decode_timestep)
    decode_noise_seed: int | None = None  # LTX: seed of that noise, drawn as torch.randn on the CPU
    decode_chunk_size: int | None = None  # Stable Video Diffusion: frames per temporal-decoder call
    audio_start_in_s: float | None = None  # Stable Audio: the requested clip, in seconds
    audio_end_in_s: float | None = None
    # Kept for callers that pass it (from_dict did). callback_url's form is checked here; its destination
    # at submit (Client, under the deployment's Settings) and again by the sender before every delivery.
    check_callback: dataclasses.InitVar[bool] = True

    def __post_init__(self, check_callback: bool = True) -> None:
        fmt = FORMAT_ALIASES.get(self.output_format.lower(), self.output_format.lower())
        if fmt not in OUTPUT_FORMATS:
            raise UnsupportedFormat(
                f"output_format {self.output_format!r} is not one of {sorted(OUTPUT_FORMATS)}",
                field="output_format",
            )
        object.__setattr__(self, "output_format", fmt)
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise InvalidRequest(f"quality must be an integer in 1..100, got {self.quality!r}", field="quality")
        for name in ("scaling_factor", "shift_factor"):
            value = getattr(self, name)
            if value is not None:
                value = float(value)
                if value != value or value in (float("inf"), float("-inf")):
                    raise InvalidRequest(f"{name} must be finite", field=name)
                object.__setattr__(self, name, value)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 8 <= value <= 16384):
                raise InvalidRequest(f"{name} must be an integer in 8..16384, got {value!r}", field=name)
        if not isinstance(self.fps, int) or not 1 <= self.fps <= 240:
            raise InvalidRequest(f"fps must be an integer in 1..240, got {self.fps!r}", field="fps")
        if self.task not in TASKS:
            raise InvalidRequest(f"task must be one of {TASKS}, got {self.task!r}", field="task")
        if self.priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {PRIORITIES}, got {self.priority!r}", field="priority")
        if self.deadline is not None:
            deadline = float(self.deadline)
            if deadline != deadline or deadline in (float("inf"), float("-inf")):
                raise InvalidRequest("deadline must be a finite unix time", field="deadline")
            object.__setattr__(self, "deadline", deadline)
        if self.callback_url is not None:
            _check_callback(self.callback_url)
        if not isinstance(self.vae_input, bool):
            raise InvalidRequest(f"vae_input must be true or false, got {self.vae_input!r}", field="vae_input")
        if self.scaling_factor == 0.0:
            raise InvalidRequest("scaling_factor must not be 0", field="scaling_factor")
        _check_family_options(self)
        check_metadata(self.metadata)

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.output_format]

    def batch_signature(self) -> tuple[Any, ...]:
        """Jobs with equal signatures (and latent shapes) may share one decode call."""
        return (self.task, self.model, self.scaling_factor, self.shift_factor, self.height, self.width, self.tile,
                self.preview, self.vae_input, self.num_frames, self.decode_timestep, self.decode_noise_scale, self.decode_noise_seed,
                self.decode_chunk_size, self.audio_start_in_s, self.audio_end_in_s)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeRequest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names}, check_callback=False)


_MAX_AUDIO_S = 3600.0  # an hour: far past any pipeline's clip; keeps the sample arithmetic small


def _check_number(request: DecodeRequest, name: str, low: float, high: float, *, integer: bool = False) -> None:
    value = getattr(request, name)
    if value is None:
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(f"{name} must be an integer in {low:g}..{high:g}, got {value!r}", field=name)
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= float(value) <= high:
        raise InvalidRequest(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}", field=name)
    object.__setattr__(request, name, float(value))


def _check_family_options(request: DecodeRequest) -> None:
    """Ranges of the family options; whether a model takes them is its family's check."""
    _check_number(request, "num_frames", 1, 100_000, integer=True)
    _check_number(request, "decode_timestep", 0.0, 1.0)
    _check_number(request, "decode_noise_scale", 0.0, 1.0)
    _check_number(request, "decode_noise_seed", 0, 2**63 - 1, integer=True)
    _check_number(request, "decode_chunk_size", 1, 100_000, integer=True)
    _check_number(request, "audio_start_in_s", 0.0, _MAX_AUDIO_S)
    _check_number(request, "audio_end_in_s", 0.0, _MAX_AUDIO_S)
    start, end = request.audio_start_in_s, request.audio_end_in_s
    if start is not None and end is not None and end <= start:
        raise InvalidRequest(f"audio_end_in_s ({end:g}) must be after audio_start_in_s ({start:g})",
                             field="audio_end_in_s")  # fmt: skip


def _check_callback(url: object) -> None:
    """callback_url's form; its destination is checked against the deployment's webhook policy at submit
    (``Client``, with its own ``Settings``), and again at delivery with the same settings."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidRequest("callback_url must be an http(s) URL", field="callback_url")
    host_port(url)  # a host and a port (no DNS here): 422 naming callback_url


@dataclass(frozen=True)
class ResultObject:
    """One stored output of a job."""

    key: str
    content_type: str
    width: int
    height: int
    bytes: int
    url: str | None = None
    frames: int = 1
    frame: int | None = None  # index of this frame, for the "frames" format
    shape: list[int] | None = None  # for tensor outputs (encode results)
    dtype: str | None = None
    sample_rate: int | None = None  # audio outputs (width: samples, height: channels)
    channels: int | None = None
    duration_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultObject:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class JobResult:
    """A finished job's result record: RQ's return value and the store's record carry it as JSON (``to_dict``).

    Written by the worker (and the plain RQ task), read by ``state.status``; the URLs of its outputs are made
    when it is read (``results`` hold ResultObject fields without ``url``)."""

    results: list[dict[str, Any]]
    batch_size: int | None = None
    decode_ms: float | None = None
    tiled: bool | None = None
    encode_ms: float | None = None
    store_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; fields not known for this job (an encode job has no decode_ms) are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | JobResult | None) -> JobResult:
        if isinstance(data, JobResult):
            return data
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in names}
        values.setdefault("results", [])
        return cls(**values)

    def timings_ms(self) -> dict[str, float]:
        """Milliseconds by stage, for the stages this record carries."""
        return {stage: float(ms) for stage, ms in (("decode", self.decode_ms), ("encode", self.encode_ms),
                                                   ("store", self.store_ms)) if ms is not None}  # fmt: skip


@dataclass(frozen=True)
class JobInfo:
    """A job's status as the Client and the API report it."""

    id: str
    model: str
    status: JobStatus
    queue_position: int | None = None
    error: str | None = None
    results: list[ResultObject] = field(default_factory=list)
    batch_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    worker: str | None = None
    batch_size: int | None = None
    preview: ResultObject | None = None
    tiled: bool | None = None
    workers: int | None = None  # live workers serving the model (a queued job with 0 will wait)
    waiting_reason: str | None = None
    deadline: float | None = None
    # Where the time went, in ms: waiting (enqueued to started), decode (the job's batch), encode, store.
    timings: dict[str, float] | None = None
    tenant: str | None = None  # who submitted it (None: a job from before tenants, the default tenant's)
    failure: FailureKind | None = None  # a failed or expired job's: why (None: it did not fail)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["failure"] = self.failure.value if self.failure is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["status"] = JobStatus(values["status"])
        if values.get("failure"):
            values["failure"] = FailureKind(values["failure"])
        values["results"] = [ResultObject.from_dict(item) for item in values.get("results") or []]
        if values.get("preview"):
            values["preview"] = ResultObject.from_dict(values["preview"])
        return cls(**values)

    def with_urls(self, url_for: Callable[[str], str | None]) -> JobInfo:
        """A copy whose result (and preview) URLs are made by ``url_for(key)``."""
        results = [dataclasses.replace(item, url=url_for(item.key)) for item in self.results]
        preview = dataclasses.replace(self.preview, url=url_for(self.preview.key)) if self.preview else None
        return dataclasses.replace(self, results=results, preview=preview)
