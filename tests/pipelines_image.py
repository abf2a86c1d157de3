"""Tiny random image pipelines (diffusers' real classes, shrunken configs) for the fidelity tests.

Each builder returns ``(pipeline, call_kwargs)``: the pipeline built from random components and
the arguments of one generation (prompt embeddings in place of text encoders, a tiny size, two
steps). ``run(name, output_type)`` calls it with a fresh generator, so ``"latent"`` and ``"np"``
runs denoise the same latents. The VAEs keep their real spatial factors (8x, 32x) and non-trivial
normalisation statistics, so every step between the denoising loop and the pixels is exercised.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BUILDERS", "build", "run"]

SEED = 3


def _qwenimage() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))  # fmt: skip
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=torch.linspace(-0.5, 0.5, 16).tolist(),
                                 latents_std=torch.linspace(0.5, 2.0, 16).tolist())  # fmt: skip
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                             transformer=transformer)  # fmt: skip
    embeds = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1))
    kwargs = dict(prompt_embeds=embeds, prompt_embeds_mask=torch.ones(1, 6, dtype=torch.long), height=48, width=64,
                  num_inference_steps=2, true_cfg_scale=1.0)  # fmt: skip
    return pipe, kwargs


def _hunyuanimage21() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = HunyuanImageTransformer2DModel(in_channels=64, out_channels=64, num_attention_heads=2,
                                                 attention_head_dim=8, num_layers=1, num_single_layers=1,
                                                 num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=True,
                                                 text_embed_dim=32, text_embed_2_dim=32, rope_axes_dim=(4, 4))  # fmt: skip
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=64,
                                    block_out_channels=(32, 32, 32, 32, 64, 128), layers_per_block=1,
                                    scaling_factor=0.75289, spatial_compression_ratio=32, sample_size=64)  # fmt: skip
    pipe = HunyuanImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae, text_encoder=None,
                                tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
                                guider=None, ocr_guider=None)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    kwargs = dict(prompt_embeds=torch.randn(1, 6, 32, generator=g), prompt_embeds_mask=torch.ones(1, 6),
                  prompt_embeds_2=torch.randn(1, 4, 32, generator=g), prompt_embeds_mask_2=torch.ones(1, 4),
                  distilled_guidance_scale=3.5, height=64, width=128, num_inference_steps=2)  # fmt: skip
    return pipe, kwargs


def _sana() -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=32, out_channels=32, num_layers=1,
                                         num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                         cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
                                         sample_size=16)  # fmt: skip
    vae = AutoencoderDC(in_channels=3, latent_channels=32, attention_head_dim=2,
                        encoder_block_types=("ResBlock",) * 5 + ("EfficientViTBlock",),
                        decoder_block_types=("ResBlock",) * 5 + ("EfficientViTBlock",),
                        encoder_block_out_channels=(8, 8, 8, 8, 16, 32), decoder_block_out_channels=(8, 8, 8, 8, 16, 32),
                        encoder_qkv_multiscales=((),) * 5 + ((5,),), decoder_qkv_multiscales=((),) * 5 + ((5,),),
                        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
                        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                        decoder_act_fns="silu", scaling_factor=0.41407)  # fmt: skip
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))  # fmt: skip
    embeds = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1))
    # Resolution binning (the default): it denoises 256x1024-ish bins and resizes back to 200x600.
    kwargs = dict(prompt_embeds=embeds, prompt_attention_mask=torch.ones(1, 6), guidance_scale=1.0, height=200,
                  width=600, num_inference_steps=2)  # fmt: skip
    return pipe, kwargs


def _zimage() -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5,
                                           qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
                                           axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])  # fmt: skip
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
                        latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                          transformer=transformer)  # fmt: skip
    embeds = [torch.randn(6, 16, generator=torch.Generator().manual_seed(1))]
    kwargs = dict(prompt_embeds=embeds, guidance_scale=0.0, height=48, width=64, num_inference_steps=2)
    return pipe, kwargs


def _hidream() -> tuple[Any, dict[str, Any]]:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        HiDreamImagePipeline,
        HiDreamImageTransformer2DModel,
    )

    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                                 num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
                                                 caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=4,
                                                 num_activated_experts=2, axes_dims_rope=(4, 2, 2),
                                                 max_resolution=(32, 32), llama_layers=(0, 1)).eval()  # fmt: skip
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
                        latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=0.3611,
                        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
    pipe = HiDreamImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                tokenizer_3=None, text_encoder_4=None, tokenizer_4=None, transformer=transformer)  # fmt: skip
    pipe.default_sample_size = 8  # it rescales every request to this area (x8): 64x64, not 1024x1024
    g = torch.Generator().manual_seed(1)
    kwargs = dict(prompt_embeds_t5=torch.randn(1, 6, 32, generator=g),
                  prompt_embeds_llama3=torch.randn(2, 1, 6, 16, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 64, generator=g), guidance_scale=1.0, height=64, width=64,
                  num_inference_steps=2)  # square: the tiny transformer's padded token grid is square
    return pipe, kwargs


def _kandinsky22() -> tuple[Any, dict[str, Any]]:
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=8, addition_embed_type="image", down_block_types=(
        "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"), up_block_types=("SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(8, 16),
        layers_per_block=1, encoder_hid_dim=8, encoder_hid_dim_type="image_proj", cross_attention_dim=16,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=4)  # fmt: skip
    movq = VQModel(block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3 +
                   ["AttnDownEncoderBlock2D"], in_channels=3, latent_channels=4, layers_per_block=1,
                   norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12, out_channels=3,
                   up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, vq_embed_dim=4)  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, steps_offset=1, prediction_type="epsilon",
                              thresholding=False)  # fmt: skip
    pipe = KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)
    g = torch.Generator().manual_seed(1)
    kwargs = dict(image_embeds=torch.randn(1, 8, generator=g), negative_image_embeds=torch.randn(1, 8, generator=g),
                  guidance_scale=4.0, height=48, width=64, num_inference_steps=2)  # fmt: skip
    return pipe, kwargs


BUILDERS = {"qwenimage": _qwenimage, "hunyuanimage21": _hunyuanimage21, "sana": _sana, "zimage": _zimage,
            "hidream": _hidream, "kandinsky22": _kandinsky22}  # fmt: skip


def build(name: str) -> tuple[Any, dict[str, Any]]:
    pipe, kwargs = BUILDERS[name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe, kwargs


@torch.no_grad()
def run(pipe: Any, kwargs: dict[str, Any], output_type: str) -> Any:
    """One generation; the same seed every call, so the latent and pixel runs share their latents."""
    return pipe(**kwargs, generator=torch.Generator().manual_seed(SEED), output_type=output_type).images


def vae_of(pipe: Any) -> Any:
    return pipe.movq if hasattr(pipe, "movq") else pipe.vae
