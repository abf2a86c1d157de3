"""diffusers pipelines with latentq's RemoteVAE (and the asynchronous queue) equal their own in-process output.

Real pipelines (StableDiffusionPipeline, FluxPipeline, WanPipeline, Flux2Pipeline; QwenImagePipeline and
SanaPipeline from tests/pipelines_image.py) built from tiny random components
(prompt embeddings instead of text encoders), saved with ``save_pretrained``; a real worker process
serves the very VAE weights the pipeline saved (a models file pointing at ``<pipeline>/vae``). Each
comparison runs the same call (same generator) once with the pipeline's own VAE and once through latentq:
<= 1 per 8-bit channel, fp32 on the CPU.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLWan,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    WanPipeline,
    WanTransformer3DModel,
)
from PIL import Image
from tiny_configs import CONFIGS

import latentq
from latentq import Client, HttpClient, RemoteDecodeQueue, RemoteVAE
from latentq.core.wire import latent_to_bytes as latent_bytes

pytestmark = pytest.mark.timeout(420)

H, W = 48, 64  # images: latents of 6x8


def build_sd15(path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4)  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)  # fmt: skip
    vae = AutoencoderKL.from_config(CONFIGS["sd15"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(path)
    return pipe


def build_flux1(path):
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])  # fmt: skip
    vae = AutoencoderKL.from_config(CONFIGS["flux1"])
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)  # fmt: skip
    pipe.save_pretrained(path)
    return pipe


def build_wan(path):
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)  # fmt: skip
    vae = AutoencoderKLWan.from_config(CONFIGS["wan"])
    # Non-trivial statistics: the normalization must be undone and redone exactly once.
    generator = torch.Generator().manual_seed(1)
    vae.register_to_config(latents_mean=(torch.randn(16, generator=generator) * 0.3).tolist(),
                           latents_std=(torch.rand(16, generator=generator) + 0.5).tolist())  # fmt: skip
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip
    # Only the VAE goes to disk: WanTransformer3DModel keeps modules in fp32, which from_pretrained
    # refuses without accelerate; the pipeline is built from its objects instead.
    pipe.vae.save_pretrained(path / "vae")
    return pipe


def build_flux2(path):
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32,
                                          axes_dims_rope=(4, 4, 4, 4))  # fmt: skip
    vae = AutoencoderKLFlux2.from_config(CONFIGS["flux2"])
    # Its batch-norm statistics are weights the worker holds, RemoteVAE does not: make them matter.
    vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.5)
    vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)  # fmt: skip
    pipe.vae.save_pretrained(path / "vae")
    return pipe


BUILDERS = {"sd15": build_sd15, "flux1": build_flux1, "wan": build_wan, "flux2": build_flux2}
SAVED_WHOLE = ("sd15", "flux1")  # loaded again with from_pretrained, as a user's script does


class TinyPipelines:
    """The tiny pipelines, built once per test under ``root/<name>``."""

    def __init__(self, root):
        self.root = root
        self.built = {name: build(root / name) for name, build in BUILDERS.items()}

    def local(self, name: str):
        """The pipeline with its own VAE (loaded from disk again where it was saved whole)."""
        return self.with_vae(name, None)

    def with_vae(self, name: str, vae):
        """The pipeline with ``vae=`` changed (None: its own): ``from_pretrained(path, vae=...)``, the one-line change."""
        pipe = self.built[name]
        if name not in SAVED_WHOLE:
            return pipe if vae is None else type(pipe)(**{**pipe.components, "vae": vae})
        path = self.root / name
        index = DiffusionPipeline.load_config(path)
        expected, _ = type(pipe)._get_signature_keys(type(pipe))
        absent = {key: None for key in expected if key not in index or index[key][0] is None}
        return DiffusionPipeline.from_pretrained(path, **absent, **({} if vae is None else {"vae": vae}))


def call_kwargs(name: str) -> dict:
    """One pipeline call's inputs (embeddings instead of prompts), with a fresh generator each time."""
    g = torch.Generator().manual_seed(42)
    common = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(7))
    if name == "sd15":
        return dict(common, prompt_embeds=torch.randn(2, 7, 32, generator=g),
                    negative_prompt_embeds=torch.randn(2, 7, 32, generator=g), height=H, width=W)  # fmt: skip
    if name == "flux1":
        return dict(common, prompt_embeds=torch.randn(1, 7, 32, generator=g),
                    pooled_prompt_embeds=torch.randn(1, 32, generator=g), height=H, width=W)  # fmt: skip
    if name == "flux2":
        return dict(common, prompt_embeds=torch.randn(1, 7, 32, generator=g), height=H, width=W)
    return dict(common, prompt_embeds=torch.randn(1, 7, 32, generator=g),
                negative_prompt_embeds=torch.randn(1, 7, 32, generator=g), height=32, width=32, num_frames=5)  # fmt: skip


