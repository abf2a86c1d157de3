"""CogVideoX: ``AutoencoderKLCogVideoX`` (16 channels, 8x spatial, 4x temporal), frames-first latents.

CogVideoXPipeline after denoising: ``latents[:, additional_frames:]`` (CogVideoX 1.5 pads the latent
frames to a multiple of the transformer's ``patch_size_t``; ``num_frames``, the video's frames, tells
how many), then ``decode_latents``: ``permute(0, 2, 1, 3, 4)``, ``1 / scaling_factor * latents``,
``vae.decode``; ``postprocess_video``.

Encode: an image as CogVideoXImageToVideoPipeline's ``prepare_latents`` conditions on it: a one-frame
video, frames-first, ``* scaling_factor`` (``/`` where the config has ``invert_scale_latents``):
(B, 1, 16, h, w), before the pipeline's zero padding frames. The pipeline samples the posterior; here it
is the MODE, the distribution's centre: deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...errors import InvalidRequest
from .videobase import VideoFamily, encode_mode, scaling_of

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "CogVideoXFamily"]


class CogVideoXFamily(VideoFamily):
    name = "cogvideox"
    frames_first = True
    options = ("num_frames",)

    def padding(self, spec: ModelSpec, latent_frames: int, request: DecodeRequest) -> int:
        """The leading latent frames the pipeline discards."""
        if request.num_frames is None:
            return 0
        wanted = (request.num_frames - 1) // spec.temporal_factor + 1
        if wanted > latent_frames:
            raise InvalidRequest(f"num_frames {request.num_frames} needs {wanted} latent frames; the latent has "
                                 f"{latent_frames}", field="num_frames")  # fmt: skip
        return latent_frames - wanted

    def decoded_frames(self, spec: ModelSpec, latent_frames: int, request: DecodeRequest) -> int:
        kept = latent_frames - self.padding(spec, latent_frames, request)
        return (kept - 1) * spec.temporal_factor + 1

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        latents = latents[:, self.padding(model.spec, latents.shape[1], request) :]
        latents = latents.permute(0, 2, 1, 3, 4)
        return 1 / scaling_of(model, request) * latents

    def encode(self, model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
        latents = encode_mode(model, images).permute(0, 2, 1, 3, 4)
        scaling = model.module.config.scaling_factor
        if model.module.config.invert_scale_latents:  # CogVideoX 1.5's checkpoints, as the pipeline has it
            return (latents / scaling).cpu()
        return (latents * scaling).cpu()


FAMILY = CogVideoXFamily()
