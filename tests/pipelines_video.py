"""Tiny diffusers pipelines (real classes, shrunken configs, random weights) for the video and audio families.

Each builder returns a ``Case``: the pipeline, its call arguments (prompt embeddings instead of a text
encoder, few steps, tiny sizes), the latentq request options that describe the same video, and the
registry fields a tiny VAE needs (its spatial / temporal factors differ from the released one's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import diffusers
import torch

__all__ = ["BUILDERS", "Case"]


@dataclass
class Case:
    pipe: Any
    call: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    spec_fields: dict[str, Any] = field(default_factory=dict)
    extra_dirs: dict[str, Any] = field(default_factory=dict)  # other components latentq loads (ltx2's vocoder)

    def __post_init__(self) -> None:
        for component in self.pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()  # built modules start in training mode: dropout would make runs differ

    def run(self, output_type: str, seed: int = 0):
        """The pipeline, once, with a fresh generator of ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return self.pipe(**self.call, generator=generator, output_type=output_type)


def _embeds(length: int, dim: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(1, length, dim, generator=torch.Generator().manual_seed(seed))


def wan22() -> Case:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2, dim_mult=[1, 1, 1, 1],
        num_res_blocks=1, scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
        latents_mean=torch.linspace(-0.3, 0.3, 48).tolist(), latents_std=torch.linspace(0.5, 2.0, 48).tolist(),
    )  # fmt: skip
    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=3.0)  # fmt: skip
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                 transformer=transformer, expand_timesteps=True)  # fmt: skip
    call = dict(prompt_embeds=_embeds(8, 32), guidance_scale=1.0, num_inference_steps=2, height=32, width=64,
                num_frames=5)  # fmt: skip
    return Case(pipe, call, spec_fields=dict(spatial_factor=16, temporal_factor=4))


def ltxvideo() -> Case:
    torch.manual_seed(0)
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False, timestep_conditioning=True,
        scaling_factor=1.25,
    )  # fmt: skip
    vae.latents_mean.copy_(torch.linspace(-0.2, 0.2, 8))
    vae.latents_std.copy_(torch.linspace(0.6, 1.6, 8))
    pipe = diffusers.LTXPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), transformer=transformer)  # fmt: skip
    call = dict(prompt_embeds=_embeds(8, 32), prompt_attention_mask=torch.ones(1, 8), guidance_scale=1.0,
                num_inference_steps=2, height=32, width=64, num_frames=9, decode_timestep=0.05,
                decode_noise_scale=0.025)  # fmt: skip
    # Initial noise handed in: the generator's first draw is then the decode noise, which latentq draws from
    # decode_noise_seed (Case.run's seed, 0).
    call["latents"] = torch.randn(1, 3 * 8 * 16, 8, generator=torch.Generator().manual_seed(11))
    options = dict(num_frames=9, height=32, width=64, decode_timestep=0.05, decode_noise_scale=0.025,
                   decode_noise_seed=0)  # fmt: skip
    return Case(pipe, call, options, spec_fields=dict(latent_channels=8, spatial_factor=4, temporal_factor=4))


def cogvideox() -> Case:
    """CogVideoX 1.5's layout: the transformer's patch_size_t of 2 pads 3 latent frames to 4."""
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
        patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4, scaling_factor=0.7,
    )  # fmt: skip
    pipe = diffusers.CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                       scheduler=diffusers.CogVideoXDDIMScheduler())  # fmt: skip
    call = dict(prompt_embeds=_embeds(8, 32), guidance_scale=1.0, num_inference_steps=2, height=32, width=48,
                num_frames=9)  # fmt: skip
    return Case(pipe, call, dict(num_frames=9), spec_fields=dict(latent_channels=4))


