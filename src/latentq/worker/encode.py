"""Encode decoded pixels into the requested output format (runs on the encode thread pool)."""

from __future__ import annotations

import io

import torch
from PIL import Image
from safetensors.torch import save as st_save

from ..spec import DecodeRequest

__all__ = ["EncodedObject", "encode_output", "EXTENSIONS"]

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "tensor": "safetensors", "uint8": "safetensors"}


class EncodedObject:
    __slots__ = ("data", "content_type", "ext", "width", "height")

    def __init__(self, data: bytes, content_type: str, ext: str, width: int, height: int) -> None:
        self.data = data
        self.content_type = content_type
        self.ext = ext
        self.width = width
        self.height = height


def encode_output(image: torch.Tensor, pixels: torch.Tensor, request: DecodeRequest) -> EncodedObject:
    """``image``: (3, H, W) float in [0, 1]; ``pixels``: (H, W, 3) uint8 of the same image."""
    height, width = pixels.shape[0], pixels.shape[1]
    fmt = request.output_format
    if fmt == "tensor":
        data = st_save({"image": image.contiguous()})
    elif fmt == "uint8":
        data = st_save({"image": pixels.contiguous()})
    else:
        buffer = io.BytesIO()
        picture = Image.fromarray(pixels.numpy())
        if fmt == "png":
            picture.save(buffer, format="PNG", compress_level=1)  # speed over a few % of size
        elif fmt == "jpeg":
            picture.save(buffer, format="JPEG", quality=request.quality)
        else:
            picture.save(buffer, format="WEBP", quality=request.quality)
        data = buffer.getvalue()
    return EncodedObject(data, request.content_type, EXTENSIONS[fmt], width, height)
