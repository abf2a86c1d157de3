"""Real weights: TAEF2 from the shared folder, and diffusers' from_pretrained on a local path."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TAEF2_DIR
from diffusers import AutoencoderKL
from helpers import photo_latent, psnr

from latentq.errors import ModelLoadError
from latentq.models.loader import load_model, to_uint8
from latentq.models.registry import load_registry
from latentq.models.taef2 import TAEF2

pytestmark = pytest.mark.timeout(120)


def test_taef2_loads_every_published_key_strictly():
    from safetensors import safe_open

    model = TAEF2.from_file(TAEF2_DIR / "taef2.safetensors")
    with safe_open(str(TAEF2_DIR / "taef2.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(model.state_dict())


def test_taef2_round_trip_of_a_photograph():
    latent, original = photo_latent("chelsea.png")
    assert latent.shape == (1, 32, original.shape[0] // 8, original.shape[1] // 8)
    from helpers import taef2

    decoded = to_uint8(taef2().decode(latent))[0].numpy()
    assert psnr(decoded, original) >= 29.0


def test_missing_local_weights_is_a_clear_error(tmp_path):
    spec = dataclasses.replace(load_registry(None).get("taef2"), source=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(spec)


def test_sd15_loads_from_a_local_diffusers_folder(tmp_path):
    """The hub loading path (from_pretrained with subfolder), pointed at a local folder."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    vae.save_pretrained(tmp_path / "vae")
    spec = dataclasses.replace(load_registry(None).get("sd15"), source=str(tmp_path))
    model = load_model(spec)
    latent = torch.randn(1, 4, 8, 8)
    expected = (vae.decode(latent / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    got = model.decode(latent)
    assert np.abs(to_uint8(got).numpy().astype(int) - to_uint8(expected.detach()).numpy().astype(int)).max() <= 1
