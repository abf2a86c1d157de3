"""LTX-2's video with its sound from one job: the pipeline's video and audio latents in, one MP4 out.

LTX2Pipeline is built from tiny random components (tests/pipelines_video.py) and run with
``output_type="latent"`` (video and audio latents) and ``"np"`` (frames and waveform). Both latents go
as ONE job (Client -> Redis -> a worker serving only ``ltx2``, which loads ``ltx2audio`` itself) with
``output_format="mp4"`` (and once more over HTTP, ``POST /v1/jobs``). At quality 100 the audio track is ALAC (lossless, no encoder delay): its
samples must equal the pipeline's within one 16-bit step; the frames are H.264 (yuv420p), compared as
the other MP4 tests compare them (PSNR). At other qualities the track is AAC: rate, channels and length
are checked (AAC is lossy and adds 1024 priming samples, so its samples are not compared).
"""

from __future__ import annotations

import io

import av
import httpx
import numpy as np
import pytest
import torch
from pipelines_video import BUILDERS

from latentq import Client, HttpClient
from latentq.core.request import DecodeRequest, Limits
from latentq.core.wire import latent_to_bytes
from latentq.errors import InvalidLatent, InvalidRequest, UnsupportedFormat
from latentq.models.registry import load_registry
from latentq.models.validate import validate_audio_latents
from latentq.worker.encode import encode_mp4

pytestmark = pytest.mark.families


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.fixture
def ltx2_reference(tmp_path, models_file):
    """LTX2Pipeline's latents and outputs; its VAEs and vocoder saved as the hub repo lays them out."""
    case = BUILDERS["ltx2"]()
    latent, output = case.run("latent"), case.run("np")
    case.pipe.vae.save_pretrained(tmp_path / "ltx2" / "vae")
    case.pipe.audio_vae.save_pretrained(tmp_path / "ltx2" / "audio_vae")
    case.pipe.vocoder.save_pretrained(tmp_path / "ltx2" / "vocoder")
    fields = "".join(f"{key} = {value}\n" for key, value in case.spec_fields.items())
    channels = case.pipe.audio_vae.config.latent_channels
    models_file.write_text(models_file.read_text() + f'[models.ltx2]\nsource = "{tmp_path / "ltx2"}"\n{fields}'
                           f'[models.ltx2audio]\nsource = "{tmp_path / "ltx2"}"\nlatent_channels = {channels}\n')  # fmt: skip
    return case, latent, output


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _read_video(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _read_mp4(data: bytes) -> tuple[np.ndarray, np.ndarray, dict]:
    with av.open(io.BytesIO(data)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video)])
        info = {"codec": sound.codec_context.name, "rate": sound.rate, "channels": sound.channels,
                "fps": float(video.average_rate)}  # fmt: skip
    with av.open(io.BytesIO(data)) as container:
        # planar (channels, n) or packed (1, n * channels) frames, as the decoder hands them
        chunks = [frame.to_ndarray().reshape(info["channels"], -1) if frame.format.is_planar
                  else frame.to_ndarray().reshape(-1, info["channels"]).T
                  for frame in container.decode(audio=0)]  # fmt: skip
    return frames, np.concatenate(chunks, axis=1), info


