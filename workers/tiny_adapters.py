"""The tiny profile's adapters (service/catalog `tiny_catalog`): LoRAs and an embedding made from random
weights for the tiny architectures, in the layouts trainers save (diffusers/PEFT, kohya: for FLUX, the
original BFL names sd-scripts writes), the same on every machine."""

from __future__ import annotations

import torch

from workers import tiny
from workers.families import FAMILIES

# name -> (kind, layout, seed, family)
ADAPTERS = {
    "tiny-style": ("lora", "peft", 11, "sdxl"),
    "tiny-sketch": ("lora", "kohya", 12, "sdxl"),
    "tiny-cat": ("embedding", None, 13, "sdxl"),
    "tiny-sd3-style": ("lora", "peft", 14, "sd3"),
    "tiny-flux-style": ("lora", "kohya", 15, "flux"),
}
# The layers most shared SDXL LoRAs train: the UNet's attention projections and the text encoders'.
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# In a transformer (SD 3, FLUX): the joint blocks' attention, both streams, and FLUX's single blocks'
# output projection (kohya's `linear2`; their fused `linear1` converts only at FLUX.1's full widths).
TRANSFORMER_LORA_TARGETS = (r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|"
                            r"add_v_proj|to_add_out)|single_transformer_blocks\.\d+\.proj_out")


def lora(seed: int, layout: str = "peft", rank: int = 4, text_encoders: bool = True,
         unet_targets=None, std: float = 0.5, family: str = "sdxl", denoiser: bool = True) -> dict:
    """A LoRA for a tiny architecture (`family`: SDXL, base and Turbo alike; SD, one text encoder; SD 3,
    two CLIP encoders; FLUX, CLIP-L), made with PEFT from random weights: the state dict a trainer would
    save, in the diffusers/PEFT layout (`unet.<module>.lora_A.weight`) or the kohya one most shared
    LoRAs use (`lora_unet_<module>.lora_down.weight` with `.alpha`; FLUX's in its original block names).
    `unet_targets`: the denoiser's layers (default: its attention projections); `denoiser=False`: the text
    encoders' part alone (a text-encoder-only LoRA)."""
    import inspect

    import diffusers
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextConfig

    arch = FAMILIES[family]
    if unet_targets is None:
        unet_targets = UNET_LORA_TARGETS if arch.denoiser == "unet" else TRANSFORMER_LORA_TARGETS
    modules = {arch.denoiser: (arch.tiny_denoiser(), unet_targets)} if denoiser else {}
    if text_encoders:  # those the family's LoRAs train (diffusers' list; never T5)
        text_config = CLIPTextConfig(**tiny.TEXT_ENCODER)
        pipeline = getattr(diffusers, arch.pipelines["txt2img"])
        classes = inspect.signature(pipeline.__init__).parameters  # CLIP's with or without its projection
        for te in (m for m in pipeline._lora_loadable_modules if m != arch.denoiser):
            modules[te] = (classes[te].annotation(text_config), TEXT_LORA_TARGETS)
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for prefix, (module, targets) in modules.items():
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                            target_modules=targets if isinstance(targets, str) else list(targets))
        module = inject_adapter_in_model(config, module)
        for key, value in get_peft_model_state_dict(module).items():
            state[f"{prefix}.{key}"] = torch.randn(value.shape, generator=generator) * std
    if layout != "kohya":
        return state
    return KOHYA_LAYOUTS.get(family, convert_state_dict_to_kohya)(state)


# FLUX's original (BFL) names of diffusers' layers: block -> [(kohya layer, the diffusers layers it fuses)].
FLUX_DOUBLE = (("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")), ("img_attn_proj", ("attn.to_out.0",)),
               ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
               ("txt_attn_proj", ("attn.to_add_out",)))
FLUX_SINGLE = (("linear2", ("proj_out",)),)


def flux_kohya(state: dict) -> dict:
    """A diffusers-layout FLUX LoRA in the layout kohya's sd-scripts writes: BFL block names
    (`lora_unet_double_blocks_0_img_attn_qkv`), Q, K and V fused into one layer (their downs stacked,
    their ups block-diagonal: diffusers splits them back exactly), `.alpha` the rank (scale 1); the
    text encoder's part as `lora_te1_`."""
    from diffusers.utils import convert_state_dict_to_kohya

    out = convert_state_dict_to_kohya({k: v for k, v in state.items() if k.startswith("text_encoder.")})
    for blocks, kohya_blocks, layers in (("transformer_blocks", "double_blocks", FLUX_DOUBLE),
                                         ("single_transformer_blocks", "single_blocks", FLUX_SINGLE)):
        indices = sorted({int(k.split(".")[2]) for k in state if k.startswith(f"transformer.{blocks}.")})
        for i in indices:
            for kohya_name, parts in layers:
                downs = [state.get(f"transformer.{blocks}.{i}.{p}.lora_A.weight") for p in parts]
                ups = [state.get(f"transformer.{blocks}.{i}.{p}.lora_B.weight") for p in parts]
                if any(d is None for d in downs):
                    continue
                key = f"lora_unet_{kohya_blocks}_{i}_{kohya_name}"
                out[f"{key}.lora_down.weight"] = torch.cat(downs)
                out[f"{key}.lora_up.weight"] = torch.block_diag(*ups)
                out[f"{key}.alpha"] = torch.tensor(float(sum(d.shape[0] for d in downs)))
    return out


KOHYA_LAYOUTS = {"flux": flux_kohya}  # a family whose kohya files use other names than diffusers'


def embedding(seed: int, vectors: int = 1) -> dict:
    """A textual-inversion embedding for the tiny SDXL text encoders, in the SDXL file layout: one
    tensor per text encoder (`clip_l`, `clip_g`), `vectors` rows each."""
    generator = torch.Generator().manual_seed(seed)
    width = tiny.TEXT_ENCODER["hidden_size"]
    return {"clip_l": torch.randn(vectors, width, generator=generator),
            "clip_g": torch.randn(vectors, width, generator=generator)}


def adapter(name: str) -> dict:
    """The state dict of the tiny profile's adapter `name`, the same on every machine."""
    kind, layout, seed, family = ADAPTERS[name]
    return embedding(seed) if kind == "embedding" else lora(seed, layout, family=family)
