"""FLUX.1 dev and schnell (kind `flux`): a rectified-flow transformer (joint double-stream blocks, then
single-stream ones), CLIP-L (its pooled output only) and T5-XXL, a 16-channel VAE with a shift factor whose
latents the pipeline packs 2×2 into a token sequence. dev embeds the guidance scale (no classifier-free
guidance); schnell, distilled to a few steps, has no guidance embedding."""

from __future__ import annotations

from workers import tiny
from workers.families.base import TextEncoder, WorkerFamily

# FLUX.1's layout at 32 wide: 2 heads of 16 (rotary axes 4 + 6 + 6 = the head width), one double-stream
# and one single-stream block. Inputs: 16 latent channels × the 2×2 packing.
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=tiny.T5_ENCODER["d_model"], pooled_projection_dim=tiny.TEXT_ENCODER["hidden_size"],
    axes_dims_rope=(4, 6, 6), guidance_embeds=True,
)
FLUX_VAE = dict(tiny.VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False)
# black-forest-labs/FLUX.1-dev's: the shift grows with the image's token count (the pipeline passes `mu`).
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
# FLUX.1-schnell's: no shift (it was distilled on the plain schedule).
FLUX_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def tiny_flux(seed: int = 8, schnell: bool = False):
    """A FLUX.1-dev-shaped pipeline, or (`schnell`) a schnell-shaped one: no guidance embedding."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tiny.seeded(seed)
    return FluxPipeline(
        transformer=FluxTransformer2DModel(**dict(FLUX_TRANSFORMER, guidance_embeds=not schnell)),
        vae=AutoencoderKL(**FLUX_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny.TEXT_ENCODER)),
        text_encoder_2=T5EncoderModel(T5Config(**tiny.T5_ENCODER)),
        tokenizer=tiny.tokenizer(),
        tokenizer_2=tiny.t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(**(FLUX_SCHNELL_SCHEDULER if schnell else FLUX_DEV_SCHEDULER)),
    )


def _tiny(spec):
    return (tiny_flux(seed=9, schnell=True) if spec.source == "tiny:schnell" else tiny_flux()), None


def _tiny_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_TRANSFORMER)


def _full_size(cfg: dict, refiner: bool) -> list:
    """FLUX.1-dev (schnell's transformer lacks only the guidance embedding), its VAE, CLIP-L, T5-XXL."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return [FluxTransformer2DModel(**cfg["FLUX1_DEV_TRANSFORMER"]), AutoencoderKL(**cfg["FLUX_VAE"]),
            CLIPTextModel(CLIPTextConfig(**cfg["CLIP_L_TEXT"])), T5EncoderModel(T5Config(**cfg["T5_XXL_ENCODER"]))]


FAMILY = WorkerFamily(
    name="flux",
    pipelines={"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"},
    loads_as="txt2img",
    tiny=_tiny,
    full_size=_full_size,
    denoiser="transformer",
    # No FLUX embedding format is served: the keys are the encoders' attributes.
    text_encoders=(TextEncoder("text_encoder", "tokenizer", "text_encoder"),
                   TextEncoder("text_encoder_2", "tokenizer_2", "text_encoder_2", "T5", "max_sequence_length")),
    # ComfyUI's (comfy/latent_formats.py, Flux), fitted on FLUX.1's VAE decodes: a row per latent channel
    # (of the unpacked latents: latent_patch).
    preview_factors=(((-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
                      (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
                      (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
                      (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
                      (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
                      (-0.1262, -0.0982, -0.0778)), (-0.0329, -0.0718, -0.0851)),
    compile_blocks=("FluxTransformerBlock", "FluxSingleTransformerBlock"),
    tiny_denoiser=_tiny_transformer,
    latent_patch=2,  # its pipelines' latents are 2×2 patches packed into a sequence (FluxPipeline._pack_latents)
    img2img_size=True,
    call_params=("max_sequence_length",),
    # FLUX.1 is guidance-distilled: dev's guidance scale is an input of the transformer, not classifier-free
    # guidance between a prompt and a negative one (diffusers' `true_cfg_scale` would double every step).
    no_negative_prompt="negative_prompt was ignored: FLUX.1 models take none (their guidance is an embedding "
                       "of guidance_scale, not classifier-free guidance)",
)
