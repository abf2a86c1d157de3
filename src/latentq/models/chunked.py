"""A video decode handed on chunk by chunk: the frames of each temporal chunk as soon as the VAE made them.

Some video VAEs already decode in a loop over latent frames, each ``self.decoder(...)`` call making the
final frames of its chunk (a causal feature cache carries the context), then ``torch.cat`` the chunks:

  AutoencoderKLWan        one latent frame per call (1 frame, then 4 each); Wan 2.2 unpatchifies per frame
  AutoencoderKLCogVideoX  ``num_latent_frames_batch_size`` latent frames per call (conv_cache between them)
  AutoencoderKLMagvit     the first latent frame, then batches of latent frames (EasyAnimate)

A forward hook on ``module.decoder`` hands each call's output on while the class's own ``decode`` runs
unchanged; the family's post-processing (Wan's unpatchify and clamp, ``.float()``, [-1, 1] -> [0, 1]) is
per frame or per element, so the chunks, concatenated, are the whole decode's frames bit for bit. The
other classes decode whole (HunyuanVideo 1.5 in one call; Mochi unless framewise, and then it drops
leading frames; HunyuanVideo blends overlapping temporal tiles; LTX, Allegro, SVD differ again), as do
tiled decodes (overlapping tiles are blended: a chunk is not final) and ``vae_input`` jobs (unclamped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from .families.generic import GenericFamily
from .families.videobase import VideoFamily

if TYPE_CHECKING:
    from ..core.request import DecodeRequest
    from .loader import LoadedModel

__all__ = ["STREAMED_CLASSES", "decode_chunks", "streams"]

STREAMED_CLASSES = ("AutoencoderKLWan", "AutoencoderKLCogVideoX", "AutoencoderKLMagvit")


def _plain_decode(model: LoadedModel) -> bool:
    """Whether the family's decode is the plain ``vae.decode`` + [0, 1] that the chunks reproduce."""
    method = type(model.family).decode
    if method is GenericFamily.decode:
        return model.spec.layout == "video"
    return method is VideoFamily.decode


def streams(model: LoadedModel, request: DecodeRequest, tile: bool) -> bool:
    """Whether ``decode_chunks`` can decode this request (untiled, chunk by chunk, same frames)."""
    return (not tile and not request.vae_input and model.spec.loader == "diffusers"
            and type(model.module).__name__ in STREAMED_CLASSES and model.spec.output_kind == "video"
            and _plain_decode(model) and isinstance(getattr(model.module, "decoder", None), torch.nn.Module))  # fmt: skip


def _to_unit(model: LoadedModel, raw: torch.Tensor) -> torch.Tensor:
    """One chunk of the decoder's raw output -> float32 in [0, 1], by the ops (in their order) that the
    class's ``_decode`` and the family apply to the whole video: all per frame or per element."""
    module = model.module
    if type(module).__name__ == "AutoencoderKLWan":  # its _decode, after the loop
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        if module.config.patch_size is not None:
            raw = unpatchify(raw, patch_size=module.config.patch_size)
        raw = torch.clamp(raw, min=-1.0, max=1.0)
    out = raw.float()  # vae_call's / vae_decode's
    if type(model.family).decode is GenericFamily.decode:
        return model.to_unit(out)  # LoadedModel.decode_vae's
    return (out / 2 + 0.5).clamp(0, 1)  # videobase.to_video01's, kept on the device


@contextlib.contextmanager
def _hooked(decoder: torch.nn.Module, on_output: Callable[[torch.Tensor], None]) -> Iterator[None]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        on_output(output[0] if isinstance(output, tuple) else output)  # CogVideoX's: (frames, conv_cache)

    handle = decoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def decode_chunks(model: LoadedModel, latents: torch.Tensor, request: DecodeRequest,
                  on_chunk: Callable[[torch.Tensor], None]) -> int:  # fmt: skip
    """Decode a batch of pipeline latents (one shape; ``streams`` said yes) untiled, calling ``on_chunk`` with
    each temporal chunk's frames, (B, 3, f, H, W) float32 in [0, 1] on the model's device (the compute
    stream), in order, as the decoder makes them. Returns the frames decoded; raises what the decode raises
    (``on_chunk`` may have seen some chunks by then)."""
    module = model.module
    frames = 0

    def chunk(raw: torch.Tensor) -> None:
        nonlocal frames
        images = _to_unit(model, raw)
        frames += images.shape[2]
        on_chunk(images)

    with model.path.computing():
        z = model.path.to_device(latents, torch.float32)
        z = model.family.to_vae(model, z, request).to(model.device, model.dtype)
        with model.lock, _hooked(module.decoder, chunk):  # the lock: no other decode sees the hook
            module.use_tiling = False
            if hasattr(module, "use_slicing"):
                module.use_slicing = False
            out = module.decode(z, return_dict=False)[0]
    if out.shape[2] != frames:  # a class whose decode no longer matches this module's reading of it
        raise RuntimeError(f"{type(module).__name__}: the decoder's chunks made {frames} frames, its decode "
                           f"{out.shape[2]}")  # fmt: skip
    return frames
