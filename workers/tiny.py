"""The `tiny` model profile: real diffusers pipelines with random weights, built offline in about a second.

The component configs start from the tiny configs diffusers' own fast tests use
(`../shared/reference/diffusers-configs.json`, "tiny"), changed so that a job at the API contract's
default parameters (SDXL 1024² 30 steps + refiner, SVD 1024×576 14 frames 25 steps) finishes in a few
seconds on a 2-core CPU:

- SDXL VAEs have four blocks, the real 8× downsampling, so latent shapes match the real models;
- UNets get a third level so cross-attention runs at 1/32 of the image side, not 1/16;
- the SVD VAE is a plain `AutoencoderKL` with 32× downsampling: the temporal VAE decoder costs about
  3 s a frame at 1024×576 on this CPU (its GroupNorm is fixed at 32 groups). The SVD pipeline calls a
  VAE without `num_frames` when its `forward` has none, so the pipeline code path is the real one.

Weights are drawn from a fixed seed, so the same profile gives the same pixels on every machine.
The images are noise by design: the profile checks plumbing, not art.
"""

from __future__ import annotations

import torch

TEXT_ENCODER = dict(
    bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
    num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
    projection_dim=32,
)

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

SDXL_VAE = dict(
    block_out_channels=(4, 4, 8, 8), in_channels=3, out_channels=3, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4, norm_num_groups=4, sample_size=1024, scaling_factor=0.13025, force_upcast=False,
)

SDXL_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
    timestep_spacing="leading",
)

# SD 1.x/2.x: the SDXL-tiny levels with one text encoder (32 wide), no added time/text embedding, and
# SD's convolutional attention projections (SD 2.x uses linear ones; the architecture is the same).
SD_UNET = dict(
    block_out_channels=(2, 4, 4), layers_per_block=1, sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 2, 4), cross_attention_dim=32, norm_num_groups=1,
)
SD_VAE = dict(SDXL_VAE, scaling_factor=0.18215, sample_size=512)
# A ControlNet's conditioning embedding downsamples the control image 8× (to the latents' size).
CONTROLNET_EMBEDDING = (4, 4, 8, 8)

SVD_UNET = dict(
    block_out_channels=(32, 32, 32), layers_per_block=1, sample_size=32, in_channels=8, out_channels=4,
    down_block_types=("DownBlockSpatioTemporal", "DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
    up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
    cross_attention_dim=32, num_attention_heads=(8, 8, 8), projection_class_embeddings_input_dim=96,
    addition_time_embed_dim=32, num_frames=14,
)

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


def tokenizer():
    """An offline CLIP tokenizer: byte-level vocabulary, no merges, EOT with the largest id."""
    from transformers import CLIPTokenizer

    chars = [chr(i) for i in range(256)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _seeded(seed: int):
    torch.manual_seed(seed)


def sdxl_base(seed: int = 0):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seeded(seed)
    text_config = CLIPTextConfig(**TEXT_ENCODER)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SDXL_VAE),
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer(),
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False,
    )


def sdxl_refiner(base, seed: int = 1):
    """A refiner sharing the base's VAE and second text encoder, as the real pair does."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    _seeded(seed)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=UNet2DConditionModel(**SDXL_REFINER_UNET),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def sd(seed: int = 4, scheduler: dict | None = None):
    """An SD 1.x-family pipeline (CLIP tokenizer and text encoder). `scheduler`: config overrides, e.g.
    `{"prediction_type": "v_prediction"}` as SD 2.x 768 models have."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
        tokenizer=tokenizer(), unet=UNet2DConditionModel(**SD_UNET),
        scheduler=EulerDiscreteScheduler(**{**SDXL_SCHEDULER, **(scheduler or {})}),
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


