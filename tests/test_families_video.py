"""The video and audio families through the whole system equal their diffusers pipelines' own output.

For each family a real diffusers pipeline is built from tiny random components (tests/pipelines_video.py)
and run twice with the same generator: once with ``output_type="latent"``, once with ``"np"``. Its VAE is
saved and named in the models file; the latents go Client -> Redis -> one real worker process -> store,
and the stored output (``uint8`` frames, 16-bit ``wav`` / ``flac``) must match the pipeline's pixels
within 1 per 8-bit channel, its audio within one 16-bit step. fp32 on the CPU.
"""

from __future__ import annotations

import io
import json
import wave

import av
import numpy as np
import pytest
import torch
from pipelines_video import BUILDERS
from safetensors.torch import load as st_load

from latentq import Client

pytestmark = pytest.mark.families

VIDEO = ["wan22", "ltxvideo", "ltx2", "hunyuanvideo15", "cogvideox", "mochi", "easyanimate", "svd", "allegro"]
AUDIO = ["stableaudio"]
AUDIO_OF = {"ltx2audio": "ltx2"}  # served by its own model, from the same pipeline run


def _toml_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


@pytest.fixture
def references(tmp_path, models_file):
    """Each family's pipeline run (latents and output); its VAE saved where the models file points."""
    cases, lines = {}, [models_file.read_text()]
    for name in VIDEO + AUDIO:
        case = BUILDERS[name]()
        latent = case.run("latent")
        output = case.run("np")
        if name in AUDIO:
            cases[name] = (case, latent.audios, np.asarray(output.audios))
        else:
            cases[name] = (case, latent.frames, np.asarray(output.frames))
        case.pipe.vae.save_pretrained(tmp_path / name / "vae")
        fields = "".join(f"{key} = {_toml_value(value)}\n" for key, value in case.spec_fields.items())
        lines.append(f'[models.{name}]\nsource = "{tmp_path / name}"\n{fields}')
    for name, video in AUDIO_OF.items():  # LTX-2's audio VAE and vocoder, saved as the hub repo lays them out
        case = cases[video][0]
        case.pipe.audio_vae.save_pretrained(tmp_path / name / "audio_vae")
        case.pipe.vocoder.save_pretrained(tmp_path / name / "vocoder")
        latent, output = case.run("latent"), case.run("np")
        cases[name] = (case, latent.audio, np.asarray(output.audio))
        channels = case.pipe.audio_vae.config.latent_channels
        lines.append(f'[models.{name}]\nsource = "{tmp_path / name}"\nlatent_channels = {channels}\n')
    models_file.write_text("\n".join(lines))
    return cases


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getsampwidth() == 2
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), "<i2").reshape(-1, reader.getnchannels())
        return pcm.T, reader.getframerate()


def _flac_samples(data: bytes) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(-1, stream.channels) for frame in container.decode(stream)]
        return np.concatenate(chunks).T, stream.rate


