"""Encode jobs of the generic video models (``wan``, ``hunyuanvideo``) equal what their image-to-video
pipelines condition on: ``WanImageToVideoPipeline.prepare_latents`` (Wan 2.1: the image and zero frames,
encoded, normalised; the image's own latent is its first frame, the VAE being causal) and
``HunyuanVideoImageToVideoPipeline.prepare_latents`` (the image's mode, scaled). Tiny random VAEs of the
real classes, through Client -> Redis -> a real worker -> store; fp32 on the CPU.
"""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from safetensors.torch import load as st_load
from tiny_configs import CONFIGS

from latentq import Client

pytestmark = pytest.mark.families

WAN = dict(CONFIGS["wan"], latents_mean=torch.linspace(-0.4, 0.4, 16).tolist(),
           latents_std=torch.linspace(0.5, 2.5, 16).tolist())  # fmt: skip
HEIGHT, WIDTH, FRAMES = 32, 48, 5


@pytest.fixture
def video_vaes(models_file, tmp_path):
    configs = {"wan": WAN, "hunyuanvideo": CONFIGS["hunyuanvideo"]}
    text = models_file.read_text()
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        text += f'\n[models.{name}]\nconfig = "{name}.json"\nseed = 0\n'
    models_file.write_text(text)
    vaes = {}
    for name, cls in (("wan", diffusers.AutoencoderKLWan), ("hunyuanvideo", diffusers.AutoencoderKLHunyuanVideo)):
        torch.manual_seed(0)  # as the worker builds a model declared by its config and seed
        vaes[name] = cls.from_config(configs[name]).eval()
    return vaes


def _expected(vaes: dict, image: torch.Tensor) -> dict[str, torch.Tensor]:
    from diffusers import HunyuanVideoImageToVideoPipeline, WanImageToVideoPipeline

    pixels = 2.0 * image - 1.0  # VideoProcessor.preprocess: [-1, 1]
    expected = {}
    with torch.no_grad():
        pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vaes["wan"], scheduler=None,
                                       transformer=None)  # fmt: skip
        _, condition = pipe.prepare_latents(pixels, 1, 16, HEIGHT, WIDTH, FRAMES, torch.float32, torch.device("cpu"),
                                            torch.Generator().manual_seed(0))  # fmt: skip
        expected["wan"] = condition[:, 4:, :1]  # after the 4 mask channels: the image's latent frame
        pipe = HunyuanVideoImageToVideoPipeline(text_encoder=None, tokenizer=None, transformer=None,
                                                vae=vaes["hunyuanvideo"], scheduler=None, text_encoder_2=None,
                                                tokenizer_2=None, image_processor=None)  # fmt: skip
        _, image_latents = pipe.prepare_latents(pixels, 1, 16, HEIGHT, WIDTH, 1, torch.float32, torch.device("cpu"),
                                                torch.Generator().manual_seed(0))  # fmt: skip
        expected["hunyuanvideo"] = image_latents
    return expected


@pytest.mark.timeout(300)
def test_wan_and_hunyuanvideo_encode_as_their_image_to_video_pipelines(procs, video_vaes):
    image = torch.randint(0, 256, (1, 3, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(4)) / 255.0
    expected = _expected(video_vaes, image)
    procs.worker("wan", "hunyuanvideo", extra=("--no-previews",))
    client = Client()
    assert client.registry.get("wan").offers_encoder and client.registry.get("hunyuanvideo").offers_encoder
    jobs = {name: client.submit_encode(image, name) for name in expected}
    for name, job in jobs.items():
        (result,) = job.wait(timeout=120)
        got = st_load(client.store.get(result.key))["latent"]
        assert got.shape == expected[name].shape == (1, 16, 1, HEIGHT // 8, WIDTH // 8), name
        assert torch.allclose(got, expected[name], atol=1e-5), (name, float((got - expected[name]).abs().max()))
