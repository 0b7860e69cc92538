"""Stable Diffusion 3 and 3.5 (kind `sd3`): an MMDiT transformer (text and image tokens in joint attention),
three text encoders (CLIP-L, OpenCLIP bigG and, optionally, T5-XXL), a 16-channel VAE with a shift factor;
flow matching (FlowMatchEulerDiscreteScheduler, shift 3)."""

from __future__ import annotations

from workers import tiny
from workers.families.base import TextEncoder, WorkerFamily

# SD 3.5's layout (patch 2, RMS-normalised Q/K) at 16 wide: 2 heads of 8, two joint blocks, the second one
# not a context-pre-only block. The context embedder takes T5's width; the pooled projection the two
# CLIP encoders' pooled outputs concatenated (32 + 32). Positions up to 96 patches: 1536² images.
SD3_TRANSFORMER = dict(
    sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
    num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=tiny.T5_ENCODER["d_model"],
    pooled_projection_dim=2 * tiny.TEXT_ENCODER["hidden_size"], pos_embed_max_size=96, qk_norm="rms_norm",
)
# The tiny VAE's levels with SD 3's 16 latent channels, scaling and shift, and no quant convolutions.
SD3_VAE = dict(tiny.VAE, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # stabilityai/stable-diffusion-3.5-*'s


def tiny_sd3(seed: int = 7, t5: bool = True):
    """An SD 3.5-shaped pipeline; `t5` False: without T5 (`text_encoder_3=None`), as diffusers allows."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, \
        StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tiny.seeded(seed)
    text_config = CLIPTextConfig(**tiny.TEXT_ENCODER)
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**SD3_TRANSFORMER),
        vae=AutoencoderKL(**SD3_VAE),
        text_encoder=CLIPTextModelWithProjection(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        text_encoder_3=T5EncoderModel(T5Config(**tiny.T5_ENCODER)) if t5 else None,
        tokenizer=tiny.tokenizer(),
        tokenizer_2=tiny.tokenizer(),
        tokenizer_3=tiny.t5_tokenizer() if t5 else None,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
    )


def _tiny(spec):
    return tiny_sd3(t5=spec.t5), None


def _load_options(spec) -> dict:
    """`t5: false`: T5-XXL is not loaded (diffusers then gives the transformer zeros for its tokens)."""
    return {} if spec.t5 else {"text_encoder_3": None, "tokenizer_3": None}


def _tiny_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**SD3_TRANSFORMER)


def _full_size(cfg: dict, refiner: bool) -> list:
    """SD 3.5 large (the medium's transformer is SD35_MEDIUM_TRANSFORMER), its VAE, CLIP-L, bigG, T5-XXL."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    return [SD3Transformer2DModel(**cfg["SD35_LARGE_TRANSFORMER"]), AutoencoderKL(**cfg["SD3_VAE"]),
            CLIPTextModelWithProjection(CLIPTextConfig(**cfg["CLIP_L_TEXT"])),
            CLIPTextModelWithProjection(CLIPTextConfig(**cfg["OPENCLIP_BIGG_TEXT"])),
            T5EncoderModel(T5Config(**cfg["T5_XXL_ENCODER"]))]


FAMILY = WorkerFamily(
    name="sd3",
    pipelines={"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
               "inpaint": "StableDiffusion3InpaintPipeline"},
    loads_as="txt2img",
    tiny=_tiny,
    full_size=_full_size,
    load_options=_load_options,
    denoiser="transformer",
    # No SD 3 embedding format is served: the keys are the encoders' attributes.
    text_encoders=(TextEncoder("text_encoder", "tokenizer", "text_encoder"),
                   TextEncoder("text_encoder_2", "tokenizer_2", "text_encoder_2"),
                   TextEncoder("text_encoder_3", "tokenizer_3", "text_encoder_3", "T5", "max_sequence_length")),
    # ComfyUI's (comfy/latent_formats.py, SD3), fitted on SD 3's VAE decodes: a row per latent channel.
    preview_factors=(((-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
                      (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
                      (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
                      (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
                      (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
                      (-0.1448, -0.1463, -0.1189)), (0.2394, 0.2135, 0.1925)),
    # diffusers 0.42's FusedJointAttnProcessor2_0 skips `norm_q`/`norm_k` (SD 3.5's qk_norm "rms_norm"): fused,
    # the tiny SD 3.5's transformer output moves by 2% of its range, and the image with it.
    fuses_qkv=False,
    compile_blocks=("JointTransformerBlock",),
    tiny_denoiser=_tiny_transformer,
    img2img_size=True,
    call_params=("max_sequence_length",),
)