@pytest.mark.timeout(600)
def test_video_and_audio_families_match_their_pipelines(procs, references):
    # Eleven models to load: a generous bound on a busy machine.
    procs.wait_for_worker(procs.worker(*VIDEO, *AUDIO, *AUDIO_OF, extra=("--no-previews",), wait=False), timeout=300)
    client = Client()
    jobs = {}
    for name in VIDEO:
        case, latent, _ = references[name]
        jobs[name] = client.submit(latent, model=name, output_format="uint8", **case.options)
    case, latent, _ = references["stableaudio"]
    for fmt in ("wav", "flac"):
        jobs[f"stableaudio-{fmt}"] = client.submit(latent, model="stableaudio", output_format=fmt, **case.options)
    jobs["ltx2audio-wav"] = client.submit(references["ltx2audio"][1], model="ltx2audio", output_format="wav")

    failures = {}
    for name in VIDEO:
        (result,) = jobs[name].wait(timeout=300)
        got = st_load(client.store.get(result.key))["image"].numpy().astype(int)
        expected = (references[name][2][0] * 255).round().astype(int)  # the pipeline's (F, H, W, 3) frames
        if got.shape != expected.shape:
            failures[name] = f"shape {got.shape} != pipeline's {expected.shape}"
        elif (diff := int(np.abs(got - expected).max())) > 1:
            failures[name] = f"max abs difference {diff} per 8-bit channel"
        elif (result.width, result.height, result.frames) != (got.shape[2], got.shape[1], got.shape[0]):
            failures[name] = f"result record {result} does not describe the frames"

    stable_rate = references["stableaudio"][0].pipe.vae.config.sampling_rate
    ltx2_rate = references["ltx2audio"][0].pipe.vocoder.config.output_sampling_rate
    for key, name, rate, reader in (("stableaudio-wav", "stableaudio", stable_rate, _wav_samples),
                                    ("stableaudio-flac", "stableaudio", stable_rate, _flac_samples),
                                    ("ltx2audio-wav", "ltx2audio", ltx2_rate, _wav_samples)):  # fmt: skip
        audio = references[name][2][0]  # (channels, samples), raw (the pipelines do not clip)
        expected = np.round(np.clip(audio, -1, 1) * 32767).astype(int)
        (result,) = jobs[key].wait(timeout=300)
        samples, got_rate = reader(client.store.get(result.key))
        if samples.shape != expected.shape or got_rate != rate:
            failures[key] = f"{samples.shape} at {got_rate} Hz != pipeline's {expected.shape} at {rate} Hz"
        elif (diff := int(np.abs(samples.astype(int) - expected).max())) > 1:
            failures[key] = f"max abs difference {diff} 16-bit steps"
        elif (result.sample_rate, result.channels) != (rate, audio.shape[0]) or \
                result.duration_s != pytest.approx(audio.shape[1] / rate):  # fmt: skip
            failures[key] = f"result record {result} does not describe the audio"
    assert not failures, failures

    # The same worker, through the API's diffusers protocol.
    _check_hf_protocol(procs.api(), references)
    _check_wan22_encode(client, references["wan22"][0])
    _check_video_encoders(client, references)
    _check_hf_encode(procs.api(), client, references["hunyuanvideo15"][0])


def _check_wan22_encode(client: Client, case) -> None:
    """wan22's encode job gives the image latents WanImageToVideoPipeline.prepare_latents conditions on (TI2V)."""
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=case.pipe.vae, scheduler=case.pipe.scheduler,
                                   transformer=case.pipe.transformer, expand_timesteps=True)  # fmt: skip
    image = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the pipeline's preprocess leaves [-1, 1]: 2 x - 1 of the [0, 1] image
        _, expected, _ = pipe.prepare_latents(2.0 * image - 1.0, 1, 48, 32, 64, 5, torch.float32, torch.device("cpu"),
                                              torch.Generator().manual_seed(0))  # fmt: skip
    (result,) = client.submit_encode(image, "wan22").wait(timeout=120)
    got = st_load(client.store.get(result.key))["latent"]
    assert got.shape == expected.shape == (1, 48, 1, 2, 4)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


def _image(height: int = 32, width: int = 64) -> torch.Tensor:
    """An RGB image in [0, 1] that a PNG holds exactly (uint8 / 255)."""
    return torch.randint(0, 256, (1, 3, height, width), generator=torch.Generator().manual_seed(4)) / 255.0


