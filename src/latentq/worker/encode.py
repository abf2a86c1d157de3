"""Encode decoded pixels into the requested output format (runs on the encode thread pool)."""

from __future__ import annotations

import functools
import io
import logging
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as st_save

from ..core.request import DecodeRequest

log = logging.getLogger("latentq.worker")

__all__ = ["EXTENSIONS", "EncodedObject", "Mp4Writer", "audio_pcm16", "encode_audio_output", "encode_flac", "encode_mp4",
           "encode_output", "encode_wav", "gpu_jpeg_available", "jpeg_encoder", "probe_jpeg_encoder"]

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "tensor": "safetensors", "uint8": "safetensors",
              "mp4": "mp4", "frames": "png", "wav": "wav", "flac": "flac"}  # fmt: skip


@dataclass(frozen=True)
class EncodedObject:
    data: bytes
    content_type: str
    ext: str
    width: int
    height: int
    frames: int = 1
    frame: int | None = None
    sample_rate: int | None = None  # audio outputs (and an MP4's audio track)
    channels: int | None = None
    duration_s: float | None = None


JpegEncoder = Callable[..., torch.Tensor]  # torchvision.io.encode_jpeg's signature: (3, H, W) uint8 -> bytes tensor


def _torchvision_encode_jpeg() -> JpegEncoder:
    from torchvision.io import encode_jpeg  # a torchvision built for another torch can fail here

    return encode_jpeg


def probe_jpeg_encoder(load: Callable[[], JpegEncoder], device: torch.device | str) -> JpegEncoder | None:
    """``load()``'s encoder if it encodes a tiny image on ``device`` into a JPEG, else None (logged once).

    An import that works proves little: a torchvision whose compiled ops do not match the installed torch,
    or one built without nvJPEG, imports and then fails every call. One real encode at first use tells."""
    try:
        encode = load()
        data = encode(torch.zeros(3, 16, 16, dtype=torch.uint8, device=device), quality=90)
        if not bytes(data.cpu().numpy().tobytes()[:2]) == b"\xff\xd8":
            raise RuntimeError("the probe's output is not a JPEG")
        return encode
    except Exception as exc:
        log.warning("GPU JPEG encoding (nvJPEG) unavailable on %s: %s: %s; JPEGs are encoded by Pillow on the CPU",
                    device, type(exc).__name__, exc)  # fmt: skip
        return None


@functools.cache
def _nvjpeg(device_index: int) -> JpegEncoder | None:
    if not torch.cuda.is_available():
        return None
    return probe_jpeg_encoder(_torchvision_encode_jpeg, torch.device("cuda", device_index))


def gpu_jpeg_available(device: torch.device | str | None = None) -> bool:
    """Whether nvJPEG encodes on ``device`` (a CUDA device; default: the current one), probed once per device."""
    if not torch.cuda.is_available():
        return False
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return False
    return _nvjpeg(device.index if device.index is not None else torch.cuda.current_device()) is not None


def jpeg_encoder(pixels: torch.Tensor) -> str:
    """Which encoder makes a JPEG of ``pixels`` (H, W, 3) uint8: "nvjpeg" for pixels on a CUDA device when
    torchvision can encode there (no copy back, no CPU time), else "pillow"."""
    return "nvjpeg" if pixels.device.type == "cuda" and gpu_jpeg_available(pixels.device) else "pillow"


def _image_bytes(pixels: torch.Tensor, fmt: str, quality: int) -> bytes:
    if fmt == "jpeg" and jpeg_encoder(pixels) == "nvjpeg":
        encode_jpeg = _nvjpeg(pixels.device.index if pixels.device.index is not None else torch.cuda.current_device())
        try:
            return encode_jpeg(pixels.permute(2, 0, 1).contiguous(), quality=quality).cpu().numpy().tobytes()
        except Exception as exc:  # probed fine, failed now (e.g. out of memory): this job's JPEG from Pillow
            log.warning("nvJPEG failed (%s: %s); this JPEG is encoded by Pillow", type(exc).__name__, exc)
    buffer = io.BytesIO()
    picture = Image.fromarray(pixels.cpu().numpy())
    if fmt == "png":
        picture.save(buffer, format="PNG", compress_level=1)  # speed over a few % of size
    elif fmt == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality)
    else:
        picture.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