def mochi() -> Case:
    torch.manual_seed(0)
    transformer = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLMochi(
        encoder_block_out_channels=(32, 32, 32, 32), decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1), add_attention_block=(False,) * 5, scaling_factor=1.3,
    )  # fmt: skip
    pipe = diffusers.MochiPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                   scheduler=diffusers.FlowMatchEulerDiscreteScheduler())  # fmt: skip
    call = dict(prompt_embeds=_embeds(8, 32), prompt_attention_mask=torch.ones(1, 8), guidance_scale=1.0,
                num_inference_steps=2, height=32, width=48, num_frames=7)  # fmt: skip
    return Case(pipe, call)


def easyanimate() -> Case:
    torch.manual_seed(0)
    transformer = diffusers.EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, patch_size=2,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLMagvit(
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        spatial_group_norm=False,
    )  # fmt: skip
    pipe = diffusers.EasyAnimatePipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                                         scheduler=diffusers.FlowMatchEulerDiscreteScheduler())  # fmt: skip
    call = dict(prompt_embeds=_embeds(8, 16), prompt_attention_mask=torch.ones(1, 8), guidance_scale=1.0,
                num_inference_steps=2, height=32, width=48, num_frames=9)  # fmt: skip
    return Case(pipe, call, spec_fields=dict(latent_channels=4))


def hunyuanvideo15() -> Case:
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(0)
    transformer = diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLHunyuanVideo15(
        latent_channels=4, block_out_channels=(16, 16), layers_per_block=1, spatial_compression_ratio=4,
        temporal_compression_ratio=2, downsample_match_channel=False, upsample_match_channel=False,
        scaling_factor=1.1,
    )  # fmt: skip
    pipe = diffusers.HunyuanVideo15Pipeline(
        transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=1.0),
    )  # fmt: skip
    call = dict(prompt_embeds=_embeds(8, 16), prompt_embeds_mask=torch.ones(1, 8), prompt_embeds_2=_embeds(8, 32, 8),
                prompt_embeds_mask_2=torch.ones(1, 8), num_inference_steps=2, height=16, width=24, num_frames=5)  # fmt: skip
    return Case(pipe, call, spec_fields=dict(latent_channels=4, spatial_factor=4, temporal_factor=2))


def allegro() -> Case:
    """Allegro decodes only in tiles of 24 frames x sample_size^2: the smallest video one tile covers."""
    torch.manual_seed(0)
    transformer = diffusers.AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=1,
        cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8, caption_channels=24,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLAllegro(
        block_out_channels=(4, 4, 4, 4), latent_channels=4, layers_per_block=1, norm_num_groups=2,
        sample_size=128, scaling_factor=0.13,
    )  # fmt: skip
    pipe = diffusers.AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                     scheduler=diffusers.DDIMScheduler())  # fmt: skip
    pipe.vae.enable_tiling()
    call = dict(prompt_embeds=_embeds(8, 24), prompt_attention_mask=torch.ones(1, 8), guidance_scale=1.0,
                num_inference_steps=2, height=128, width=128, num_frames=23, clean_caption=False)  # fmt: skip
    return Case(pipe, call, dict(num_frames=23, height=128, width=128), spec_fields=dict(latent_channels=4))


