"""Shrunken configs of the real diffusers VAE classes (random weights, same code paths, 8x spatial)."""

KL = dict(
    in_channels=3, out_channels=3, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64,
)  # fmt: skip
TINY = dict(
    encoder_block_out_channels=[8, 8, 8, 8], decoder_block_out_channels=[8, 8, 8, 8],
    num_encoder_blocks=[1, 1, 1, 1], num_decoder_blocks=[1, 1, 1, 1],
)  # fmt: skip

CONFIGS = {
    "sd15": dict(KL, latent_channels=4, scaling_factor=0.18215),
    "sdxl": dict(KL, latent_channels=4, scaling_factor=0.13025),
    "sd3": dict(KL, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False),
    "flux1": dict(KL, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                  use_quant_conv=False, use_post_quant_conv=False),
    "flux2": dict(
        block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, latent_channels=32,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    ),
    "hunyuanvideo": dict(
        latent_channels=16, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
        down_block_types=["HunyuanVideoDownBlock3D"] * 4, up_block_types=["HunyuanVideoUpBlock3D"] * 4,
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    ),
    "wan": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]),
    "taesd": dict(TINY, latent_channels=4),
    "taesdxl": dict(TINY, latent_channels=4),
    "taesd3": dict(TINY, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
    "taef1": dict(TINY, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
}  # fmt: skip
