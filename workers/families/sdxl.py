"""SDXL (kinds `sdxl` and `turbo`): two text encoders (CLIP-L and OpenCLIP bigG), a UNet with added
time and text embeddings, the SDXL VAE; a refiner (img2img on its own UNet) shares the base's VAE and
second text encoder."""

from __future__ import annotations

from workers import tiny
from workers.families.base import TextEncoder, WorkerFamily

# UNets get a third level so cross-attention runs at 1/32 of the image side, not 1/16.
SDXL_UNET = dict(
    block_out_channels=(2, 4, 4), layers_per_block=1, sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 2, 4), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=8, transformer_layers_per_block=(1, 1, 2),
    projection_class_embeddings_input_dim=80,  # 6 × 8 time ids + 32 pooled text
    cross_attention_dim=64, norm_num_groups=1,
)
# The refiner sees only text_encoder_2 (32 wide) and 5 time ids (aesthetic score instead of target size).
SDXL_REFINER_UNET = dict(SDXL_UNET, cross_attention_dim=32, projection_class_embeddings_input_dim=72)
SDXL_VAE = tiny.VAE


def tiny_base(seed: int = 0):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tiny.seeded(seed)
    text_config = CLIPTextConfig(**tiny.TEXT_ENCODER)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SDXL_VAE),
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tiny.tokenizer(),
        tokenizer_2=tiny.tokenizer(),
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=EulerDiscreteScheduler(**tiny.SCHEDULER),
        add_watermarker=False,
    )


def tiny_refiner(base, seed: int = 1):
    """A refiner sharing the base's VAE and second text encoder, as the real pair does."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    tiny.seeded(seed)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=UNet2DConditionModel(**SDXL_REFINER_UNET),
        scheduler=EulerDiscreteScheduler(**tiny.SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def _tiny(spec):
    pipe = tiny_base(seed=0 if spec.kind == "sdxl" else 3)
    return pipe, (tiny_refiner(pipe) if spec.refiner else None)


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SDXL_UNET)


def _full_size(cfg: dict, refiner: bool) -> list:
    """SDXL base (Turbo is the same architecture), and the refiner's UNet (it shares the base's VAE and
    bigG encoder)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    modules = [UNet2DConditionModel(**cfg["SDXL_BASE_UNET"]), AutoencoderKL(**cfg["SDXL_VAE"]),
               CLIPTextModel(CLIPTextConfig(**cfg["CLIP_L_TEXT"])),
               CLIPTextModelWithProjection(CLIPTextConfig(**cfg["OPENCLIP_BIGG_TEXT"]))]
    return modules + ([UNet2DConditionModel(**cfg["SDXL_REFINER_UNET"])] if refiner else [])


FAMILY = WorkerFamily(
    name="sdxl",
    pipelines={"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "control:txt2img": "StableDiffusionXLControlNetPipeline",
               "control:img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline",
               "control:inpaint": "StableDiffusionXLControlNetInpaintPipeline",
               "refiner": "StableDiffusionXLImg2ImgPipeline",
               "train": "StableDiffusionXLPipeline"},  # a training job's copy, and its validation images
    loads_as="txt2img",
    tiny=_tiny,
    full_size=_full_size,
    options={"add_watermarker": False},  # no invisible watermark
    text_encoders=(TextEncoder("text_encoder", "tokenizer", "clip_l"),
                   TextEncoder("text_encoder_2", "tokenizer_2", "clip_g")),
    preview_factors=(((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                      (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011)),
    compile_blocks=("BasicTransformerBlock",),
    tiny_denoiser=_tiny_unet,
)