def svd() -> Case:
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = diffusers.UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32), down_block_types=["DownEncoderBlock2D"] * 4, layers_per_block=1,
        latent_channels=4, scaling_factor=0.18215,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=2, image_size=224,
        intermediate_size=37, patch_size=32,
    ))  # fmt: skip
    features = CLIPImageProcessor(crop_size=224, size=224)
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", trained_betas=None,
        use_karras_sigmas=True,
    )  # fmt: skip
    pipe = diffusers.StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                                  feature_extractor=features)  # fmt: skip
    image = Image.fromarray((torch.rand(32, 48, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy())
    call = dict(image=image, height=32, width=48, num_frames=6, decode_chunk_size=4, num_inference_steps=2,
                min_guidance_scale=1.0, max_guidance_scale=1.0)  # fmt: skip
    return Case(pipe, call, dict(decode_chunk_size=4))


def stableaudio() -> Case:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = diffusers.StableAudioDiTModel(
        sample_size=16, in_channels=3, num_layers=2, attention_head_dim=4, num_key_value_attention_heads=2,
        out_channels=3, cross_attention_dim=4, time_proj_dim=8, global_states_input_dim=8,
        cross_attention_input_dim=4,
    )  # fmt: skip
    # The pipeline's own CosineDPMSolverMultistepScheduler needs torchsde; any scheduler drives it (not under test).
    scheduler = diffusers.EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction",
                                                         sigma_data=1.0)  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderOobleck(
        encoder_hidden_size=6, downsampling_ratios=[2, 4], decoder_channels=3, decoder_input_channels=3,
        audio_channels=2, channel_multiples=[2, 4], sampling_rate=64,
    )  # fmt: skip
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    projection = diffusers.StableAudioProjectionModel(text_encoder_dim=8, conditioning_dim=4, min_value=0,
                                                      max_value=32)  # fmt: skip
    pipe = diffusers.StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection,
                                         tokenizer=None, transformer=transformer, scheduler=scheduler)  # fmt: skip
    # The window: 16 latent steps x 8 samples = 128 samples = 2 s at 64 Hz; the clip asked for is 0.25..1.75 s.
    call = dict(prompt_embeds=_embeds(6, 8), attention_mask=torch.ones(1, 6, dtype=torch.long),
                guidance_scale=1.0, num_inference_steps=2, audio_start_in_s=0.25, audio_end_in_s=1.75)  # fmt: skip
    return Case(pipe, call, dict(audio_start_in_s=0.25, audio_end_in_s=1.75), spec_fields=dict(latent_channels=3,
                temporal_factor=8))  # fmt: skip


def ltx2() -> Case:
    """LTX-2 (video and audio transformer, connectors in place of the Gemma text encoder's output). Its
    decode noise is drawn after the generator's draws for the latents, so it is compared at
    decode_noise_scale 0 (the timestep-conditioned decode still runs); ltxvideo checks the noise path."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    hidden, layers = 32, 1  # the connectors read Gemma's stacked hidden states: hidden * (layers + 1) wide
    torch.manual_seed(0)
    transformer = diffusers.LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, qk_norm="rms_norm_across_heads",
        caption_channels=hidden, rope_double_precision=False, rope_type="split",
    )  # fmt: skip
    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=hidden, text_proj_in_factor=layers + 1, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
    )  # fmt: skip
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=True, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False, scaling_factor=1.2,
    )  # fmt: skip
    vae.use_framewise_decoding = False
    vae.latents_mean.copy_(torch.linspace(-0.2, 0.2, 4))
    vae.latents_std.copy_(torch.linspace(0.6, 1.6, 4))
    torch.manual_seed(0)
    audio_vae = diffusers.AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    )  # fmt: skip
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    )  # fmt: skip
    pipe = diffusers.LTX2Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None,
        tokenizer=None, connectors=connectors, transformer=transformer, vocoder=vocoder,
    )  # fmt: skip
    call = dict(
        prompt_embeds=_embeds(8, hidden * (layers + 1)), prompt_attention_mask=torch.ones(1, 8, dtype=torch.long),
        guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0,
        audio_stg_scale=0.0, audio_modality_scale=1.0, audio_guidance_rescale=0.0,
        spatio_temporal_guidance_blocks=None, use_cross_timestep=False, height=32, width=32, num_frames=5,
        frame_rate=25.0, num_inference_steps=2, decode_timestep=0.05, decode_noise_scale=0.0,
    )  # fmt: skip
    return Case(pipe, call, dict(decode_timestep=0.05, decode_noise_scale=0.0),
                spec_fields=dict(latent_channels=4, spatial_factor=2, temporal_factor=2))


BUILDERS = {
    "ltx2": ltx2, "svd": svd, "stableaudio": stableaudio, "hunyuanvideo15": hunyuanvideo15, "allegro": allegro, "wan22": wan22, "ltxvideo": ltxvideo, "cogvideox": cogvideox, "mochi": mochi, "easyanimate": easyanimate}
