"""diffusers' own remote_decode / remote_encode, unmodified, against a live latentq (worker + API processes).

Every answer is compared with what /v1/jobs gives for the same latent: the
remote-VAE routes are only another door onto the same queues and workers.
"""

from __future__ import annotations

import io
import json

import av
import httpx
import numpy as np
import pytest
import requests
import torch
from conftest import IMAGES_DIR
from diffusers import AutoencoderKL, FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import remote_utils
from diffusers.utils.remote_utils import remote_decode, remote_encode
from diffusers.video_processor import VideoProcessor
from helpers import decode_png
from PIL import Image
from safetensors.torch import load as st_load
from tiny_configs import CONFIGS

import latentq
from latentq import Client
from latentq.core.wire import latent_to_bytes

H, W = 48, 64  # decoded size: SD latents of 6x8, FLUX tokens of 3x4
SD15 = dict(scaling_factor=0.18215)
FLUX1 = dict(scaling_factor=0.3611, shift_factor=0.1159, height=H, width=W)


@pytest.fixture
def remote_models(models_file, tmp_path):
    """Shrunken random-weight sd15, flux1 and hunyuanvideo next to the real TAEF2."""
    lines = [models_file.read_text()]
    for name in ("sd15", "flux1", "hunyuanvideo"):
        (tmp_path / f"{name}.json").write_text(json.dumps(CONFIGS[name]))
        lines.append(f'[models.{name}]\nconfig = "{name}.json"\nseed = 0\n')
    models_file.write_text("\n".join(lines))
    return models_file


@pytest.fixture
def live(procs, remote_models):
    """A worker serving every model of the file, and the API; returns the API's base URL."""
    procs.worker("sd15", "flux1", "hunyuanvideo", "taef2", extra=("--no-previews",))
    return procs.api()


def endpoint(api: str, model: str, task: str = "decode") -> str:
    return f"{api}/v1/models/{model}/{task}"


def via_jobs(api: str, latent: torch.Tensor, model: str, fmt: str, **params) -> bytes:
    """The same latent through POST /v1/jobs: the bytes of its first result."""
    submitted = httpx.post(f"{api}/v1/jobs", params={"model": model, "output_format": fmt, **params},
                           content=latent_to_bytes(latent)).json()  # fmt: skip
    body = httpx.get(submitted["status_url"], params={"wait": 120}, timeout=130).json()
    assert body["status"] == "finished", body
    return httpx.get(body["results"][0]["url"]).content


def pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.timeout(300)
def test_sd_and_flux_images_equal_the_jobs_route(live):
    g = torch.Generator().manual_seed(0)
    sd = torch.randn(1, 4, H // 8, W // 8, generator=g, dtype=torch.float32).half()  # the blog's float16 latents
    png = remote_decode(endpoint=endpoint(live, "sd15"), tensor=sd, image_format="png", **SD15)
    assert isinstance(png, Image.Image) and png.size == (W, H) and png.format == "png"
    assert np.array_equal(pixels(png), decode_png(via_jobs(live, sd, "sd15", "png", **SD15)))

    jpg = remote_decode(endpoint=endpoint(live, "sd15"), tensor=sd, **SD15)  # default image_format="jpg"
    assert jpg.format == "jpeg" and jpg.size == (W, H)
    assert max_diff(pixels(jpg), decode_png(via_jobs(live, sd, "sd15", "jpeg", **SD15))) <= 1
    # The bytes themselves are the worker's JPEG, as /v1/jobs stores it.
    kwargs = remote_utils.prepare_decode(tensor=sd, image_format="jpg", **SD15)
    raw = requests.post(endpoint(live, "sd15"), **kwargs)
    assert raw.headers["content-type"] == "image/jpeg" and raw.content == via_jobs(live, sd, "sd15", "jpeg", **SD15)

    packed = torch.randn(1, (H // 16) * (W // 16), 64, generator=g)
    flux = remote_decode(endpoint=endpoint(live, "flux1"), tensor=packed, image_format="png", **FLUX1)
    assert flux.size == (W, H)
    assert np.array_equal(pixels(flux), decode_png(via_jobs(live, packed, "flux1", "png", **FLUX1)))

    # No factors at all: the latent is already un-scaled (scaling 1, shift 0), as the protocol says.
    plain = remote_decode(endpoint=endpoint(live, "sd15"), tensor=sd.float() / 0.18215, do_scaling=False,
                          image_format="png")
    assert max_diff(pixels(plain), pixels(png)) <= 1


@pytest.mark.timeout(300)
def test_tensor_outputs_with_and_without_partial_postprocess(live):
    latent = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
    url = endpoint(live, "sd15")
    expected = decode_png(via_jobs(live, latent, "sd15", "png", **SD15))
    floats = st_load(via_jobs(live, latent, "sd15", "tensor", **SD15))["image"]

    uint8 = remote_decode(endpoint=url, tensor=latent, output_type="pt", partial_postprocess=True,
                          return_type="pt", **SD15)  # fmt: skip
    assert uint8.dtype == torch.uint8 and uint8.shape == (1, H, W, 3)
    assert np.array_equal(uint8[0].numpy(), expected)
    picture = remote_decode(endpoint=url, tensor=latent, output_type="pt", partial_postprocess=True, **SD15)
    assert isinstance(picture, Image.Image) and np.array_equal(pixels(picture), expected)

    raw = remote_decode(endpoint=url, tensor=latent, output_type="pt", return_type="pt", **SD15)
    assert raw.dtype == torch.float32 and raw.shape == (1, 3, H, W)
    assert float(raw.min()) >= -1 and float(raw.max()) <= 1  # the VAE's own range, not yet denormalized
    assert torch.allclose((raw[0] + 1) / 2, floats, atol=1e-6)
    processor = VaeImageProcessor(vae_scale_factor=8)
    picture = remote_decode(endpoint=url, tensor=latent, output_type="pt", processor=processor, **SD15)
    assert max_diff(pixels(picture), expected) <= 1

    # output_type="pil" with a processor: the endpoint sends floats in [0, 1] and the client rounds.
    listed = remote_decode(endpoint=url, tensor=latent, processor=processor, **SD15)
    assert isinstance(listed, list) and len(listed) == 1 and np.array_equal(pixels(listed[0]), expected)
    tensor = remote_decode(endpoint=url, tensor=latent, processor=processor, return_type="pt", **SD15)
    assert tensor.shape == (1, 3, H, W) and torch.equal(tensor[0], floats)

    # A batch of two goes through the queue as two jobs (the worker may batch them: within 1) and comes back stacked.
    batch = torch.cat([latent, torch.randn_like(latent)])
    both = remote_decode(endpoint=url, tensor=batch, output_type="pt", partial_postprocess=True, return_type="pt",
                         **SD15)  # fmt: skip
    assert both.shape == (2, H, W, 3) and max_diff(both[0].numpy(), expected) <= 1


@pytest.mark.timeout(300)
def test_video_latent_to_mp4_and_frames(live):
    latent = torch.randn(1, 16, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(2))  # 5 frames
    url = endpoint(live, "hunyuanvideo")
    video = remote_decode(endpoint=url, tensor=latent, output_type="mp4", return_type="mp4")
    assert isinstance(video, bytes) and video[4:8] == b"ftyp"
    with av.open(io.BytesIO(video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (H, W, 3)
    assert video == via_jobs(live, latent, "hunyuanvideo", "mp4")

    expected = st_load(via_jobs(live, latent, "hunyuanvideo", "uint8"))["image"]  # (F, H, W, 3)
    listed = remote_decode(endpoint=url, tensor=latent, output_type="pt", partial_postprocess=True)
    assert len(listed) == 5 and all(np.array_equal(pixels(p), e) for p, e in zip(listed, expected.numpy()))
    processor = VideoProcessor(vae_scale_factor=8)
    listed = remote_decode(endpoint=url, tensor=latent, processor=processor)  # output_type="pil": floats back
    assert len(listed) == 5 and all(np.array_equal(pixels(p), e) for p, e in zip(listed, expected.numpy()))
    listed = remote_decode(endpoint=url, tensor=latent, output_type="pt", processor=processor)
    assert len(listed) == 5 and max(max_diff(pixels(p), e) for p, e in zip(listed, expected.numpy())) <= 1
    raw = remote_decode(endpoint=url, tensor=latent, output_type="pt", return_type="pt")
    assert raw.shape == (1, 3, 5, H, W)

    with pytest.raises(RuntimeError, match="video model"):
        remote_decode(endpoint=url, tensor=latent)  # pil without a processor: no image to send


@pytest.mark.timeout(300)
def test_encode_png_and_tensor(live):
    photo = Image.open(IMAGES_DIR / "chelsea.png").convert("RGB").crop((100, 60, 228, 156))  # 128x96
    # Contiguous: diffusers' prepare_encode serializes a temporary .contiguous() copy it has already freed.
    x = (torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 255).contiguous()
    client = Client()
    expected = st_load(client.store.get(client.submit_encode(x, "taef2").wait(120)[0].key))["latent"]

    latent = remote_encode(endpoint=endpoint(live, "taef2", "encode"), image=photo)
    assert latent.dtype == torch.float32 and latent.shape == (1, 32, 96 // 8, 128 // 8)
    assert torch.equal(latent, expected)
    assert torch.equal(remote_encode(endpoint=endpoint(live, "taef2", "encode"), image=x), expected)
    uint8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(remote_encode(endpoint=endpoint(live, "taef2", "encode"), image=uint8), expected)

    # sd15: the latent comes back scaled by exactly the factors passed, as remote_encode documents.
    scaled = st_load(client.store.get(client.submit_encode(x, "sd15").wait(120)[0].key))["latent"]
    url = endpoint(live, "sd15", "encode")
    assert torch.equal(remote_encode(endpoint=url, image=photo, scaling_factor=0.18215), scaled)
    assert torch.allclose(remote_encode(endpoint=url, image=photo), scaled / 0.18215, rtol=1e-5, atol=1e-5)
    decoded = remote_decode(endpoint=endpoint(live, "sd15"), tensor=scaled, scaling_factor=0.18215)
    assert decoded.size == photo.size

    with pytest.raises(RuntimeError, match=r"send RGB in \[0, 1\]"):
        remote_encode(endpoint=url, image=x * 2 - 1)
    with pytest.raises(RuntimeError, match="multiples of 8"):
        remote_encode(endpoint=url, image=photo.crop((0, 0, 100, 60)))


@pytest.mark.timeout(300)
def test_bad_requests_raise_the_clients_runtime_error_with_our_message(live, monkeypatch):
    latent = torch.randn(1, 4, H // 8, W // 8)
    with pytest.raises(RuntimeError, match="unknown model 'nope'"):
        remote_decode(endpoint=endpoint(live, "nope"), tensor=latent, **SD15)
    with pytest.raises(RuntimeError, match="dtype 'int64' is not one of"):
        remote_decode(endpoint=endpoint(live, "sd15"), tensor=latent.long(), **SD15)
    with pytest.raises(RuntimeError, match="needs a video model"):
        remote_decode(endpoint=endpoint(live, "sd15"), tensor=latent, output_type="mp4", return_type="mp4")
    with pytest.raises(RuntimeError, match="expects 4"):
        remote_decode(endpoint=endpoint(live, "sd15"), tensor=torch.randn(1, 3, 6, 8), **SD15)

    original = remote_utils.prepare_decode

    def wrong_shape(**kwargs):  # the body no longer matches the declared shape
        prepared = original(**kwargs)
        prepared["params"]["shape"] = [1, 4, 6, 9]
        return prepared

    monkeypatch.setattr(remote_utils, "prepare_decode", wrong_shape)
    with pytest.raises(RuntimeError, match="body is 768 bytes but shape"):
        remote_decode(endpoint=endpoint(live, "sd15"), tensor=latent, **SD15)
    monkeypatch.undo()

    kwargs = remote_utils.prepare_decode(tensor=latent, **SD15)

    def post(model: str, **params) -> requests.Response:
        return requests.post(endpoint(live, model), **{**kwargs, "params": {**kwargs["params"], **params}})

    statuses = {"unknown model": post("nope"), "bad dtype": post("sd15", dtype="int9"),
                "bad shape": post("sd15", shape=[2])}
    assert {name: r.status_code for name, r in statuses.items()} == {"unknown model": 404, "bad dtype": 422,
                                                                     "bad shape": 422}  # fmt: skip
    body = statuses["bad shape"].json()
    assert body["error"]["field"] == "shape" and body["detail"] == body["error"]["message"]


@pytest.mark.timeout(300)
def test_latentq_remote_decode_goes_straight_to_redis(live, redis_url):
    latent = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(4))
    over_http = remote_decode(endpoint=endpoint(live, "sd15"), tensor=latent, image_format="png", **SD15)
    direct = latentq.remote_decode(redis_url, latent, image_format="png", model="sd15", **SD15)
    assert direct.format == "png" and np.array_equal(pixels(direct), pixels(over_http))
    from_env = latentq.remote_decode(None, latent, output_type="pt", partial_postprocess=True, return_type="pt",
                                     model="sd15", **SD15)  # fmt: skip
    assert np.array_equal(from_env[0].numpy(), pixels(over_http))
    video = latentq.remote_decode(None, torch.randn(1, 16, 1, 4, 4), output_type="mp4", return_type="mp4",
                                  model="hunyuanvideo")  # fmt: skip
    assert video[4:8] == b"ftyp"
    with pytest.raises(latentq.InvalidRequest, match="unknown model"):
        latentq.remote_decode(None, latent, model="nope")
    with pytest.raises(ValueError, match="processor"):
        latentq.remote_decode(None, latent, output_type="pt", model="sd15")


@pytest.mark.timeout(400)
def test_flux1_unpacked_latents_as_the_hf_endpoint_takes_them(live):
    """FLUX.1 latents sent unpacked, (B, 16, h, w) with no height/width, as diffusers' docs send them."""
    url = endpoint(live, "flux1")
    factors = dict(scaling_factor=0.3611, shift_factor=0.1159)
    g = torch.Generator().manual_seed(6)
    small = torch.randn(1, 16, H // 8, W // 8, generator=g).to(torch.bfloat16)
    packed = FluxPipeline._pack_latents(small.float(), 1, 16, H // 8, W // 8)
    # Unpacked and packed are the same latent: the same pixels, through either layout.
    png = remote_decode(endpoint=url, tensor=small, image_format="png", **factors)
    assert isinstance(png, Image.Image) and png.size == (W, H) and png.format == "png"
    from_packed = decode_png(via_jobs(live, packed, "flux1", "png", height=H, width=W, **factors))
    assert max_diff(pixels(png), from_packed) <= 1  # bf16 in, fp32 tokens in: rounding of the latent only
    assert np.array_equal(pixels(png), decode_png(via_jobs(live, small, "flux1", "png", **factors)))
    # A batch of two unpacked latents: two jobs, stacked back.
    both = remote_decode(endpoint=url, tensor=torch.cat([small, small]), output_type="pt", partial_postprocess=True,
                         return_type="pt", **factors)  # fmt: skip
    assert both.shape == (2, H, W, 3) and np.array_equal(both[1].numpy(), pixels(png))
    client = Client()  # submit_many splits the batch into (16, h, w) samples: still unpacked latents
    for job in client.submit_many(torch.cat([small, small]), "flux1", output_format="png", **factors):
        assert np.array_equal(decode_png(client.store.get(job.wait(120)[0].key)), pixels(png))
    processor = VaeImageProcessor(vae_scale_factor=8)
    picture = remote_decode(endpoint=url, tensor=small, output_type="pt", processor=processor, **factors)
    assert isinstance(picture, Image.Image) and max_diff(pixels(picture), pixels(png)) <= 1

    # The exact case of the issue: bf16 (1, 16, 128, 128) -> 1024x1024.
    latent = torch.randn(1, 16, 128, 128, generator=g).to(torch.bfloat16)
    jpg = remote_decode(endpoint=url, tensor=latent, **factors)
    assert isinstance(jpg, Image.Image) and jpg.size == (1024, 1024) and jpg.format == "jpeg" and jpg.mode == "RGB"
    uint8 = remote_decode(endpoint=url, tensor=latent, output_type="pt", partial_postprocess=True, return_type="pt",
                          **factors)  # fmt: skip
    assert uint8.dtype == torch.uint8 and uint8.shape == (1, 1024, 1024, 3)
    raw = remote_decode(endpoint=url, tensor=latent, output_type="pt", return_type="pt", **factors)
    assert raw.dtype == torch.float32 and raw.shape == (1, 3, 1024, 1024)
    assert float(raw.min()) >= -1 and float(raw.max()) <= 1
    assert max_diff(((raw[0] + 1) / 2 * 255).round().permute(1, 2, 0).numpy(), uint8[0].numpy()) <= 1
    # JPEG keeps the luma of each 16x16 block (DC coefficients; chroma is subsampled): the same image, up to its loss.
    luma = [(a.astype(float) @ np.array([0.299, 0.587, 0.114])).reshape(64, 16, 64, 16).mean(axis=(1, 3))
            for a in (pixels(jpg), uint8[0].numpy())]  # fmt: skip
    assert np.abs(luma[0] - luma[1]).max() < 3


@pytest.mark.timeout(300)
def test_flux1_encode_returns_what_the_hf_endpoint_returns(live):
    """remote_encode for FLUX.1: the unpacked (1, 16, H/8, W/8) latent, scaled by the factors passed; it decodes back."""
    photo = Image.open(IMAGES_DIR / "chelsea.png").convert("RGB").crop((100, 60, 228, 156))  # 128x96
    factors = dict(scaling_factor=0.3611, shift_factor=0.1159)
    latent = remote_encode(endpoint=endpoint(live, "flux1", "encode"), image=photo, **factors)
    assert latent.dtype == torch.float32 and latent.shape == (1, 16, 96 // 8, 128 // 8)
    x = (torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 255).contiguous()
    client = Client()
    stored = st_load(client.store.get(client.submit_encode(x, "flux1").wait(120)[0].key))["latent"]
    assert torch.equal(latent, stored)
    # What the VAE itself computes (the same seed-0 random weights the models file gives the worker).
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(CONFIGS["flux1"]).eval()
    with torch.no_grad():
        expected = (vae.encode(x * 2 - 1).latent_dist.mode() - 0.1159) * 0.3611
    assert torch.allclose(latent, expected, atol=1e-5, rtol=1e-4)
    unscaled = remote_encode(endpoint=endpoint(live, "flux1", "encode"), image=photo)
    assert torch.allclose(unscaled, latent / 0.3611 + 0.1159, atol=1e-5, rtol=1e-5)

    # The docs' round trip: the encoded latent straight back to remote_decode, no height/width.
    decoded = remote_decode(endpoint=endpoint(live, "flux1"), tensor=latent, image_format="png", **factors)
    assert decoded.size == photo.size
    assert np.array_equal(pixels(decoded), decode_png(via_jobs(live, latent, "flux1", "png", **factors)))