def run(pipe, name: str, **extra) -> np.ndarray:
    """The call's images (or video frames) as 8-bit, as its "np" output rounds them."""
    out = pipe(**{**call_kwargs(name), **extra}, output_type="np")
    pixels = out.frames if name == "wan" else out.images
    return (np.asarray(pixels) * 255).round().astype(np.int16)


@pytest.fixture
def tiny(tmp_path, models_file) -> TinyPipelines:
    """The tiny pipelines, and a models file whose latentq models serve their very VAEs."""
    pipelines = TinyPipelines(tmp_path)
    lines = [models_file.read_text()]
    for name in BUILDERS:
        # The pipeline's directory, as a hub repo: the built-in models name its "vae" subfolder.
        lines.append(f'[models.{name}]\nsource = "{tmp_path / name}"\npreview = ""\n')
    models_file.write_text("\n".join(lines))
    return pipelines


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()


@torch.no_grad()
def test_pipelines_with_remote_vae_equal_their_own_decode(tiny, procs, env):
    procs.worker(*BUILDERS, extra=("--no-previews",))
    with Client() as client:
        for name in BUILDERS:
            remote = RemoteVAE(client, model=name)
            pipe = tiny.with_vae(name, remote)
            assert type(pipe) is type(tiny.built[name]) and pipe.vae is remote
            want = run(tiny.local(name), name)
            got = run(pipe, name)
            assert_close(got, want)
            if name == "sd15":
                assert got.shape[0] == 2  # a batch: one job per sample, stacked back in order


@torch.no_grad()
def test_remote_vae_over_http_and_its_tensor_contract(tiny, procs, env):
    procs.worker("flux1", "wan", extra=("--no-previews",))
    api = procs.api()
    flux = tiny.with_vae("flux1", RemoteVAE(api, model="flux1"))
    assert isinstance(flux.vae.client, HttpClient)
    assert_close(run(flux, "flux1"), run(tiny.local("flux1"), "flux1"))

    # A latent the VAE cannot take: 422 naming the field, before anything is queued.
    response = httpx.post(f"{api}/v1/jobs", params={"model": "wan", "vae_input": "true", "output_format": "tensor"},
                          content=latent_bytes(torch.zeros(1, 8, 2, 4, 4)))  # fmt: skip
    assert response.status_code == 422 and response.json()["error"]["field"] == "latent"

    # What vae.decode returns: shape, dtype and device of the local VAE's decode, in [-1, 1].
    vae = RemoteVAE(api, model="wan")
    local_vae = tiny.built["wan"].vae
    assert vae.config.z_dim == 16 and list(vae.config.latents_std) == list(local_vae.config.latents_std)
    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    out = vae.decode(z, return_dict=False)[0]
    assert out.dtype == torch.bfloat16 and out.device == z.device and tuple(out.shape) == (1, 3, 5, 32, 32)
    want = local_vae.decode(z.float()).sample  # raw, unclamped: pipelines resample before they clamp
    assert (out.float() - want).abs().max() <= 1 / 64  # bf16 rounding of the reply


@torch.no_grad()
def test_queue_collects_what_the_pipelines_would_have_decoded(tiny, procs, env):
    procs.worker(*BUILDERS, extra=("--no-previews",))
    api = procs.api()
    with Client() as client:
        for name in BUILDERS:
            pipe = tiny.local(name)
            want = run(pipe, name)
            if name == "wan":  # over HTTP, the video as its frames (one PNG each)
                queue = RemoteDecodeQueue(api, model=name, output_format="frames")
                jobs = queue.generate(pipe, **call_kwargs(name))
                assert len(jobs) == 1
                results = queue.results()[0]
                assert [r.frame for r in results] == list(range(want.shape[1]))
                frames = [np.asarray(Image.open(io.BytesIO(httpx.get(r.url).content))) for r in results]
                assert_close(np.stack(frames)[None].astype(np.int16), want)
                continue
            queue = RemoteDecodeQueue(client, model=name, output_format="png")
            jobs = queue.generate(pipe, **call_kwargs(name))  # submitted; nothing waited for yet
            assert len(jobs) == want.shape[0]
            got = np.stack([np.asarray(image.convert("RGB")) for image in queue.images()]).astype(np.int16)
            assert_close(got, want)
            assert [r[0].content_type for r in queue.results()] == ["image/png"] * len(jobs)
            assert len(set(queue.urls())) == len(jobs)


