"""Decode quality through the system: TAEF2 photographs, tiled decodes, previews, the models listing."""

from __future__ import annotations

import json

import diffusers
import httpx
import numpy as np
import pytest
import torch
from conftest import IMAGES_DIR
from helpers import decode_png, photo_latent, psnr, taef2
from test_families import CONFIGS, H, W, make_flux2_weights

from latentq import Client, JobStatus
from latentq.cli.demo import load_image
from latentq.models.loader import to_uint8

pytestmark = pytest.mark.timeout(300)


def test_taef2_round_trip_of_every_photograph(procs):
    procs.worker("taef2")
    client = Client()
    photos = sorted(IMAGES_DIR.glob("*.png"))
    assert len(photos) >= 3
    jobs = {}
    for path in photos:
        latent, original = photo_latent(path.name)
        jobs[path.name] = (original, client.submit(latent, model="taef2"))
    for name, (original, job) in jobs.items():
        job.wait(120)
        value = psnr(decode_png(job.read()), original)
        assert value >= 29.0, (name, value)


def test_tiled_decode_above_the_threshold(procs, tmp_path, models_file):
    config = dict(CONFIGS["sd15"], sample_size=64)  # diffusers tiles in 64-pixel tiles
    (tmp_path / "sd15.json").write_text(json.dumps(config))
    models_file.write_text(models_file.read_text() + '\n[models.sd15]\nconfig = "sd15.json"\ntile_above_pixels = 4096\n')
    procs.worker("sd15", extra=("--no-previews",))
    api = procs.api()
    sd15 = next(m for m in httpx.get(f"{api}/v1/models").json()["models"] if m["name"] == "sd15")
    assert sd15["tile_above_pixels"] == 4096

    client = Client()
    latent = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))  # 192x192 > 64x64
    auto, untiled = client.submit(latent, model="sd15"), client.submit(latent, model="sd15", tile=False)
    small = client.submit(torch.randn(1, 4, 8, 8), model="sd15")  # 64x64: at the threshold, not above
    auto.wait(120), untiled.wait(120), small.wait(120)
    assert auto.info().tiled is True and untiled.info().tiled is False and small.info().tiled is False

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL.from_config(config).eval()
    with torch.no_grad():
        plain = to_uint8((vae.decode(latent / 0.18215).sample / 2 + 0.5).clamp(0, 1))[0].numpy().astype(int)
        vae.enable_tiling()
        tiled = to_uint8((vae.decode(latent / 0.18215).sample / 2 + 0.5).clamp(0, 1))[0].numpy().astype(int)
    got_tiled = decode_png(auto.read()).astype(int)
    got_plain = decode_png(untiled.read()).astype(int)
    assert np.abs(got_plain - plain).max() <= 1
    assert np.abs(got_tiled - tiled).max() <= 1
    # The tiled result departs from the untiled one no more than diffusers' own tiling does.
    assert np.abs(got_tiled - got_plain).max() <= np.abs(tiled - plain).max() + 1


@pytest.mark.parametrize("encode_threads", ["0", "2"])  # a CPU worker's default; a GPU worker's threads
def test_preview_is_published_before_the_full_result(procs, tmp_path, models_file, encode_threads):
    make_flux2_weights(tmp_path / "flux2")
    models_file.write_text(models_file.read_text() + f'\n[models.flux2]\nsource = "{tmp_path / "flux2"}"\n')
    procs.worker("flux2", env={"LATENTQ_FAULTS": json.dumps({"decode_delay_s": 2.0})},
                 extra=("--encode-threads", encode_threads))  # fmt: skip
    client = Client()
    latent = torch.randn(1, (H // 16) * (W // 16), 128)
    job = client.submit(latent, model="flux2", height=H, width=W, preview=True)
    seen_preview_while = None
    for _ in range(600):
        info = job.info()
        if info.preview is not None:
            seen_preview_while = info.status
            break
        assert info.status is not JobStatus.FINISHED, "finished without a preview"
        import time

        time.sleep(0.02)
    assert seen_preview_while in (JobStatus.STARTED, JobStatus.QUEUED)
    (full,) = job.wait(60)
    info = job.info()
    preview = decode_png(client.store.get(info.preview.key))
    assert preview.shape == (H, W, 3) and decode_png(job.read()).shape == (H, W, 3)
    # The preview is TAEF2's decode of FLUX.2's unpacked, denormalised latent.
    diffusers_vae = diffusers.AutoencoderKLFlux2.from_pretrained(tmp_path / "flux2", subfolder="vae")
    from latentq.core.layouts import unpack

    bn = diffusers_vae.bn
    z = unpack("flux2", latent, spatial_factor=8, height=H, width=W, bn_mean=bn.running_mean,
               bn_std=torch.sqrt(bn.running_var + diffusers_vae.config.batch_norm_eps))  # fmt: skip
    expected = to_uint8(taef2().decode(z))[0].numpy()
    assert np.abs(preview.astype(int) - expected.astype(int)).max() <= 1


def test_models_listing(procs):
    api = procs.api()
    models = {m["name"]: m for m in httpx.get(f"{api}/v1/models").json()["models"]}
    assert {"sd15", "sdxl", "sd3", "flux1", "flux2", "hunyuanvideo", "wan", "taesd", "taesdxl", "taesd3",
            "taef1", "taef2"} <= set(models)  # fmt: skip
    assert models["flux1"]["layout"] == "packed" and models["flux1"]["latent_shape"][-1] == 64
    assert (models["sd3"]["scaling_factor"], models["sd3"]["shift_factor"]) == (1.5305, 0.0609)
    assert models["wan"]["normalization"] == "latents_mean_std" and "mp4" in models["wan"]["output_formats"]
    assert models["sdxl"]["preview"] == "taesdxl" and models["sdxl"]["source"] == "madebyollin/sdxl-vae-fp16-fix"
    assert all(m["loaded"] is False for m in models.values())
    procs.worker("taef2")
    models = {m["name"]: m for m in httpx.get(f"{api}/v1/models").json()["models"]}
    assert models["taef2"]["loaded"] is True and models["sd15"]["loaded"] is False


def test_load_image_crops_to_the_spatial_factor():
    assert load_image(IMAGES_DIR / "coffee.png").shape == (400, 600, 3)
