"""Every output format decodes back with a standard reader to the expected size, frames and values."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import torch
from helpers import decode_png, photo_latent, psnr, reference_pixels, taef2
from PIL import Image
from safetensors.torch import load as st_load
from test_families import CONFIGS

from latentq import Client
from latentq.models.loader import to_uint8

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def video_models_file(models_file, tmp_path):
    (tmp_path / "hv.json").write_text(json.dumps(CONFIGS["hunyuanvideo"]))
    models_file.write_text(models_file.read_text() + '\n[models.hunyuanvideo]\nconfig = "hv.json"\nseed = 0\n')
    return models_file


def test_image_formats(procs):
    procs.worker("taef2")
    client = Client()
    latent, _ = photo_latent("chelsea.png")
    expected_float = taef2().decode(latent)[0]
    expected = reference_pixels(taef2(), latent)
    jobs = {fmt: client.submit(latent, model="taef2", output_format=fmt) for fmt in ["png", "jpeg", "webp", "tensor", "uint8"]}
    data = {fmt: client.store.get(job.wait(60)[0].key) for fmt, job in jobs.items()}
    height, width = expected.shape[:2]

    assert np.array_equal(decode_png(data["png"]), expected)  # lossless
    for fmt, pil_format in [("jpeg", "JPEG"), ("webp", "WEBP")]:
        picture = Image.open(io.BytesIO(data[fmt]))
        assert picture.format == pil_format and picture.size == (width, height)
        assert psnr(np.asarray(picture.convert("RGB")), expected) > 30
    tensor = st_load(data["tensor"])["image"]
    assert tensor.shape == (3, height, width) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, expected_float, atol=1e-4)
    pixels = st_load(data["uint8"])["image"]
    assert pixels.dtype == torch.uint8 and np.array_equal(pixels.numpy(), expected)


def test_video_formats(procs, video_models_file):
    import diffusers

    procs.worker("hunyuanvideo", extra=("--no-previews",))
    client = Client()
    latent = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(3))  # 9 frames of 48x32
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLHunyuanVideo.from_config(CONFIGS["hunyuanvideo"]).eval()
    with torch.no_grad():
        video = vae.decode(latent / 0.476986, return_dict=False)[0]
    expected = to_uint8((video / 2 + 0.5).clamp(0, 1))[0].numpy()  # (F, H, W, 3)

    jobs = {fmt: client.submit(latent, model="hunyuanvideo", output_format=fmt, fps=8, quality=100)
            for fmt in ["mp4", "frames", "uint8", "tensor"]}  # fmt: skip
    mp4 = jobs["mp4"].wait(120)
    assert mp4[0].content_type == "video/mp4" and mp4[0].frames == 9
    with av.open(io.BytesIO(client.store.get(mp4[0].key))) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == 8
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    assert decoded.shape == expected.shape == (9, 32, 48, 3)
    assert psnr(decoded, expected) > 25  # yuv420p chroma subsampling bounds it, even at crf 0

    frames = jobs["frames"].wait(120)
    assert [r.frame for r in frames] == list(range(9))
    got = np.stack([decode_png(client.store.get(r.key)) for r in frames])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    pixels = st_load(client.store.get(jobs["uint8"].wait(120)[0].key))["image"]
    assert pixels.shape == (9, 32, 48, 3) and np.abs(pixels.numpy().astype(int) - expected.astype(int)).max() <= 1
    tensor = st_load(client.store.get(jobs["tensor"].wait(120)[0].key))["image"]
    assert tensor.shape == (3, 9, 32, 48)


def test_video_model_refuses_image_formats(env, video_models_file):
    from latentq.errors import UnsupportedFormat

    with pytest.raises(UnsupportedFormat, match="mp4"):
        Client().submit(torch.randn(1, 16, 3, 4, 6), model="hunyuanvideo", output_format="png")
