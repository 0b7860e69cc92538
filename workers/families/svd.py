"""Stable Video Diffusion (kind `svd`): a CLIP image encoder, a spatio-temporal UNet, a temporal VAE
decoder (a plain VAE in the tiny profile: see tiny_svd)."""

from __future__ import annotations

from workers import tiny
from workers.families.base import WorkerFamily
from workers.families.sd import FAMILY as SD

SVD_UNET = dict(
    block_out_channels=(32, 32, 32), layers_per_block=1, sample_size=32, in_channels=8, out_channels=4,
    down_block_types=("DownBlockSpatioTemporal", "DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
    up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
    cross_attention_dim=32, num_attention_heads=(8, 8, 8), projection_class_embeddings_input_dim=96,
    addition_time_embed_dim=32, num_frames=14,
)
# A plain `AutoencoderKL` with 32× downsampling: the temporal VAE decoder costs about 3 s a frame at
# 1024×576 on a 2-core CPU (its GroupNorm is fixed at 32 groups). The SVD pipeline calls a VAE without
# `num_frames` when its `forward` has none, so the pipeline code path is the real one.
SVD_VAE = dict(
    block_out_channels=(2, 2, 4, 4, 4, 4), in_channels=3, out_channels=3, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 6, up_block_types=("UpDecoderBlock2D",) * 6,
    latent_channels=4, norm_num_groups=2, sample_size=1024, scaling_factor=0.18215,
)
SVD_IMAGE_ENCODER = dict(
    hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=224,
    intermediate_size=37, patch_size=14,
)
SVD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
    steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
)


def tiny_svd(seed: int = 2):
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tiny.seeded(seed)
    return StableVideoDiffusionPipeline(
        vae=AutoencoderKL(**SVD_VAE),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_IMAGE_ENCODER)),
        unet=UNetSpatioTemporalConditionModel(**SVD_UNET),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )


def _full_size(cfg: dict, refiner: bool) -> list:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return [UNetSpatioTemporalConditionModel(**cfg["SVD_UNET"]), AutoencoderKLTemporalDecoder(**cfg["SVD_VAE"]),
            CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["SVD_IMAGE_ENCODER"]))]


FAMILY = WorkerFamily(
    name="svd",
    pipelines={"img2vid": "StableVideoDiffusionPipeline"},
    loads_as="img2vid",
    tiny=lambda spec: (tiny_svd(), None),
    full_size=_full_size,
    preview_factors=SD.preview_factors,  # SVD's latents are the SD VAE's
    # The SVD UNet declares no `_repeated_blocks`: its spatial and temporal transformer blocks.
    compile_blocks=("BasicTransformerBlock", "TemporalBasicTransformerBlock"),
)