@torch.no_grad()
def test_submit_pipeline_latents_takes_the_size_from_the_pipeline(tiny, procs, env):
    """A FLUX call without height/width: the pipeline's default size, as the pipeline computed it."""
    procs.worker("flux1", extra=("--no-previews",))
    pipe = tiny.with_vae("flux1", RemoteVAE(model="flux1"))  # the client: $LATENTQ_REDIS_URL
    pipe.default_sample_size = 4  # 32x32 images: the pipeline's own default arithmetic, kept small
    kwargs = {k: v for k, v in call_kwargs("flux1").items() if k not in ("height", "width")}
    latents = pipe(**kwargs, output_type="latent").images
    jobs = latentq.submit_pipeline_latents(pipe, latents)  # model and client: the pipeline's RemoteVAE's
    results = jobs[0].wait(120)
    assert (results[0].width, results[0].height) == (32, 32)
    with pytest.raises(latentq.InvalidRequest) as caught:
        latentq.submit_pipeline_latents(None, latents, model="flux1")
    assert caught.value.field == "height"


def test_vae_input_requests_are_checked_as_the_vae_takes_them():
    from latentq.core.request import DecodeRequest, Limits
    from latentq.models.registry import load_registry
    from latentq.models.validate import validate_image, validate_latent

    with pytest.raises(latentq.InvalidRequest) as caught:
        DecodeRequest(model="sd15", vae_input="yes")
    assert caught.value.field == "vae_input"
    spec, limits = load_registry(None).get("flux1"), Limits()
    request = DecodeRequest(model="flux1", output_format="tensor", vae_input=True)
    # FLUX.1's VAE takes (1, 16, h, w): packed tokens are not what vae.decode gets.
    assert tuple(validate_latent(torch.zeros(16, 6, 8), spec, request, limits).shape) == (1, 16, 6, 8)
    for bad, field in ((torch.zeros(1, 12, 64), "latent"), (torch.zeros(1, 4, 6, 8), "latent")):
        with pytest.raises(latentq.InvalidRequest) as caught:
            validate_latent(bad, spec, request, limits)
        assert caught.value.field == field
    with pytest.raises(latentq.InvalidRequest) as caught:  # vae_input answers vae.decode's tensor, nothing else
        validate_latent(torch.zeros(1, 16, 6, 8), spec, DecodeRequest(model="flux1", vae_input=True), limits)
    assert caught.value.field == "output_format"
    with pytest.raises(latentq.InvalidRequest) as caught:
        validate_latent(torch.zeros(1, 16, 6, 8), load_registry(None).get("sd3"),
                        DecodeRequest(model="sd3", output_format="tensor", vae_input=True, preview=True), limits)  # fmt: skip
    assert caught.value.field == "preview"
    # vae.encode's video input, (1, 3, F, H, W): H and W are the last two dimensions, whatever F is
    wan = load_registry(None).get("wan")
    assert tuple(validate_image(torch.zeros(1, 3, 5, 32, 48), wan, limits, vae_input=True).shape) == (1, 3, 5, 32, 48)
    with pytest.raises(latentq.InvalidRequest, match="multiples of 8, got 44x32") as caught:
        validate_image(torch.zeros(1, 3, 8, 32, 44), wan, limits, vae_input=True)
    assert caught.value.field == "image"


