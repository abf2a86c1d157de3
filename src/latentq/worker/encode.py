"""Encode decoded pixels into the requested output format (runs on the encode thread pool)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image
from safetensors.torch import save as st_save

from ..spec import DecodeRequest

__all__ = ["EncodedObject", "encode_output", "encode_mp4", "EXTENSIONS"]

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "tensor": "safetensors", "uint8": "safetensors",
              "mp4": "mp4", "frames": "png"}  # fmt: skip


@dataclass(frozen=True)
class EncodedObject:
    data: bytes
    content_type: str
    ext: str
    width: int
    height: int
    frames: int = 1
    frame: int | None = None


def _image_bytes(pixels: torch.Tensor, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(pixels.numpy())
    if fmt == "png":
        picture.save(buffer, format="PNG", compress_level=1)  # speed over a few % of size
    elif fmt == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality)
    else:
        picture.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def encode_mp4(frames: torch.Tensor, fps: int, quality: int) -> bytes:
    """(F, H, W, 3) uint8 -> H.264 MP4 (yuv420p, so players everywhere open it)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # quality 100 -> crf 0 (lossless luma), 1 -> crf 51
        stream.options = {"crf": str(round((100 - quality) * 0.51)), "preset": "veryfast"}
        for array in frames.numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def encode_output(image: torch.Tensor, pixels: torch.Tensor, request: DecodeRequest) -> list[EncodedObject]:
    """``image``: (3, [F,] H, W) float in [0, 1]; ``pixels``: ([F,] H, W, 3) uint8 of the same decode."""
    fmt = request.output_format
    height, width = pixels.shape[-3], pixels.shape[-2]
    frames = pixels.shape[0] if pixels.ndim == 4 else 1
    content_type = request.content_type
    ext = EXTENSIONS[fmt]
    if fmt == "tensor":
        return [EncodedObject(st_save({"image": image.contiguous()}), content_type, ext, width, height, frames)]
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