def pai(seed: int = 5):
    """A PAI-Diffusion-style Chinese SD pipeline: BertTokenizer + CLIP text encoder of its vocabulary."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    text = CLIPTextConfig(**{**TEXT_ENCODER, "vocab_size": len(chinese_vocab()), "pad_token_id": 0,
                             "bos_token_id": 101, "eos_token_id": 102})
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(text), tokenizer=chinese_tokenizer(),
        unet=UNet2DConditionModel(**SD_UNET), scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def controlnet(unet, seed: int):
    """A ControlNet for the tiny UNet `unet` (SD or SDXL): its encoder copied, its zero-initialised output
    convolutions random, as a trained ControlNet's no longer are, and its conditioning embedding (the
    control image's path in) with He-scaled random weights, its last layer 8x stronger, so that what it
    adds is the size of the latents it is added to. At diffusers' init that last layer is zero, and at
    the default scale its eight narrow layers shrink the image's signal to 1e-4: the control image would
    not reach the model (tests/workers/test_control.py checks that it does)."""
    from diffusers import ControlNetModel

    _seeded(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            elif name.startswith("controlnet_cond_embedding") and name.endswith("weight"):
                gain = 8.0 if "conv_out" in name else 1.0  # as strong as the latents it is added to
                param.copy_(torch.randn(param.shape, generator=generator) * gain * (2 / param[0].numel()) ** 0.5)
    return net


def svd(seed: int = 2):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded(seed)
    return StableVideoDiffusionPipeline(
        vae=AutoencoderKL(**SVD_VAE),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_IMAGE_ENCODER)),
        unet=UNetSpatioTemporalConditionModel(**SVD_UNET),
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )


# ---------------------------------------------------------------- adapters

# The tiny profile's adapters (service/catalog.py `tiny_catalog`): name -> (kind, layout, seed).
ADAPTERS = {
    "tiny-style": ("lora", "peft", 11),
    "tiny-sketch": ("lora", "kohya", 12),
    "tiny-cat": ("embedding", None, 13),
}
# The layers most shared SDXL LoRAs train: the UNet's attention projections and the text encoders'.
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora(seed: int, layout: str = "peft", rank: int = 4, text_encoders: bool = True,
         unet_targets=UNET_LORA_TARGETS, std: float = 0.5, family: str = "sdxl") -> dict:
    """A LoRA for the tiny SDXL architecture (base and Turbo alike; `family="sd"`: the tiny SD one, one
    text encoder), made with PEFT from random weights:
    the state dict a trainer would save, in the diffusers/PEFT layout (`unet.<module>.lora_A.weight`)
    or the kohya layout (`lora_unet_<module>.lora_down.weight` with `.alpha`) most shared SDXL LoRAs use."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    modules = {"unet": (UNet2DConditionModel(**(SD_UNET if family == "sd" else SDXL_UNET)), unet_targets)}
    if text_encoders:
        text_config = CLIPTextConfig(**TEXT_ENCODER)
        modules["text_encoder"] = (CLIPTextModel(text_config), TEXT_LORA_TARGETS)
        if family == "sdxl":
            modules["text_encoder_2"] = (CLIPTextModelWithProjection(text_config), TEXT_LORA_TARGETS)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for prefix, (module, targets) in modules.items():
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=list(targets))
        module = inject_adapter_in_model(config, module)
        for key, value in get_peft_model_state_dict(module).items():
            state[f"{prefix}.{key}"] = torch.randn(value.shape, generator=generator) * std
    return convert_state_dict_to_kohya(state) if layout == "kohya" else state


def embedding(seed: int, vectors: int = 1) -> dict:
    """A textual-inversion embedding for the tiny SDXL text encoders, in the SDXL file layout: one
    tensor per text encoder (`clip_l`, `clip_g`), `vectors` rows each."""
    generator = torch.Generator().manual_seed(seed)
    width = TEXT_ENCODER["hidden_size"]
    return {"clip_l": torch.randn(vectors, width, generator=generator),
            "clip_g": torch.randn(vectors, width, generator=generator)}


def adapter(name: str) -> dict:
    """The state dict of the tiny profile's adapter `name`, the same on every machine."""
    kind, layout, seed = ADAPTERS[name]
    return embedding(seed) if kind == "embedding" else lora(seed, layout)
