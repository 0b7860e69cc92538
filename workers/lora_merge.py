"""LoRAs in an uncompiled denoiser: merged exactly into the weights of the layers they train.

The denoiser runs every step: its LoRA layers stay off, and the job's LoRAs are merged into the
weights of the layers they train (W + Σ scale × ΔW, diffusers' `fuse_lora` without its inexact
unfuse). Each layer's own weights are kept aside, once, and written back before another set of LoRAs
merges, so a job gets exactly the weights it would get after a fresh start: none, A after B, A alone
are the same arithmetic every time. A resident LoRA then costs a job nothing.
"""

from __future__ import annotations

import torch


class MergedLoras:
    """Which LoRAs are merged into one model's denoiser now, and its layers' own weights."""

    def __init__(self, model):
        self.model = model
        self.merged: tuple = ()  # the (name, weight) pairs merged into the denoiser's weights now
        self.touched: dict[int, tuple] = {}  # layers LoRAs have merged into: id -> (layer, its own weight)

    def loaded(self) -> None:
        """A LoRA was just loaded: its denoiser layers start on; merged weights serve instead."""
        self.model.denoiser.disable_lora()

    def set(self, weights: dict[str, float]) -> None:
        """Merge `weights` (adapter name -> scale; none: the denoiser's own weights)."""
        from peft.tuners.lora import LoraLayer

        state = tuple(sorted(weights.items()))
        if state == self.merged:
            return
        with torch.no_grad():
            for base, original in self.touched.values():
                base.weight.copy_(original)
            self.merged = ()
            if weights:
                for module in self.model.denoiser.modules():
                    if not isinstance(module, LoraLayer):
                        continue
                    names = [n for n in weights if n in module.lora_A]
                    if not names:
                        continue
                    base = module.get_base_layer()
                    if id(base) not in self.touched:
                        # Kept aside once, where the models file says (`lora_backup`).
                        keep = "cpu" if self.model.spec.lora_backup == "cpu" else base.weight.device
                        self.touched[id(base)] = (base, base.weight.detach().to(keep, copy=True))
                    for name in names:
                        module.set_scale(name, weights[name])
                        base.weight.add_(module.get_delta_weight(name))
            self.merged = state


class ActiveLoras:
    """LoRAs in a quantized denoiser (`quantize:`), whose int8/fp8/nf4 weights no delta can be added to:
    the job's LoRAs run beside the layers (PEFT's LoRA layers on, at the job's scales), and the
    quantized weights are never written. No residue either; each resident LoRA costs each step its
    rank × (in + out) multiply-adds per token on the layers it trains."""

    def __init__(self, model):
        self.model = model
        self.state: tuple | None = None

    def loaded(self) -> None:
        self.state = None  # loading activates the new adapter: set the job's again

    def set(self, weights: dict[str, float]) -> None:
        state = tuple(sorted(weights.items()))
        if state == self.state:
            return
        denoiser = self.model.denoiser
        if weights:
            denoiser.enable_lora()
            denoiser.set_adapters(list(weights), list(weights.values()))
        else:
            denoiser.disable_lora()
        self.state = state
