"""Built-in image models of the newer pipelines (Qwen-Image, HunyuanImage 2.1, SANA, Z-Image, HiDream, Kandinsky 2.2).

Torch-free: the registry, and so producers and the API, import it. Each spec names its ``family``
(the module of ``latentq.models.families`` that checks, unpacks, normalises and decodes as its
pipeline does; none where the generic fields say it all), the real hub weights (``source`` /
``subfolder``) and the pipelines whose latents it decodes. Scaling and shift factors are the
VAE configs' own, which those pipelines read.
"""

from __future__ import annotations

from .modelspec import ModelSpec

__all__ = ["SPECS"]

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(name="qwenimage", family="qwenimage", loader="diffusers", diffusers_class="AutoencoderKLQwenImage",
              source="Qwen/Qwen-Image", subfolder="vae", latent_channels=16, layout="packed",
              normalization="latents_mean_std", dtype="bfloat16", tile_above_pixels=1328 * 1328,
              pipelines=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageEditPipeline"),
              description="Qwen-Image VAE; packed (B, seq, 64) latents with height and width, or unpacked "
                          "(B, 16, h, w); per-channel latents_mean / latents_std"),
    # scaling_factor 0.75289: what diffusers' scripts/convert_hunyuan_image_to_diffusers.py writes into the hub
    # VAE's config for HunyuanImage 2.1 (and its distilled variant); AutoencoderKLHunyuanImage has no default
    # (None) and HunyuanImagePipeline divides by vae.config.scaling_factor, so the config's value is the one.
    ModelSpec(name="hunyuanimage21", loader="diffusers", diffusers_class="AutoencoderKLHunyuanImage",
              source="hunyuanvideo-community/HunyuanImage-2.1-Diffusers", subfolder="vae", latent_channels=64,
              spatial_factor=32, scaling_factor=0.75289, dtype="bfloat16", tile_above_pixels=2048 * 2048,
              pipelines=("HunyuanImagePipeline",),
              description="HunyuanImage 2.1 VAE (32x); (B, 64, h, w) latents"),
    ModelSpec(name="sana", family="sana", loader="diffusers", diffusers_class="AutoencoderDC",
              source="Efficient-Large-Model/Sana_1600M_1024px_diffusers", subfolder="vae", latent_channels=32,
              spatial_factor=32, scaling_factor=0.41407, dtype="bfloat16", tile_above_pixels=2048 * 2048,
              pipelines=("SanaPipeline", "SanaSprintPipeline", "SanaPAGPipeline"),
              description="SANA deep-compression AE (32x); (B, 32, h, w) latents; height and width: the size "
                          "asked of the pipeline (resolution binning undone)"),
    ModelSpec(name="zimage", loader="diffusers", diffusers_class="AutoencoderKL", source="Tongyi-MAI/Z-Image-Turbo",
              subfolder="vae", latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, dtype="bfloat16",
              preview="taef1", pipelines=("ZImagePipeline", "ZImageImg2ImgPipeline"),
              description="Z-Image VAE (FLUX.1's); (B, 16, h, w) latents"),
    ModelSpec(name="hidream", loader="diffusers", diffusers_class="AutoencoderKL", source="HiDream-ai/HiDream-I1-Full",
              subfolder="vae", latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, dtype="bfloat16",
              preview="taef1", pipelines=("HiDreamImagePipeline",),
              description="HiDream-I1 VAE (FLUX.1's); (B, 16, h, w) latents"),
    ModelSpec(name="kandinsky22", family="kandinsky22", loader="diffusers", diffusers_class="VQModel",
              source="kandinsky-community/kandinsky-2-2-decoder", subfolder="movq", latent_channels=4,
              dtype="float16", pipelines=("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline",
                                          "KandinskyV22InpaintPipeline", "KandinskyV22ControlnetPipeline"),
              description="Kandinsky 2.2 MoVQ; (B, 4, h, w) latents, decoded unquantized"),
)  # fmt: skip
