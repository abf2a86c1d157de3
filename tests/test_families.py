"""Every family through the whole system equals the pipeline's own in-process decode (<= 1 per 8-bit channel).

The reference path uses diffusers' real classes and the pipelines' own
helpers (FluxPipeline._unpack_latents, Flux2Pipeline's unpack/unpatchify,
VaeImageProcessor / VideoProcessor postprocessing), in fp32 on the CPU.
"""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers import Flux2Pipeline, FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.video_processor import VideoProcessor
from helpers import decode_png
from tiny_configs import CONFIGS

from latentq import Client
from latentq.models.registry import BUILTIN_MODELS

IMAGE_FAMILIES = ["sd15", "sdxl", "sd3", "flux1", "flux2", "taesd", "taesdxl", "taesd3", "taef1"]
VIDEO_FAMILIES = ["hunyuanvideo", "wan"]
H, W = 48, 64  # decoded image size: latents of 6x8


def reference_module(name: str, flux2_dir=None):
    spec = BUILTIN_MODELS[name]
    if name == "flux2":
        return diffusers.AutoencoderKLFlux2.from_pretrained(flux2_dir, subfolder="vae").eval()
    torch.manual_seed(0)  # the seed the models file gives the worker
    return getattr(diffusers, spec.diffusers_class).from_config(CONFIGS[name]).eval()


def make_flux2_weights(path):
    """FLUX.2's batch-norm statistics matter for its layout: give them non-trivial values."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLFlux2.from_config(CONFIGS["flux2"])
    vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.5)
    vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    vae.save_pretrained(path / "vae")


@pytest.fixture
def families_file(tmp_path, models_file):
    make_flux2_weights(tmp_path / "flux2")
    lines = [models_file.read_text()]
    for name in IMAGE_FAMILIES + VIDEO_FAMILIES:
        if name == "flux2":
            lines.append(f'[models.flux2]\nsource = "{tmp_path / "flux2"}"\n')
            continue
        (tmp_path / f"{name}.json").write_text(json.dumps(CONFIGS[name]))
        lines.append(f'[models.{name}]\nconfig = "{name}.json"\nseed = 0\n')
    models_file.write_text("\n".join(lines))
    return tmp_path


def pipeline_latent(name: str, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    spec = BUILTIN_MODELS[name]
    c = spec.latent_channels
    if spec.layout == "packed":
        return torch.randn(1, (H // 16) * (W // 16), 4 * c, generator=generator), {"height": H, "width": W}
    if spec.layout == "flux2":
        return torch.randn(1, (H // 16) * (W // 16), 4 * c, generator=generator), {"height": H, "width": W}
    if spec.layout == "video":
        return torch.randn(1, c, 3, H // 8, W // 8, generator=generator), {}
    return torch.randn(1, c, H // 8, W // 8, generator=generator), {}


@torch.no_grad()
def pipeline_decode(name: str, vae, latents: torch.Tensor) -> np.ndarray:
    """What the family's pipeline does with these latents after denoising, as uint8."""
    spec = BUILTIN_MODELS[name]
    config = vae.config
    if spec.layout == "packed":
        latents = FluxPipeline._unpack_latents(latents, H, W, 8)
    if spec.layout == "flux2":
        ids = Flux2Pipeline._prepare_latent_ids(torch.zeros(1, 1, H // 16, W // 16))
        latents = Flux2Pipeline._unpack_latents_with_ids(latents, ids)
        mean = vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps)
        latents = Flux2Pipeline._unpatchify_latents(latents * std + mean)
    elif name == "wan":
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
        std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
        latents = latents / std + mean
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    decoded = vae.decode(latents, return_dict=False)[0]
    if spec.is_video:
        frames = VideoProcessor(vae_scale_factor=8).postprocess_video(decoded, output_type="np")[0]
        return (frames * 255).round().astype("uint8")
    image = VaeImageProcessor(vae_scale_factor=8).postprocess(decoded, output_type="np")[0]
    return (image * 255).round().astype("uint8")


@pytest.mark.timeout(300)
def test_every_family_matches_its_pipeline_decode(procs, families_file):
    names = IMAGE_FAMILIES + VIDEO_FAMILIES
    procs.worker(*names, extra=("--no-previews",))
    client = Client()
    generator = torch.Generator().manual_seed(1)
    jobs = {}
    for name in names:
        latent, options = pipeline_latent(name, generator)
        fmt = "frames" if BUILTIN_MODELS[name].is_video else "png"
        jobs[name] = (latent, client.submit(latent, model=name, output_format=fmt, **options))
    failures = {}
    for name, (latent, job) in jobs.items():
        results = job.wait(timeout=240)
        expected = pipeline_decode(name, reference_module(name, families_file / "flux2"), latent)
        got = np.stack([decode_png(client.store.get(r.key)) for r in results])
        if not BUILTIN_MODELS[name].is_video:
            got = got[0]
        if got.shape != expected.shape:
            failures[name] = f"shape {got.shape} != {expected.shape}"
            continue
        diff = int(np.abs(got.astype(int) - expected.astype(int)).max())
        if diff > 1:
            failures[name] = f"max abs difference {diff}"
    assert not failures, failures