def _expected_encodes(references: dict, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each family's image-to-video pipeline conditions on; the posterior's mode where it samples."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline, LTXImageToVideoPipeline
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
    from PIL import Image

    video = (2.0 * image - 1.0).unsqueeze(2)  # VideoProcessor.preprocess: [-1, 1], one frame
    vaes = {name: references[name][0].pipe.vae for name in references}
    expected = {}
    with torch.no_grad():
        vae = vaes["ltxvideo"]  # LTXImageToVideoPipeline.prepare_latents, mode for its sample
        z = LTXImageToVideoPipeline._normalize_latents(vae.encode(video).latent_dist.mode(), vae.latents_mean,
                                                       vae.latents_std)  # fmt: skip
        expected["ltxvideo"] = LTXImageToVideoPipeline._pack_latents(z, 1, 1)
        vae = vaes["hunyuanvideo15"]  # the pipeline's own helper, from the PNG's pixels (argmax: deterministic)
        pil = Image.fromarray((image[0] * 255).round().byte().permute(1, 2, 0).numpy())
        processor = HunyuanVideo15ImageProcessor(vae_scale_factor=vae.spatial_compression_ratio)
        expected["hunyuanvideo15"] = HunyuanVideo15ImageToVideoPipeline._get_image_latents(
            vae, processor, pil, image.shape[2], image.shape[3], torch.device("cpu"))
        vae = vaes["cogvideox"]  # CogVideoXImageToVideoPipeline.prepare_latents, mode for its sample
        expected["cogvideox"] = vae.encode(video).latent_dist.mode().permute(0, 2, 1, 3, 4) * vae.config.scaling_factor
        vae = vaes["mochi"]  # no I2V pipeline: the inverse of MochiPipeline's decode step, on the mode
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        expected["mochi"] = (vae.encode(video).latent_dist.mode() - mean) * vae.config.scaling_factor / std
        vae = vaes["easyanimate"]  # EasyAnimateInpaintPipeline.prepare_mask_latents
        expected["easyanimate"] = vae.encode(video)[0].mode() * vae.config.scaling_factor
        pipe = references["svd"][0].pipe  # StableVideoDiffusionPipeline._encode_vae_image, one frame of F
        expected["svd"] = pipe._encode_vae_image(2.0 * image - 1.0, "cpu", 1, False).unsqueeze(1)
    return expected


def _check_video_encoders(client: Client, references: dict) -> None:
    image = _image()
    expected = _expected_encodes(references, image)
    jobs = {name: client.submit_encode(image, name) for name in expected}
    failures = {}
    for name, job in jobs.items():
        (result,) = job.wait(timeout=120)
        got = st_load(client.store.get(result.key))["latent"]
        if got.shape != expected[name].shape:
            failures[name] = f"shape {tuple(got.shape)} != {tuple(expected[name].shape)}"
        elif not torch.allclose(got, expected[name], atol=1e-4):
            failures[name] = f"max abs difference {float((got - expected[name]).abs().max())}"
    assert not failures, failures
    # allegro's tiled encoder takes clips of at least its sample_frames: no image encoder
    assert not client.registry.get("allegro").offers_encoder


def _check_hf_encode(api: str, client: Client, case) -> None:
    """POST /v1/models/{model}/encode with a PNG, for a video family: the encode job's latent, as bytes."""
    import httpx
    from PIL import Image

    image = _image()
    png = io.BytesIO()
    Image.fromarray((image[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(png, format="PNG")
    reply = httpx.post(f"{api}/v1/models/hunyuanvideo15/encode", content=png.getvalue(),
                       headers={"content-type": "image/png"}, timeout=120)  # fmt: skip
    assert reply.status_code == 200, reply.text
    shape = [int(d) for d in json.loads(reply.headers["shape"])]
    got = torch.from_numpy(np.frombuffer(reply.content, np.float32).reshape(shape).copy())
    (result,) = client.submit_encode(image, "hunyuanvideo15").wait(timeout=120)
    assert torch.equal(got, st_load(client.store.get(result.key))["latent"])
    assert tuple(got.shape) == (1, 4, 1, 8, 16)


def _check_hf_protocol(api: str, references: dict) -> None:
    """POST /v1/models/{model}/decode: diffusers' own remote_decode for a video family (uint8 frames and MP4);
    the family options and audio outputs as query parameters."""
    import httpx
    from diffusers.utils.remote_utils import remote_decode

    _, latent, output = references["wan22"]
    frames = remote_decode(f"{api}/v1/models/wan22/decode", latent, output_type="pt", return_type="pt",
                           partial_postprocess=True)  # fmt: skip
    expected = (output[0] * 255).round().astype(int)
    assert tuple(frames.shape) == expected.shape and frames.dtype == torch.uint8
    assert int(np.abs(frames.numpy().astype(int) - expected).max()) <= 1
    mp4 = remote_decode(f"{api}/v1/models/wan22/decode", latent, output_type="mp4", return_type="mp4")
    with av.open(io.BytesIO(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == expected.shape[0]

    # ltxvideo's packed tokens need the pipeline's num_frames / height / width and its decode options.
    case, latent, output = references["ltxvideo"]
    tokens = latent.contiguous()
    # do_scaling: the model's own factors, as diffusers' client asks by default (without it, the protocol
    # reads the latent as un-scaled already: scaling_factor 1).
    params = [("shape", d) for d in tokens.shape] + [("dtype", "float32"), ("output_type", "pt"),
              ("partial_postprocess", "true"), ("do_scaling", "true")] + list(case.options.items())  # fmt: skip
    reply = httpx.post(f"{api}/v1/models/ltxvideo/decode", params=params, content=tokens.numpy().tobytes(),
                       timeout=120)  # fmt: skip
    assert reply.status_code == 200, reply.text
    got = np.frombuffer(reply.content, np.uint8).reshape([int(d) for d in json.loads(reply.headers["shape"])])
    assert int(np.abs(got.astype(int) - (output[0] * 255).round().astype(int)).max()) <= 1
    bad = httpx.post(f"{api}/v1/models/ltxvideo/decode", params=params[:-len(case.options)],
                     content=tokens.numpy().tobytes(), timeout=60)  # fmt: skip
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "num_frames", bad.text

    case, latent, output = references["stableaudio"]
    audio = latent.contiguous()
    params = [("shape", d) for d in audio.shape] + [("dtype", "float32"), ("output_type", "wav")]
    reply = httpx.post(f"{api}/v1/models/stableaudio/decode", params=params + list(case.options.items()),
                       content=audio.numpy().tobytes(), timeout=120)  # fmt: skip
    assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav", reply.text
    samples, rate = _wav_samples(reply.content)
    expected = np.round(np.clip(output[0], -1, 1) * 32767).astype(int)
    assert rate == case.pipe.vae.config.sampling_rate and samples.shape == expected.shape
    assert int(np.abs(samples.astype(int) - expected).max()) <= 1
    wrong = httpx.post(f"{api}/v1/models/stableaudio/decode", params=params + [("num_frames", 9)],
                       content=audio.numpy().tobytes(), timeout=60)  # fmt: skip
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "num_frames", wrong.text


# --- checks and encoders, without processes ------------------------------------------------------------
def _check(name: str, shape: tuple[int, ...], **options):
    from latentq.core.request import DecodeRequest, Limits
    from latentq.models.registry import load_registry
    from latentq.models.validate import validate_latent

    spec = load_registry().get(name)
    request = DecodeRequest(model=name, output_format=options.pop("output_format", spec.output_formats[0]), **options)
    return validate_latent(torch.zeros(shape), spec, request, Limits())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "shape", "options", "field"), [
    ("ltxvideo", (1, 3 * 16 * 22, 128), {"height": 512, "width": 704}, "num_frames"),
    ("ltxvideo", (1, 3 * 16 * 22, 128), {"num_frames": 25, "height": 512, "width": 704}, "latent"),
    ("ltxvideo", (1, 3 * 16 * 22, 128), {"num_frames": 17, "height": 512, "width": 704, "decode_chunk_size": 2},
     "decode_chunk_size"),
    ("cogvideox", (1, 13, 16, 60, 90), {"num_frames": 61}, "num_frames"),
    ("cogvideox", (1, 16, 13, 60, 90), {}, "latent"),
    ("wan22", (1, 48, 21, 44, 80), {"decode_timestep": 0.05}, "decode_timestep"),
    ("wan22", (1, 16, 21, 44, 80), {}, "latent"),
    ("svd", (1, 14, 4, 72, 128), {"num_frames": 14}, "num_frames"),
    ("stableaudio", (1, 64, 1024, 1), {}, "latent"),
    ("stableaudio", (1, 64, 1024), {"output_format": "png"}, "output_format"),
    ("ltx2audio", (1, 8, 126), {}, "latent"),
    ("sd15", (1, 4, 8, 8), {"num_frames": 9}, "num_frames"),  # the generic family reads none of them
    ("wan", (1, 16, 3, 8, 8), {"decode_chunk_size": 2}, "decode_chunk_size"),
])  # fmt: skip
def test_bad_latents_and_options_name_their_field(name, shape, options, field):
    from latentq.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as raised:
        _check(name, shape, **options)
    assert raised.value.field == field, raised.value


@pytest.mark.timeout(60)
def test_option_ranges_name_their_field():
    from latentq.core.request import DecodeRequest
    from latentq.errors import InvalidRequest

    for options, field in [({"decode_timestep": 1.5}, "decode_timestep"), ({"num_frames": 0}, "num_frames"),
                           ({"decode_noise_seed": -1}, "decode_noise_seed"), ({"decode_chunk_size": 2.5}, "decode_chunk_size"),
                           ({"audio_start_in_s": 2.0, "audio_end_in_s": 1.0}, "audio_end_in_s")]:  # fmt: skip
        with pytest.raises(InvalidRequest) as raised:
            DecodeRequest(model="x", **options)
        assert raised.value.field == field


@pytest.mark.timeout(60)
def test_geometry_follows_the_pipelines():
    from latentq.models.validate import output_geometry

    def size(name, shape, **options):
        from latentq.core.request import DecodeRequest
        from latentq.models.registry import load_registry

        spec = load_registry().get(name)
        geometry = output_geometry(torch.zeros(shape), spec, DecodeRequest(model=name, output_format="tensor", **options))
        return geometry.width, geometry.height, geometry.frames

    assert size("wan22", (1, 48, 21, 44, 80)) == (1280, 704, 81)
    assert size("ltxvideo", (1, 17 * 16 * 22, 128), num_frames=129, height=512, width=704) == (704, 512, 129)
    assert size("cogvideox", (1, 22, 16, 96, 170), num_frames=81) == (1360, 768, 81)  # 1.5: 21 frames + 1 pad
    assert size("mochi", (1, 12, 28, 60, 106))[2] == 163
    assert size("svd", (1, 25, 4, 72, 128)) == (1024, 576, 25)
    assert size("allegro", (1, 4, 22, 90, 160), num_frames=88, height=720, width=1280) == (1280, 720, 88)
    assert size("stableaudio", (1, 64, 1024))[0] == 1024 * 2048


@pytest.mark.timeout(60)
def test_audio_encoders_round_trip():
    from latentq.worker.encode import audio_pcm16, encode_flac, encode_mp4, encode_wav

    audio = torch.linspace(-1.3, 1.3, 2 * 4000).reshape(2, 4000)  # past full scale: clipped, as 16-bit PCM must
    pcm = audio_pcm16(audio).T
    assert pcm.min() == -32767 and pcm.max() == 32767
    assert np.array_equal(_wav_samples(encode_wav(audio, 16000))[0], pcm)
    samples, rate = _flac_samples(encode_flac(audio, 16000))
    assert rate == 16000 and np.array_equal(samples, pcm)
    video = encode_mp4(torch.zeros(12, 32, 32, 3, dtype=torch.uint8), 24, 90, audio[:, :8000], 16000)
    with av.open(io.BytesIO(video)) as container:
        kinds = sorted(stream.type for stream in container.streams)
        assert kinds == ["audio", "video"] and container.streams.audio[0].rate == 16000


@pytest.mark.timeout(120)
def test_ltx2_decode_noise_is_mixed_where_the_pipeline_mixes_it():
    """LTX2Pipeline adds the decode noise to the normalised latents; ltx2 gets them denormalised and must
    normalise, mix and denormalise as the pipeline's own helpers do (noise from decode_noise_seed)."""
    import threading
    import types

    from diffusers import LTX2Pipeline

    from latentq.core.request import DecodeRequest
    from latentq.models.registry import load_registry

    vae = BUILDERS["ltx2"]().pipe.vae.eval()
    spec = load_registry().get("ltx2")
    model = types.SimpleNamespace(module=vae, spec=spec, device=torch.device("cpu"), dtype=torch.float32,
                                  lock=threading.Lock())  # fmt: skip
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    request = DecodeRequest(model="ltx2", output_format="uint8", decode_timestep=0.05, decode_noise_scale=0.3,
                            decode_noise_seed=5)  # fmt: skip
    got = spec.family_impl.to_vae(model, latents, request)

    mean, std, scaling = vae.latents_mean, vae.latents_std, vae.config.scaling_factor
    normalised = LTX2Pipeline._normalize_latents(latents, mean, std, scaling)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    expected = LTX2Pipeline._denormalize_latents(0.7 * normalised + 0.3 * noise, mean, std, scaling)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, latents, atol=1e-2)  # the noise is there