class Mp4Writer:
    """An H.264 MP4 made as its frames come: ``write`` (F, H, W, 3) uint8 chunks in order, then ``finish()`` ->
    the file's bytes. The container opens at the first chunk (its size sets the stream's); each chunk is encoded
    and muxed at once, so a long video's frames are never held whole. ``close()`` drops an unfinished file. The
    options are ``encode_mp4``'s, which is this writer given every frame at once (x264 on its own threads may
    still make other bytes for the same frames, encode to encode; the frames it decodes to are the same)."""

    def __init__(self, fps: int, quality: int, audio: torch.Tensor | None = None, sample_rate: int | None = None,
                 audio_codec: str = "aac") -> None:  # fmt: skip
        self.fps = fps
        self.quality = quality
        self._audio = audio
        self._sample_rate = sample_rate
        self._audio_codec = audio_codec
        self._buffer = io.BytesIO()
        self._container: Any = None
        self._stream: Any = None
        self._sound: Any = None
        self.frames = 0
        self.width = self.height = 0

    def _open(self, height: int, width: int) -> None:
        import av

        self._container = container = av.open(self._buffer, mode="w", format="mp4")
        stream = container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        # quality 100 -> crf 0 (lossless luma), 1 -> crf 51
        stream.options = {"crf": str(round((100 - self.quality) * 0.51)), "preset": "veryfast"}
        audio, rate = self._audio, self._sample_rate
        if audio is not None and rate:
            self._sound = container.add_stream(self._audio_codec, rate=rate, layout=_layout(audio.shape[0]))
            if self._audio_codec == "alac":
                self._sound.format = "s16p"
            else:
                self._sound.bit_rate = 64_000 + 1_920 * self.quality  # 256 kb/s at quality 100
        self._stream = stream
        self.width, self.height = width, height

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Encode and mux (F, H, W, 3) uint8 frames (on the CPU), after those written before."""
        import av

        array = frames.numpy() if isinstance(frames, torch.Tensor) else frames
        if self._container is None:
            self._open(array.shape[1], array.shape[2])
        elif array.shape[1:3] != (self.height, self.width):
            raise ValueError(f"frames of {array.shape[2]}x{array.shape[1]} after {self.width}x{self.height} ones")
        for frame in array:
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += array.shape[0]

    def finish(self) -> bytes:
        """Flush the encoder, mux the audio track (if any) and close: the MP4's bytes."""
        if self._container is None:
            raise ValueError("an MP4 needs at least one frame")
        container, self._container = self._container, None
        with container:
            container.mux(self._stream.encode())
            if self._sound is not None:
                _mux_audio(container, self._sound, audio_pcm16(self._audio), self._sample_rate)
        return self._buffer.getvalue()

    def close(self) -> None:
        """Drop an unfinished file (a stream that was aborted): the container's resources are freed."""
        container, self._container = self._container, None
        if container is not None:
            container.close()


def encode_mp4(frames: torch.Tensor, fps: int, quality: int, audio: torch.Tensor | None = None,
               sample_rate: int | None = None, audio_codec: str = "aac") -> bytes:  # fmt: skip
    """(F, H, W, 3) uint8 -> H.264 MP4 (yuv420p, so players everywhere open it); with ``audio``
    ((channels, samples) float in [-1, 1] at ``sample_rate``), an AAC track beside it (``audio_codec``
    "alac": lossless 16-bit, with no encoder delay). ``Mp4Writer`` given all the frames at once."""
    writer = Mp4Writer(fps, quality, audio, sample_rate, audio_codec)
    try:
        writer.write(frames)
        return writer.finish()
    finally:
        writer.close()


