"""The tiny profile's adapters (service/catalog `tiny_catalog`): LoRAs and an embedding made from random
weights for the tiny architectures, in the layouts trainers save (diffusers/PEFT, kohya), the same on
every machine."""

from __future__ import annotations

import torch

from workers import tiny
from workers.families import FAMILIES

# name -> (kind, layout, seed)
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
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    arch = FAMILIES[family]
    modules = {arch.denoiser: (arch.tiny_denoiser(), unet_targets)}
    if text_encoders:
        text_config = CLIPTextConfig(**tiny.TEXT_ENCODER)
        for i, te in enumerate(arch.text_encoders):  # CLIP-L, then (SDXL) bigG with its projection
            modules[te.encoder] = ((CLIPTextModelWithProjection if i else CLIPTextModel)(text_config),
                                   TEXT_LORA_TARGETS)
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
    width = tiny.TEXT_ENCODER["hidden_size"]
    return {"clip_l": torch.randn(vectors, width, generator=generator),
            "clip_g": torch.randn(vectors, width, generator=generator)}


def adapter(name: str) -> dict:
    """The state dict of the tiny profile's adapter `name`, the same on every machine."""
    kind, layout, seed = ADAPTERS[name]
    return embedding(seed) if kind == "embedding" else lora(seed, layout)