@torch.no_grad()
def test_families_added_later_work_unchanged(procs, models_file, tmp_path):
    """Qwen-Image (packed tokens unpacked in front of a 5-D VAE) and SANA (AutoencoderDC, 32x): RemoteVAE names neither."""
    from pipelines_image import build
    from pipelines_image import run as generate

    from latentq.models.registry import BUILTIN_MODELS

    built, lines = {}, [models_file.read_text()]
    for name in ("qwenimage", "sana"):
        pipe, kwargs = build(name)
        pipe.vae.save_pretrained(tmp_path / name / BUILTIN_MODELS[name].subfolder)
        lines.append(f'[models.{name}]\nsource = "{tmp_path / name}"\n')
        built[name] = pipe, kwargs
    models_file.write_text("\n".join(lines))
    procs.worker(*built, extra=("--no-previews",))
    with Client() as client:
        for name, (pipe, kwargs) in built.items():
            want = (np.asarray(generate(pipe, kwargs, "np")) * 255).round().astype(np.int16)
            remote = type(pipe)(**{**pipe.components, "vae": RemoteVAE(client, model=name)})
            got = (np.asarray(generate(remote, kwargs, "np")) * 255).round().astype(np.int16)
            assert_close(got, want)


def test_remote_vae_looks_like_the_vae_it_stands_in_for(redis_url):
    """Config, device and dtype (which follow pipe.to), and what it refuses; nothing is decoded here."""
    vae = RemoteVAE(redis_url, model="sd15", config=CONFIGS["sd15"])  # given config: no hub look-up
    assert isinstance(vae.client, Client) and vae.config.scaling_factor == 0.18215
    assert vae.config.force_upcast is False and list(vae.config.block_out_channels) == [8, 8, 16, 16]
    assert (vae.device, vae.dtype) == (torch.device("cpu"), torch.float32)
    assert vae.to(torch.bfloat16).dtype == torch.bfloat16 and not list(vae.parameters())
    hunyuan = RemoteVAE(vae.client, model="hunyuanvideo", config=CONFIGS["hunyuanvideo"])
    assert hunyuan.temporal_compression_ratio == 4  # the real class's attributes the pipelines read
    flux2 = RemoteVAE(vae.client, model="flux2", config=CONFIGS["flux2"])  # its encoder is not offered
    for call, field in ((lambda: vae.decode(torch.zeros(1, 4, 2, 2), torch.tensor([0.05])), "temb"),
                        (lambda: flux2.encode(torch.zeros(1, 3, 16, 16)), "model")):  # fmt: skip
        with pytest.raises(latentq.InvalidRequest) as caught:
            call()
        assert caught.value.field == field
    with pytest.raises(latentq.InvalidRequest) as caught:
        RemoteVAE(vae.client)
    assert caught.value.field == "model"


@torch.no_grad()
def test_queue_forwards_what_the_family_reads_from_the_call(procs, models_file, tmp_path):
    """LTX-Video: video tokens whose size only the call's num_frames, height and width tell, and a
    timestep-conditioned decode with the call's decode_timestep and decode_noise_scale: generate() takes them all."""
    from pipelines_video import ltxvideo

    from latentq.models.registry import BUILTIN_MODELS

    case = ltxvideo()
    case.pipe.vae.save_pretrained(tmp_path / "ltx" / (BUILTIN_MODELS["ltxvideo"].subfolder or ""))
    fields = "".join(f"{key} = {value}\n" for key, value in case.spec_fields.items())
    models_file.write_text(models_file.read_text() + f'\n[models.ltxvideo]\nsource = "{tmp_path / "ltx"}"\n{fields}')
    procs.worker("ltxvideo", extra=("--no-previews",))
    want = (np.asarray(case.run("np").frames) * 255).round().astype(np.int16)
    with Client() as client:
        # The decode noise: latentq draws it from decode_noise_seed, the pipeline from its generator (seed 0).
        queue = RemoteDecodeQueue(client, model="ltxvideo", output_format="frames", decode_noise_seed=0)
        (job,) = queue.generate(case.pipe, **case.call, generator=torch.Generator().manual_seed(0))
        frames = [np.asarray(Image.open(io.BytesIO(client.store.get(r.key)))) for r in queue.results()[0]]
    assert_close(np.stack(frames)[None].astype(np.int16), want)


