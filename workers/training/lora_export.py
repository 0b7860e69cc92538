"""A trained LoRA as a kohya-style `.safetensors` file, the layout AUTOMATIC1111, ComfyUI, Forge and
diffusers' `load_lora_weights` all read:

- `lora_unet_<module path, "." → "_">.lora_down.weight` (PEFT's lora_A), `.lora_up.weight` (lora_B) and
  `.alpha` (a scalar), module paths of the diffusers UNet (what kohya writes for SD 1.x; for SDXL the
  tools map diffusers paths as well as sgm ones);
- text encoders `lora_te_` (SD 1/2) or `lora_te1_` / `lora_te2_` (SDXL), with the module path inside the
  transformers text encoder as the tools expect it: `text_model.encoder.layers.0.self_attn.q_proj`.
  transformers 5 flattened `CLIPTextModel` (its paths start at `encoder.`), so `text_model.` is put back
  for such encoders; `CLIPTextModelWithProjection` still has it.

Weights are saved as float32 (exact). The metadata are kohya's `ss_*` strings (network, base model,
resolution, steps, learning rate, the trigger and the tag frequency of the captions), then the caller's.
"""

from __future__ import annotations

import json
from collections import Counter

import torch

from workers.training.lora import ADAPTER, lora_layers


def text_prefixes(count: int) -> list[str]:
    return ["lora_te_"] if count == 1 else [f"lora_te{i + 1}_" for i in range(count)]


def kohya_state(unet, text_encoders: list) -> dict[str, torch.Tensor]:
    """The kohya state dict of the training adapter in `unet` and `text_encoders` (all of the model's
    text encoders in order, LoRA or not: the prefixes depend on how many it has)."""
    parts = [("lora_unet_", unet, "")]
    for prefix, encoder in zip(text_prefixes(len(text_encoders)), text_encoders):
        parts.append((prefix, encoder, "" if hasattr(encoder, "text_model") else "text_model."))
    state: dict[str, torch.Tensor] = {}
    for prefix, module, path_prefix in parts:
        for name, layer in lora_layers(module):
            key = prefix + (path_prefix + name).replace(".", "_")
            state[f"{key}.lora_down.weight"] = _tensor(layer.lora_A[ADAPTER].weight)
            state[f"{key}.lora_up.weight"] = _tensor(layer.lora_B[ADAPTER].weight)
            state[f"{key}.alpha"] = torch.tensor(float(layer.lora_alpha[ADAPTER]), dtype=torch.float32)
    return state


def _tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32).contiguous().clone()


def base_model_version(family_name: str, unet) -> str:
    if family_name == "sdxl":
        return "sdxl_base_v1-0"
    return "sd_v2" if unet.config.cross_attention_dim == 1024 else "sd_v1"


def kohya_metadata(config, family_name: str, unet, captions: list[str], steps: int, optimizer: str,
                   mixed_precision: str, extra: dict[str, str] | None) -> dict[str, str]:
    """The `ss_*` metadata of the file (all strings); `extra` (the caller's) last, so it wins."""
    tags: Counter = Counter()
    for caption in captions:
        tags.update(t.strip() for t in caption.split(",") if t.strip())
    trigger = config.caption_trigger
    version = base_model_version(family_name, unet)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.lora_alpha),
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_base_model_version": version,
        "ss_v2": str(version == "sd_v2"),
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_enable_bucket": str(config.buckets),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(config.steps),
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.learning_rate),
        "ss_text_encoder_lr": str(config.learning_rate if config.train_text_encoder else 0.0),
        "ss_lr_scheduler": "constant",
        "ss_optimizer": optimizer,
        "ss_num_train_images": str(len(captions)),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_mixed_precision": mixed_precision,
        "ss_seed": str(config.seed),
        "ss_caption_dropout_rate": str(config.caption_dropout),
        "ss_noise_offset": str(config.noise_offset),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_tag_frequency": json.dumps({"fresco": dict(tags)}, ensure_ascii=False),
        "ss_training_comment": f"trigger: {trigger}" if trigger else "no trigger",
        "ss_output_name": "lora",
    }
    if config.trains_embedding:
        meta["ss_training_comment"] += (f"; needs the embedding of token {config.token} trained with it "
                                        f"(method lora+embedding)")
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def export(unet, text_encoders: list, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(kohya_state(unet, text_encoders), metadata=metadata)
