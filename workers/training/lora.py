"""LoRA layers for training, diffusers' own recipe (train_text_to_image_lora*.py): PEFT LoRA of rank `rank`
and alpha `alpha` on the UNet's attention projections, and on the text encoders' when they train too,
A initialised Gaussian (std 1/rank), B zero, so that training starts from the model's own output.

The UNet gets its adapter with diffusers' `unet.add_adapter`. The text encoders get theirs with PEFT's
`inject_adapter_in_model`, what transformers' `add_adapter` does inside: transformers 5.25 refuses
`add_adapter` under the installed PEFT 0.21 (it asks for 0.22), while diffusers' `load_lora_weights`
(which goes through `load_adapter`) does not check.

A's initial values are drawn from a CPU generator seeded from the config's seed, whatever the device,
so that two runs with one seed start from the same LoRA (the global RNG is left as it was).
"""

from __future__ import annotations

import torch

from workers.training import seeds

ADAPTER = "default"
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def lora_layers(module) -> list[tuple[str, object]]:
    """(module path, PEFT LoRA layer) of each layer of `module` holding the training adapter."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def add_lora(unet, text_encoders: list, rank: int, alpha: float, seed: int) -> None:
    """LoRA on `unet` and on each of `text_encoders` (empty: the UNet alone)."""
    from peft import LoraConfig, inject_adapter_in_model

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=UNET_TARGETS), adapter_name=ADAPTER)
        for encoder in text_encoders:
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                               target_modules=TEXT_TARGETS), encoder, ADAPTER)
    generator = seeds.generator(seed, seeds.LORA_INIT)
    with torch.no_grad():
        for module in [unet, *text_encoders]:
            for _, layer in lora_layers(module):
                a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                a.copy_(torch.randn(a.shape, generator=generator) / rank)
                b.zero_()