@pytest.mark.timeout(400)
def test_ltx2_video_and_audio_latents_make_one_mp4_with_the_pipelines_sound(procs, ltx2_reference):
    case, latent, output = ltx2_reference
    procs.wait_for_worker(procs.worker("ltx2", extra=("--no-previews",), wait=False), timeout=300)
    client = Client()
    lossless = client.submit(latent.frames, model="ltx2", output_format="mp4", quality=100, fps=25,
                             audio_latents=latent.audio, **case.options)  # fmt: skip
    default = client.submit(latent.frames, model="ltx2", output_format="mp4", fps=25, audio_latents=latent.audio,
                            **case.options)  # fmt: skip

    expected_frames = (np.asarray(output.frames)[0] * 255).round().astype(np.uint8)  # (F, H, W, 3)
    waveform = np.asarray(output.audio)[0]  # (channels, samples), raw: the pipeline does not clip
    expected_pcm = np.round(np.clip(waveform, -1, 1) * 32767).astype(int)
    rate = case.pipe.vocoder.config.output_sampling_rate

    (result,) = lossless.wait(timeout=300)
    frames, samples, info = _read_mp4(client.store.get(result.key))
    assert frames.shape == expected_frames.shape and info["fps"] == 25
    # crf 0 keeps the luma lossless; yuv420p halves the chroma (random tiny frames: RGB PSNR ~16 dB), so the
    # frames are compared by luma, and in full against the pipeline's frames through the same encoder.
    assert psnr(_luma(frames), _luma(expected_frames)) > 40
    same_codec = _read_video(encode_mp4(torch.from_numpy(expected_frames), 25, 100))
    assert psnr(frames, same_codec) > 35
    assert info == {"codec": "alac", "rate": rate, "channels": waveform.shape[0], "fps": 25.0}
    assert samples.shape == expected_pcm.shape, (samples.shape, expected_pcm.shape)
    assert int(np.abs(samples.astype(int) - expected_pcm).max()) <= 1
    assert (result.content_type, result.frames, result.sample_rate, result.channels) == \
        ("video/mp4", expected_frames.shape[0], rate, waveform.shape[0])  # fmt: skip
    assert result.duration_s == pytest.approx(waveform.shape[1] / rate)

    # The same job over HTTP (POST /v1/jobs takes the two-tensor body): the same frames and samples.
    api = procs.api()
    with HttpClient(api) as http:
        job = http.submit(latent.frames, model="ltx2", output_format="mp4", quality=100, fps=25,
                          audio_latents=latent.audio, **case.options)  # fmt: skip
        job.wait(timeout=300)
        over_http = _read_mp4(job.read())
    assert np.array_equal(over_http[0], frames) and np.array_equal(over_http[1], samples)

    # A batch of two (POST /v1/batches, a two-tensor body: latent (2, ...) and audio_latents (2, ...)): each job
    # gets its own sample's sound (the second's audio latents are zeros, so a mix-up cannot pass).
    silent = torch.cat([latent.audio, torch.zeros_like(latent.audio)])
    params = {"model": "ltx2", "output_format": "mp4", "quality": 100, "fps": 25, **case.options}
    body = latent_to_bytes(torch.cat([latent.frames, latent.frames]), silent)
    response = httpx.post(f"{api}/v1/batches", params=params, content=body)
    assert response.status_code == 202, response.text
    ids = response.json()["job_ids"]
    with HttpClient(api) as http:
        batched = [http.job(job_id) for job_id in ids]
        for job in batched:
            job.wait(timeout=300)
        first, second = (_read_mp4(job.read()) for job in batched)
        assert batched[0].info().batch_size == 2  # decoded together: same video and audio shapes
    # a batch of two may round differently from a batch of one: within one 8-bit step, one 16-bit step
    assert psnr(first[0], frames) > 40 and psnr(second[0], frames) > 40
    assert first[1].shape == samples.shape and int(np.abs(first[1].astype(int) - samples.astype(int)).max()) <= 1
    assert second[1].shape == samples.shape and int(np.abs(second[1].astype(int) - samples.astype(int)).max()) > 1
    # one audio sample per latent sample, or a 422 naming the field (nothing queued)
    response = httpx.post(f"{api}/v1/batches", params=params,
                          content=latent_to_bytes(torch.cat([latent.frames] * 3), silent))  # fmt: skip
    assert response.status_code == 422 and response.json()["error"]["field"] == "audio_latents"

    (result,) = default.wait(timeout=300)
    frames, samples, info = _read_mp4(client.store.get(result.key))
    assert frames.shape == expected_frames.shape and info["codec"] == "aac"
    assert (info["rate"], info["channels"]) == (rate, waveform.shape[0])
    # AAC: whole 1024-sample frames, the first of them the encoder's priming
    assert waveform.shape[1] + 1024 <= samples.shape[1] < waveform.shape[1] + 3 * 1024


def test_audio_latents_are_checked_as_the_audio_model_checks_its_own():
    registry = load_registry()
    ltx2, limits = registry.get("ltx2"), Limits()
    mp4 = DecodeRequest(model="ltx2", output_format="mp4")
    assert validate_audio_latents(torch.randn(8, 10, 16), ltx2, mp4, limits, registry).shape == (1, 8, 10, 16)
    cases = [
        (torch.randn(1, 4, 10, 16), ltx2, mp4, InvalidLatent, "audio_latents", "8, l, mel_bins"),
        (torch.randn(8, 10), ltx2, mp4, InvalidLatent, "audio_latents", "ltx2audio"),
        (torch.randn(2, 8, 10, 16), ltx2, mp4, InvalidLatent, "audio_latents", "batch dimension is 2"),
        (torch.full((1, 8, 2, 16), float("inf")), ltx2, mp4, InvalidLatent, "audio_latents", "NaN or Inf"),
        (torch.randn(1, 8, 10, 16), ltx2, DecodeRequest(model="ltx2", output_format="uint8"), UnsupportedFormat,
         "output_format", "one MP4"),
        (torch.randn(1, 8, 10, 16), registry.get("wan22"), DecodeRequest(model="wan22", output_format="mp4"),
         InvalidRequest, "audio_latents", "takes no audio_latents"),
    ]  # fmt: skip
    for audio, spec, request, error, field, words in cases:
        with pytest.raises(error, match=words) as caught:
            validate_audio_latents(audio, spec, request, limits, registry)
        assert caught.value.field == field


def test_jobs_with_audio_batch_only_with_the_same_shapes():
    from latentq.worker.av import AVLatents
    from latentq.worker.pipeline import group_for_decode

    request = DecodeRequest(model="ltx2", output_format="mp4")
    video = torch.zeros(1, 128, 2, 4, 4)
    items = [("a", request, AVLatents(video, torch.zeros(1, 8, 10, 16))),
             ("b", request, AVLatents(video, torch.zeros(1, 8, 10, 16))),
             ("c", request, AVLatents(video, torch.zeros(1, 8, 12, 16))),
             ("d", request, video)]  # fmt: skip
    groups = sorted([item[0] for item in group] for group in group_for_decode(items, 8))
    assert groups == [["a", "b"], ["c"], ["d"]]
