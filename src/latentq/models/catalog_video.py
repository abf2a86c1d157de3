"""Built-in video and audio models whose pipelines need a family module (``latentq.models.families``).

Issue 14 part 2 (wan22, ltxvideo, ltx2, hunyuanvideo15, cogvideox, mochi, svd, allegro, easyanimate,
stableaudio) lists its ``ModelSpec`` entries here; the registry imports ``SPECS``. Keep this module
torch-free (the registry, and so producers and the API, import it): a spec names its ``family``
module, which imports diffusers only inside its methods. Image families live in ``catalog.py``.

``layout`` is descriptive here (the family checks shapes): ``video`` (B, C, f, h, w), ``video_frames_first``
(B, f, C, h, w), ``video_tokens`` (B, f*h*w, C) with num_frames/height/width, ``audio`` (B, C, l)
or (B, C, l, mel_bins).
For audio, ``temporal_factor`` is the output samples per latent step (Stable Audio: the VAE's hop length).
"""

from __future__ import annotations

from typing import Any

from .modelspec import FRAMEWISE, ModelSpec

__all__ = ["SPECS"]


def _spec(name: str, family: str, cls: str, source: str, channels: int, **fields: Any) -> ModelSpec:
    fields.setdefault("has_encoder", False)  # only where the family wires the class's encoder
    return ModelSpec(name=name, loader="diffusers", family=family, diffusers_class=cls, source=source,
                     subfolder="vae", latent_channels=channels, **fields)  # fmt: skip


SPECS: tuple[ModelSpec, ...] = (
    _spec("wan22", "wan22", "AutoencoderKLWan", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", 48, layout="video",
          spatial_factor=16, temporal_factor=4, dtype="float32", tile_above_pixels=704 * 1280, tile_above_frames=FRAMEWISE,
          pipelines=("WanPipeline", "WanImageToVideoPipeline"), has_encoder=True,
          description="Wan 2.2 TI2V-5B VAE (48 channels, patchified, 16x); (B, 48, f, h, w) latents; encodes an "
                      "image as WanImageToVideoPipeline conditions on it, (B, 48, 1, h, w)"),
    _spec("ltxvideo", "ltxvideo", "AutoencoderKLLTXVideo", "Lightricks/LTX-Video", 128, layout="video_tokens",
          spatial_factor=32, temporal_factor=8, dtype="bfloat16",
          has_encoder=True, pipelines=("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline"),
          description="LTX-Video VAE; packed (B, f*h*w, 128) tokens with num_frames, height and width; "
                      "decode_timestep, decode_noise_scale, decode_noise_seed; encodes an image as LTXImageToVideoPipeline "
                      "conditions on it (mode), (B, h*w, 128)"),
    _spec("ltx2", "ltx2", "AutoencoderKLLTX2Video", "Lightricks/LTX-2", 128, layout="video", spatial_factor=32,
          temporal_factor=8, dtype="bfloat16",
          pipelines=("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline"), audio_model="ltx2audio",
          description="LTX-2 video VAE; (B, 128, f, h, w) latents as LTX2Pipeline returns them (denormalised); "
                      "decode_timestep, decode_noise_scale, decode_noise_seed; with audio_latents beside them, one "
                      "MP4 with the sound track (decoded by ltx2audio); its audio alone: model ltx2audio"),
    ModelSpec(name="ltx2audio", loader="diffusers", family="ltx2audio", diffusers_class="AutoencoderKLLTX2Audio",
              source="Lightricks/LTX-2", subfolder="audio_vae", latent_channels=8, layout="audio", temporal_factor=960,
              dtype="bfloat16", has_encoder=False, pipelines=("LTX2Pipeline", "LTX2ImageToVideoPipeline"),
              description="LTX-2 audio VAE + its vocoder (the `vocoder` folder beside it); (B, 8, l, mel_bins) "
                          "latents as LTX2Pipeline returns them, to 24 kHz stereo wav / flac"),
    _spec("hunyuanvideo15", "hunyuanvideo15", "AutoencoderKLHunyuanVideo15",
          "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v", 32, layout="video", spatial_factor=16,
          temporal_factor=4, dtype="bfloat16", has_encoder=True, pipelines=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
          description="HunyuanVideo 1.5 VAE (16x); (B, 32, f, h, w) latents; encodes an image as its I2V pipeline "
                      "conditions on it, (B, 32, 1, h, w)"),
    _spec("cogvideox", "cogvideox", "AutoencoderKLCogVideoX", "THUDM/CogVideoX-5b", 16, layout="video_frames_first",
          scaling_factor=0.7, temporal_factor=4, dtype="bfloat16", tile_above_frames=FRAMEWISE,
          has_encoder=True, pipelines=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline"),
          description="CogVideoX VAE; frames-first (B, f, 16, h, w) latents; num_frames drops CogVideoX 1.5's "
                      "padding frames; encodes an image as CogVideoXImageToVideoPipeline conditions on it (mode), "
                      "(B, 1, 16, h, w)"),
    _spec("mochi", "mochi", "AutoencoderKLMochi", "genmo/mochi-1-preview", 12, layout="video", temporal_factor=6,
          dtype="bfloat16", has_encoder=True, pipelines=("MochiPipeline",),
          description="Mochi 1 VAE (6x temporal); (B, 12, f, h, w) latents, latents_mean/std from its config; encodes an image "
                      "(mode, normalised), (B, 12, 1, h, w)"),
    _spec("svd", "svd", "AutoencoderKLTemporalDecoder", "stabilityai/stable-video-diffusion-img2vid-xt", 4,
          layout="video_frames_first", scaling_factor=0.18215, temporal_factor=1, dtype="float16",
          has_encoder=True, pipelines=("StableVideoDiffusionPipeline",),
          description="Stable Video Diffusion temporal decoder; frames-first (B, f, 4, h, w) latents; "
                      "decode_chunk_size; encodes an image as the pipeline conditions on it (unscaled), "
                      "(B, 1, 4, h, w)"),
    _spec("allegro", "allegro", "AutoencoderKLAllegro", "rhymes-ai/Allegro", 4, layout="video", scaling_factor=0.13,
          temporal_factor=4, dtype="float32", pipelines=("AllegroPipeline",),
          description="Allegro VAE (always tiled); (B, 4, f, h, w) latents; num_frames, height, width crop; no "
                      "encoder offered: its encoder works only in 24-frame tiles (one image encodes to nothing) "
                      "and AllegroPipeline (text to video) never encodes"),
    _spec("easyanimate", "easyanimate", "AutoencoderKLMagvit", "alibaba-pai/EasyAnimateV5.1-7b-zh-diffusers", 16,
          layout="video", scaling_factor=0.7125, temporal_factor=4, dtype="bfloat16",
          has_encoder=True, pipelines=("EasyAnimatePipeline", "EasyAnimateControlPipeline", "EasyAnimateInpaintPipeline"),
          description="EasyAnimate MagViT VAE; (B, 16, f, h, w) latents; encodes an image as its inpaint / control "
                      "pipelines do, (B, 16, 1, h, w)"),
    _spec("stableaudio", "stableaudio", "AutoencoderOobleck", "stabilityai/stable-audio-open-1.0", 64,
          layout="audio", temporal_factor=2048, dtype="float16", pipelines=("StableAudioPipeline",),
          description="Stable Audio Open VAE; (B, 64, l) latents to 44.1 kHz stereo wav / flac; "
                      "audio_start_in_s, audio_end_in_s"),
)  # fmt: skip
