"""Stable Video Diffusion: ``AutoencoderKLTemporalDecoder`` (4 channels, 8x spatial), frames-first latents.

StableVideoDiffusionPipeline.decode_latents: flatten batch and frames, ``1 / scaling_factor * latents``,
decode ``decode_chunk_size`` frames at a time (the temporal decoder mixes the frames of one call, so the
chunking changes the pixels; the pipeline's default is all frames at once), ``num_frames`` per call,
back to (B, 3, F, H, W); ``postprocess_video``.

Encode: the image latents StableVideoDiffusionPipeline's ``_encode_vae_image`` conditions on: its 2-D
encoder's mode, NOT scaled (the pipeline conditions on them unscaled), without the pipeline's
``noise_aug_strength`` noise (random; add it to the image first to match a run): frames-first
(B, 1, 4, h, w), the one frame the pipeline repeats ``num_frames`` times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .videobase import VideoFamily, encode_mode, scaling_of, to_video01, vae_call

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "SVDFamily"]


class SVDFamily(VideoFamily):
    name = "svd"
    frames_first = True
    options = ("decode_chunk_size",)

    def decoded_frames(self, spec: ModelSpec, latent_frames: int, request: DecodeRequest) -> int:
        return latent_frames

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        return latents  # frames stay frames-first: decode flattens them per sample

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        num_frames = z.shape[1]
        chunk = request.decode_chunk_size or num_frames
        videos = []
        for sample in 1 / scaling_of(model, request) * z:  # chunks never straddle two jobs' samples
            frames = [vae_call(model, sample[i : i + chunk], tile=False, num_frames=sample[i : i + chunk].shape[0])
                      for i in range(0, num_frames, chunk)]  # fmt: skip
            videos.append(torch.cat(frames))
        return to_video01(torch.stack(videos).permute(0, 2, 1, 3, 4))

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        return encode_mode(model, images, as_video=False).unsqueeze(1).cpu()


FAMILY = SVDFamily()
