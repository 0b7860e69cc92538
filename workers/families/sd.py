"""Stable Diffusion 1.x and 2.x (kind `sd`), PAI-Diffusion's Chinese models included: one CLIP-shaped
text encoder (PAI's has a BERT tokenizer), a UNet, the SD VAE."""

from __future__ import annotations

from workers import tiny
from workers.families.base import TextEncoder, WorkerFamily

# The SDXL-tiny levels with one text encoder (32 wide), no added time/text embedding, and SD's
# convolutional attention projections (SD 2.x uses linear ones; the architecture is the same).
SD_UNET = dict(
    block_out_channels=(2, 4, 4), layers_per_block=1, sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 2, 4), cross_attention_dim=32, norm_num_groups=1,
)
SD_VAE = dict(tiny.VAE, scaling_factor=0.18215, sample_size=512)


def tiny_sd(seed: int = 4, scheduler: dict | None = None, in_channels: int = 4):
    """An SD 1.x-family pipeline (CLIP tokenizer and text encoder). `scheduler`: config overrides, e.g.
    `{"prediction_type": "v_prediction"}` as SD 2.x 768 models have. `in_channels` 9: an inpainting
    checkpoint's UNet (latents, mask, masked-image latents), loaded as a plain SD pipeline as real ones are."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny.seeded(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**tiny.TEXT_ENCODER)),
        tokenizer=tiny.tokenizer(), unet=UNet2DConditionModel(**{**SD_UNET, "in_channels": in_channels}),
        scheduler=EulerDiscreteScheduler(**{**tiny.SCHEDULER, **(scheduler or {})}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# PAI-Diffusion's Chinese models (alibaba-pai/pai-diffusion-*-zh) are SD 1.x pipelines whose tokenizer is
# a BERT WordPiece tokenizer over bert-base-chinese's vocabulary (tokenizer/vocab.txt) feeding a CLIP text
# encoder of that vocabulary's size. The tiny one keeps the layout of that vocabulary: [PAD] 0,
# [unused1..99], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then the CJK ideographs, each its own token.
def chinese_vocab() -> list[str]:
    return (["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            + [chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0x4E00, 0x9FA6)])


def chinese_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={t: i for i, t in enumerate(chinese_vocab())}, model_max_length=77)


def tiny_pai(seed: int = 5):
    """A PAI-Diffusion-style Chinese SD pipeline: BertTokenizer + CLIP text encoder of its vocabulary."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny.seeded(seed)
    text = CLIPTextConfig(**{**tiny.TEXT_ENCODER, "vocab_size": len(chinese_vocab()), "pad_token_id": 0,
                             "bos_token_id": 101, "eos_token_id": 102})
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(text), tokenizer=chinese_tokenizer(),
        unet=UNet2DConditionModel(**SD_UNET), scheduler=EulerDiscreteScheduler(**tiny.SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _tiny(spec):
    if spec.source == "tiny:pai":
        return tiny_pai(), None
    if spec.source == "tiny:inpaint":  # an inpainting checkpoint: a 9-channel UNet, its own weights
        return tiny_sd(seed=6, in_channels=9), None
    return tiny_sd(), None


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SD_UNET)


def _full_size(cfg: dict, refiner: bool) -> list:
    """SD 1.5: diffusers' default UNet at CLIP-L's width, the SD VAE (SDXL's architecture), CLIP-L."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return [UNet2DConditionModel(cross_attention_dim=768, sample_size=64), AutoencoderKL(**cfg["SDXL_VAE"]),
            CLIPTextModel(CLIPTextConfig(**cfg["CLIP_L_TEXT"]))]


FAMILY = WorkerFamily(
    name="sd",
    pipelines={"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
               "control:txt2img": "StableDiffusionControlNetPipeline",
               "control:img2img": "StableDiffusionControlNetImg2ImgPipeline",
               "inpaint": "StableDiffusionInpaintPipeline",
               "control:inpaint": "StableDiffusionControlNetInpaintPipeline",
               "train": "StableDiffusionPipeline"},  # a training job's copy, and its validation images
    loads_as="txt2img",
    tiny=_tiny,
    full_size=_full_size,
    # No safety checker: a service's moderation is its own business, and PAI-Diffusion's repos ship one
    # for English CLIP.
    options={"safety_checker": None, "requires_safety_checker": False},
    text_encoders=(TextEncoder("text_encoder", "tokenizer", "clip_l"),),
    # The factors ComfyUI and AUTOMATIC1111 use for their cheap previews, fitted on real VAE decodes.
    preview_factors=(((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                      (-0.2120, -0.2616, -0.7177)), (0.0, 0.0, 0.0)),
    compile_blocks=("BasicTransformerBlock",),
    tiny_denoiser=_tiny_unet,
)
