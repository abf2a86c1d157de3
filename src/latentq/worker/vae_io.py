"""RemoteVAE's encode on a worker: what ``vae.encode`` returns to a pipeline, for it to sample itself.

A pipeline samples the encoder's posterior with its own generator (``retrieve_latents``:
``latent_dist.sample(generator)``), so a remote encode must hand back the distribution, not a
latent: the posterior's raw parameters (mean and log-variance, (B, 2C, h, w): what
``DiagonalGaussianDistribution`` is built from), or, for the classes without one (tiny
autoencoders, DC-AE, VQ), the ``latents`` their ``encode`` returns. No scaling: the pipeline scales.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..models.loader import LoadedModel

__all__ = ["encode_vae_input"]


def encode_vae_input(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """``vae.encode(x)`` for the batch a pipeline handed it ([-1, 1]) -> the posterior's parameters, or the
    latents of an encoder without a distribution; float32 on the CPU. Untiled, as a local VAE by default."""
    module = model.module
    with model.lock, torch.inference_mode():
        if hasattr(module, "use_tiling"):
            module.use_tiling = False
        out = module.encode(x.to(model.device, model.dtype))
    if isinstance(out, torch.Tensor):  # latentq's own TAEF2
        return out.float().cpu()
    dist = getattr(out, "latent_dist", None)
    raw = dist.parameters if dist is not None else out.latents
    return raw.float().cpu()
