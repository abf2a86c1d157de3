"""The image families through the whole system equal their diffusers pipelines' own output (<= 1 per 8-bit channel).

For each family a real diffusers pipeline is built from tiny random components (tests/pipelines_image.py)
and run twice with the same generator: once with ``output_type="latent"``, once with ``"np"``. Its VAE is
saved (``save_pretrained``, in the subfolder the built-in spec names) and the models file points the
built-in model at it, so the registry's own spec (layout, factors, family) decodes. The latents go
Client -> Redis -> one real worker process -> store as PNG; fp32 on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from helpers import decode_png
from pipelines_image import BUILDERS, build, run, vae_of
from safetensors.torch import load as st_load

from latentq import Client
from latentq.models.registry import BUILTIN_MODELS

pytestmark = pytest.mark.families

FAMILIES = list(BUILDERS)


def _pixels(image: np.ndarray) -> np.ndarray:
    """The pipeline's ``np`` output -> 8-bit, as its PIL conversion rounds."""
    return (image * 255).round().astype("uint8")


def _options(name: str, pipe, kwargs: dict) -> dict:
    """What the producer sends besides the latent: packed latents need the image size; SANA the size asked."""
    if name == "qwenimage":
        return {"height": kwargs["height"], "width": kwargs["width"]}
    if name == "sana":
        return {"height": kwargs["height"], "width": kwargs["width"]}
    return {}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Each family's pipeline run: its latents, its pixels, its VAE saved where the models file points."""
    root = tmp_path_factory.mktemp("image-families")
    cases = {}
    for name in FAMILIES:
        pipe, kwargs = build(name)
        latents = run(pipe, kwargs, "latent")
        pixels = _pixels(run(pipe, kwargs, "np")[0])
        vae_of(pipe).save_pretrained(root / name / BUILTIN_MODELS[name].subfolder)
        cases[name] = (latents, pixels, _options(name, pipe, kwargs), pipe, kwargs)
    return root, cases


@pytest.mark.timeout(400)
def test_image_families_match_their_pipelines(procs, models_file, references):
    root, cases = references
    lines = [models_file.read_text()] + [f'[models.{name}]\nsource = "{root / name}"\n' for name in FAMILIES]
    models_file.write_text("\n".join(lines))
    procs.worker(*FAMILIES, extra=("--no-previews",))
    client = Client()
    jobs = {name: client.submit(latents, model=name, output_format="png", **options)
            for name, (latents, _, options, _, _) in cases.items()}  # fmt: skip
    # Qwen-Image's latents unpacked, (1, 16, h, w), as remote_encode returns them: no height/width needed.
    latents, _, options, _, _ = cases["qwenimage"]
    unpacked = QwenImagePipeline._unpack_latents(latents, options["height"], options["width"], 8)[:, :, 0]
    jobs["qwenimage-unpacked"] = client.submit(unpacked, model="qwenimage", output_format="png")

    failures = {}
    for name, job in jobs.items():
        (result,) = job.wait(timeout=300)
        got = decode_png(client.store.get(result.key))
        expected = cases[name.removesuffix("-unpacked")][1]
        if got.shape != expected.shape:
            failures[name] = f"shape {got.shape} != {expected.shape}"
            continue
        diff = int(np.abs(got.astype(int) - expected.astype(int)).max())
        if diff > 1:
            failures[name] = f"max abs difference {diff}"
    assert not failures, failures

    # Encoders: what each family's img2img pipeline computes from an image (posterior mode; DC-AE and
    # movq are deterministic), through an encode job.
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for name in ("qwenimage", "sana", "kandinsky22", "zimage"):
        (result,) = client.submit_encode(image, name).wait(timeout=300)
        got = st_load(client.store.get(result.key))["latent"]
        expected = _pipeline_encode(name, cases[name][3], image)
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (name, float((got - expected).abs().max()))


@torch.no_grad()
def _pipeline_encode(name: str, pipe, image: torch.Tensor) -> torch.Tensor:
    """The img2img pipelines' own encode arithmetic (``_encode_vae_image`` / ``prepare_latents``)."""
    x = image * 2 - 1
    vae = vae_of(pipe)
    if name == "qwenimage":  # QwenImageImg2ImgPipeline._encode_vae_image, with the posterior's mode
        z = vae.encode(x.unsqueeze(2)).latent_dist.mode()
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
        return ((z - mean) * std)[:, :, 0]
    if name == "sana":  # SanaSprintImg2ImgPipeline: vae.encode(image).latent * scaling_factor
        return vae.encode(x).latent * vae.config.scaling_factor
    if name == "kandinsky22":  # KandinskyV22Img2ImgPipeline: movq.encode(image)["latents"]
        return vae.encode(x)["latents"]
    z = vae.encode(x).latent_dist.mode()  # ZImageImg2ImgPipeline: (latents - shift) * scaling
    return (z - vae.config.shift_factor) * vae.config.scaling_factor