# --- audio --------------------------------------------------------------------------------
def audio_pcm16(audio: torch.Tensor) -> np.ndarray:
    """(channels, samples) float -> interleaved (samples, channels) int16, clipped to [-1, 1] first."""
    return (audio.float().clamp(-1, 1) * 32767).round().to(torch.int16).T.contiguous().numpy()


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def _mux_audio(container: Any, stream: Any, pcm: np.ndarray, sample_rate: int) -> None:
    import av

    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=_layout(pcm.shape[1]))
    frame.sample_rate = sample_rate
    for packet in stream.encode(frame):
        container.mux(packet)
    container.mux(stream.encode(None))


def encode_wav(audio: torch.Tensor, sample_rate: int) -> bytes:
    """(channels, samples) float in [-1, 1] -> 16-bit PCM WAV (the stdlib's writer: no codec involved)."""
    pcm = audio_pcm16(audio)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def encode_flac(audio: torch.Tensor, sample_rate: int) -> bytes:
    """(channels, samples) float in [-1, 1] -> 16-bit FLAC through PyAV (lossless: the WAV's samples)."""
    import av

    pcm = audio_pcm16(audio)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate, layout=_layout(pcm.shape[1]))
        stream.format = "s16"
        _mux_audio(container, stream, pcm, sample_rate)
    return buffer.getvalue()


def encode_audio_output(audio: torch.Tensor, sample_rate: int, request: DecodeRequest) -> list[EncodedObject]:
    """One job's audio, (channels, samples) float, in the requested format (wav, flac or tensor)."""
    fmt = request.output_format
    channels, samples = audio.shape
    meta = dict(width=samples, height=channels, sample_rate=sample_rate, channels=channels,
                duration_s=samples / sample_rate)  # fmt: skip
    if fmt == "wav":
        data = encode_wav(audio, sample_rate)
    elif fmt == "flac":
        data = encode_flac(audio, sample_rate)
    elif fmt == "tensor":
        data = st_save({"audio": audio.float().contiguous()})
    else:
        raise ValueError(f"output_format {fmt!r} is not an audio format")
    return [EncodedObject(data, request.content_type, EXTENSIONS[fmt], **meta)]


def encode_output(image: torch.Tensor | None, pixels: torch.Tensor, request: DecodeRequest) -> list[EncodedObject]:
    """``image``: (3, [F,] H, W) float in [0, 1] (needed for tensor outputs only); ``pixels``: ([F,] H, W, 3)
    uint8 of the same decode, on the CPU (or a CUDA device, for nvJPEG)."""
    fmt = request.output_format
    if pixels.device.type != "cpu" and not (fmt == "jpeg" and jpeg_encoder(pixels) == "nvjpeg"):
        pixels = pixels.cpu()
    height, width = pixels.shape[-3], pixels.shape[-2]
    frames = pixels.shape[0] if pixels.ndim == 4 else 1
    content_type = request.content_type
    ext = EXTENSIONS[fmt]
    if fmt == "tensor":
        if image is None:
            raise ValueError("a tensor output needs the float pixels")
        return [EncodedObject(st_save({"image": image.cpu().contiguous()}), content_type, ext, width, height, frames)]
    if fmt == "uint8":
        return [EncodedObject(st_save({"image": pixels.contiguous()}), content_type, ext, width, height, frames)]
    if fmt == "mp4":
        return [EncodedObject(encode_mp4(pixels, request.fps, request.quality), content_type, ext, width, height, frames)]
    if fmt == "frames":
        return [
            EncodedObject(_image_bytes(frame, "png", request.quality), content_type, ext, width, height, 1, index)
            for index, frame in enumerate(pixels)
        ]
    return [EncodedObject(_image_bytes(pixels, fmt, request.quality), content_type, ext, width, height)]