@torch.no_grad()
def test_img2img_pipeline_with_remote_vae_encodes_and_decodes_as_its_own(tiny, procs, env):
    """StableDiffusionImg2ImgPipeline samples vae.encode's posterior with its own generator: RemoteVAE.encode
    hands back the posterior's parameters (a vae_input encode job), so the image equals the local one."""
    from diffusers import StableDiffusionImg2ImgPipeline

    procs.worker("sd15", extra=("--no-previews",))
    init = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    def kwargs() -> dict:  # a fresh generator per call
        return {key: value for key, value in call_kwargs("sd15").items() if key not in ("height", "width")}

    def img2img(vae) -> np.ndarray:
        pipe = StableDiffusionImg2ImgPipeline(**{**tiny.built["sd15"].components, "vae": vae})
        out = pipe(**kwargs(), image=init, strength=0.75, output_type="np")
        return (np.asarray(out.images) * 255).round().astype(np.int16)

    want = img2img(tiny.built["sd15"].vae)
    with Client() as client:
        remote = RemoteVAE(client, model="sd15")
        got = img2img(remote)
        assert_close(got, want)
        # The posterior itself: its mean and std equal the local VAE's (the pipeline may take either).
        x = init * 2 - 1
        local, there = tiny.built["sd15"].vae.encode(x).latent_dist, remote.encode(x).latent_dist
        assert torch.allclose(there.mean, local.mean, atol=1e-5) and torch.allclose(there.std, local.std, atol=1e-5)
    assert_close(img2img(RemoteVAE(procs.api(), model="sd15")), want)  # over HTTP: POST /v1/jobs?task=encode


@torch.no_grad()
def test_ltx_pipeline_with_remote_vae_runs_its_timestep_conditioned_decode(procs, models_file, tmp_path):
    """LTXPipeline calls vae.decode(latents, timestep) after mixing in its decode noise and reads
    vae.latents_mean / latents_std (weights, not config): RemoteVAE reads those two from the weights file and
    sends each sample's timestep as its job's decode_timestep; the video equals the pipeline's own."""
    from pipelines_video import BUILDERS as VIDEO_BUILDERS

    case = VIDEO_BUILDERS["ltxvideo"]()
    case.pipe.vae.save_pretrained(tmp_path / "ltxvideo" / "vae")
    fields = "".join(f"{key} = {value}\n" for key, value in case.spec_fields.items())
    models_file.write_text(models_file.read_text() + f'\n[models.ltxvideo]\nsource = "{tmp_path / "ltxvideo"}"\n{fields}')
    procs.worker("ltxvideo", extra=("--no-previews",))
    want = (np.asarray(case.run("np").frames) * 255).round().astype(np.int16)
    with Client() as client:
        remote = RemoteVAE(client, model="ltxvideo")
        assert torch.equal(remote.latents_mean, case.pipe.vae.latents_mean)
        case.pipe = type(case.pipe)(**{**case.pipe.components, "vae": remote})
        got = (np.asarray(case.run("np").frames) * 255).round().astype(np.int16)
    assert_close(got, want)


@torch.no_grad()
def test_remote_vae_encodes_video_as_the_local_video_vae(procs, models_file, tmp_path):
    """RemoteVAE.encode of (B, 3, F, H, W) video (what the I2V / V2V pipelines hand a video VAE): one vae_input
    encode job per sample, the posterior's mean and std those of the local AutoencoderKLWan."""
    torch.manual_seed(0)
    local = AutoencoderKLWan.from_config(CONFIGS["wan"]).eval()
    local.save_pretrained(tmp_path / "wan" / "vae")
    models_file.write_text(models_file.read_text() + f'\n[models.wan]\nsource = "{tmp_path / "wan"}"\npreview = ""\n')
    procs.worker("wan", extra=("--no-previews",))
    x = torch.rand(2, 3, 5, 32, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1  # 5 frames: 2 latent ones
    with Client() as client:
        remote = RemoteVAE(client, model="wan")
        there = remote.encode(x).latent_dist
        (tuple_form,) = remote.encode(x[:1], return_dict=False)
    want = torch.cat([local.encode(sample).latent_dist.parameters for sample in x.split(1)])
    want_dist = type(there)(want)
    assert tuple(there.mean.shape) == (2, 16, 2, 4, 6)
    assert torch.allclose(there.mean, want_dist.mean, atol=1e-5) and torch.allclose(there.std, want_dist.std, atol=1e-5)
    assert torch.allclose(tuple_form.mean, want_dist.mean[:1], atol=1e-5)
    # and the batch as the local VAE encodes it in one call
    assert torch.allclose(there.mean, local.encode(x).latent_dist.mean, atol=1e-4)
