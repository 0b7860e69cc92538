"""LoRAs in a compiled denoiser (`compile: true`): hot-swapped into slots prepared before compilation.

Switching adapters must not recompile the compiled blocks (diffusers #9279). Before warm-up,
`enable_lora_hotswap(target_rank=lora_rank)` and one zero LoRA per slot (`lora_slots`) on the layers
LoRAs train (SLOT_TARGETS); every slot stays active, an unused slot at scale 0, scales live in
tensors changed in place, and a new LoRA is hot-swapped into a free or the least recently used slot
(`hotswap=True`). Text encoders are not compiled: their part of a LoRA loads plainly under the slot's
name. A LoRA on other layers, or of a higher rank, is refused.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("fresco.loras")
# The layers a slot covers: what LoRA trainers (diffusers, kohya, ai-toolkit) target in any family's
# denoiser: every attention projection and feed-forward layer, the UNet's transformer blocks'
# projections in and out; in SD 3's and FLUX's joint blocks the text stream's projections
# (`add_*_proj`, `to_add_out`, `ff_context`) and the modulations (`norm1.linear`: kohya's `img_mod`),
# in FLUX's single blocks the MLP in (`proj_mlp`, with Q/K/V: kohya's `linear1`) and out (`proj_out`:
# `linear2`) and the modulation (`norm.linear`). A UNet has none of the transformers' names.
SLOT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff_context.net.0.proj",
                "ff_context.net.2", "norm1.linear", "norm1_context.linear", "proj_mlp", "norm.linear")


class LoraSlots:
    """The slots of one model's compiled denoiser: each holds one LoRA (or none), at a scale."""

    def __init__(self, model, rank: int, count: int):
        """Before the denoiser is compiled (warm-up): hotswap on, and `count` zero LoRAs of `rank` on the
        slot layers, every one active, at scale 0, with tensor scales. Every slot runs in every job (a
        compiled graph cannot skip one), so each costs compute: rank × (in + out) multiply-adds per token
        on each slot layer; keep `lora_slots` and `lora_rank` as small as the LoRAs served allow."""
        from peft.utils.hotswap import _convert_scalings_to_tensor

        self.model = model
        self.names = [f"slot{i}" for i in range(count)]
        self.scaling: dict[str, dict[int, float]] = {}  # slot -> LoRA layer id -> its scaling at scale 1
        self.state: tuple | None = None  # each slot's scale now
        denoiser = model.denoiser
        denoiser.enable_lora_hotswap(target_rank=rank)
        placeholder = {}
        for name, module in denoiser.named_modules():
            if isinstance(module, torch.nn.Linear) and any(("." + name).endswith("." + t) for t in SLOT_TARGETS):
                placeholder[f"{name}.lora_A.weight"] = torch.zeros(rank, module.in_features)
                placeholder[f"{name}.lora_B.weight"] = torch.zeros(module.out_features, rank)
        for slot in self.names:
            denoiser.load_lora_adapter(dict(placeholder), prefix=None, adapter_name=slot)
        denoiser.set_adapters(self.names, [1.0] * len(self.names))
        _convert_scalings_to_tensor(denoiser)
        for slot in self.names:
            self._record_scaling(slot)
        self.set({})
        log.info("%s: %d LoRA slots of rank %d on %d layers (compile: LoRAs hot-swap in)", model.name,
                 len(self.names), rank, len(placeholder) // 2)

    def swap_in(self, parts, slot: str) -> None:
        """Hot-swap a LoRA (workers/lora_parts.py LoraParts, checked) into `slot`; ValueError when it
        cannot go there (the slot is left empty)."""
        from workers import lora_parts

        try:
            part = lora_parts.denoiser_part(self.model, parts)
            if not part:
                raise ValueError(f"it has no {self.model.family.denoiser} layers")
            self._check_fits(part, slot)  # before diffusers: a failed swap would delete the slot
            lora_parts.load(self.model, parts, slot, hotswap=True)
        except Exception:
            self._clear(slot)
            raise
        self._record_scaling(slot)
        self.state = None  # the swap set the slot's scales: set them again

    def _record_scaling(self, slot: str) -> None:
        """Each layer's scaling of the LoRA now in `slot` at scale 1 (alpha / rank, per layer: a swap
        sets it from the new LoRA's own alphas), which job scales multiply."""
        from peft.tuners.lora import LoraLayer

        self.scaling[slot] = {id(m): float(m.scaling[slot]) for m in self.model.denoiser.modules()
                              if isinstance(m, LoraLayer) and slot in m.scaling}

    def _check_fits(self, part: dict, slot: str) -> None:
        """Every denoiser layer of the LoRA (`part`: PEFT names) is a slot layer, of a rank the slot holds."""
        denoiser = self.model.denoiser
        for key, value in part.items():
            if not key.endswith((".lora_A.weight", ".lora_B.weight")):
                continue
            module_name, which, _ = key.rsplit(".", 2)
            try:
                held = getattr(denoiser.get_submodule(module_name), which)[slot].weight.shape
            except (AttributeError, KeyError, TypeError):
                raise ValueError(f"it trains layer {module_name}, which the compiled model's LoRA slots do not "
                                 f"cover (they cover {', '.join(SLOT_TARGETS)})") from None
            # lora_A is (rank, in), lora_B (out, rank): the rank may be smaller than the slot's, the rest not.
            rank_dim = 0 if which == "lora_A" else 1
            if value.shape[rank_dim] > held[rank_dim]:
                raise ValueError(f"its rank {value.shape[rank_dim]} is above the slots' rank {held[rank_dim]} "
                                 f"(`lora_rank` in the models file)")
            if value.shape[1 - rank_dim] != held[1 - rank_dim]:
                raise ValueError(f"its layer {module_name} has other dimensions than the model's")

    def _clear(self, slot: str) -> None:
        """A failed swap may have left part of a LoRA in `slot`: zero its weights (its scale is 0 too)."""
        with torch.no_grad():
            for module in self.model.denoiser.modules():
                for attr in ("lora_A", "lora_B"):
                    layers = getattr(module, attr, None)
                    if isinstance(layers, torch.nn.ModuleDict) and slot in layers:
                        layers[slot].weight.zero_()
        from workers.lora_parts import drop_text_encoder_adapter, text_encoders

        for prefix in text_encoders(self.model):
            encoder = getattr(self.model.pipe, prefix, None)
            if encoder is not None:
                drop_text_encoder_adapter(encoder, slot)

    def set(self, weights: dict[str, float]) -> None:
        """Every slot stays active (the compiled graph runs all of them); scales change in place."""
        from peft.tuners.lora import LoraLayer
        from peft.utils.hotswap import _update_scaling

        state = tuple(weights.get(s, 0.0) for s in self.names)
        if self.state == state:
            return
        for module in self.model.denoiser.modules():
            if isinstance(module, LoraLayer):
                for slot, scale in zip(self.names, state):
                    base = self.scaling[slot].get(id(module))
                    if base is not None:
                        _update_scaling(module, slot, scale * base)
        self.state = state
