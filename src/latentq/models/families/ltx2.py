"""LTX-2's video: ``AutoencoderKLLTX2Video`` (128 channels, 32x spatial, 8x temporal), timestep-conditioned.

LTX2Pipeline with ``output_type="latent"`` returns the video latents unpacked and already denormalised
(``_denormalize_latents``: ``latents * latents_std / scaling_factor + latents_mean``): (B, 128, f, h, w),
what this family takes. Its pixel path mixes the decode noise into the *normalised* latents,
``(1 - decode_noise_scale) * latents + decode_noise_scale * noise``, then denormalises and calls
``vae.decode(latents, decode_timestep)``; here the latents are normalised back first when there is noise
to mix (``decode_noise_seed`` seeds it, as in ``ltxvideo``). Its audio latents: the ``ltx2audio`` family;
a job may carry them beside the video's (``audio_latents``, one MP4 with sound: ``latentq.worker.av``), and
then ``audio_decoder`` loads the spec's ``audio_model`` beside the video VAE, once.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch

from ..loader import load_model
from ..validate import audio_spec_of
from .videobase import VideoFamily, pipeline_noise, scaling_of, timestep_kwargs, to_video01, vae_call

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel

__all__ = ["FAMILY", "LTX2Family"]


class LTX2Family(VideoFamily):
    name = "ltx2"
    options = ("decode_timestep", "decode_noise_scale", "decode_noise_seed")

    def __init__(self) -> None:
        # keyed by the video VAE module: an evicted model's audio decoder goes with it
        self._audio: weakref.WeakKeyDictionary[torch.nn.Module, LoadedModel] = weakref.WeakKeyDictionary()
        self._loading = threading.Lock()

    def audio_decoder(self, model: LoadedModel) -> LoadedModel:
        """The spec's ``audio_model`` (the registry's, from the worker's models file), loaded on the video
        model's device in its dtype on the first job with audio_latents, then kept with it."""
        with self._loading:
            loaded = self._audio.get(model.module)
            if loaded is None:
                spec = audio_spec_of(model.spec)
                dtype = str(model.dtype).removeprefix("torch.")
                loaded = self._audio[model.module] = load_model(spec, model.device, dtype)
            return loaded

    @staticmethod
    def _timestep(request: DecodeRequest) -> float:
        return request.decode_timestep if request.decode_timestep is not None else 0.0

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        module = model.module
        scale = request.decode_noise_scale if request.decode_noise_scale is not None else self._timestep(request)
        if not module.config.timestep_conditioning or not scale:
            return latents  # denormalise(normalise(x)) is x: the pipeline's latents, as they came
        mean = module.latents_mean.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        std = module.latents_std.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
        scaling = scaling_of(model, request)
        normalised = (latents - mean) * scaling / std  # LTX2Pipeline._normalize_latents
        noise = torch.cat([pipeline_noise((1, *latents.shape[1:]), request.decode_noise_seed)] * latents.shape[0])
        scale_t = torch.tensor(scale, dtype=latents.dtype, device=latents.device)
        mixed = (1 - scale_t) * normalised + scale_t * noise.to(latents.device)
        return mixed * std / scaling + mean

    def vae_input_kwargs(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest) -> dict[str, Any]:
        return timestep_kwargs(model, z, request)

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        if not model.module.config.timestep_conditioning:
            return to_video01(vae_call(model, z, tile=tile))
        timestep = torch.full((z.shape[0],), self._timestep(request), dtype=torch.float32)
        return to_video01(vae_call(model, z, tile=tile, temb=timestep))


FAMILY = LTX2Family()
