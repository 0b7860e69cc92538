"""A LoRA file's tensors -> the parts a model's modules load, through diffusers' own readers.

Each family's pipeline class reads the layouts trainers save (`lora_state_dict`: kohya, diffusers/PEFT,
and for FLUX the BFL, XLabs and ComfyUI ones too) into diffusers' names, prefixed with the module each
part is for (`unet.`, `transformer.`, `text_encoder.`). Fresco then loads the parts itself, the
denoiser's and those of the text encoders the family's LoRAs train (the pipeline's
`_lora_loadable_modules`), in one way for every family, merged or hot-swapped into a slot, and checks
first what a pipeline's `load_lora_weights` would silently do to the model's own weights: FLUX's
loader writes a Control LoRA's norm layers into the transformer and widens any layer a wider LoRA
names. Such a file is refused instead, and the model keeps exactly its own weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoraParts:
    state: dict  # diffusers' names: `<module>.<layer>.lora_A.weight` (or the older `.lora.down.weight`)
    alphas: dict | None  # kohya's per-layer alphas where the reader keeps them apart
    metadata: dict | None


def text_encoders(model) -> list[str]:
    """The pipeline's text encoders a LoRA of this family may train (diffusers' own list per pipeline:
    SD 3's two CLIP encoders, FLUX's CLIP-L; never T5)."""
    return [m for m in type(model.pipe)._lora_loadable_modules if m != model.family.denoiser]


def read(model, state: dict) -> LoraParts:
    """`state` (a file's tensors) in diffusers' names, by the model's pipeline's reader. Readers differ
    in what they return (SD 3's keeps no alphas); every one ignores the options another one takes."""
    out = model.pipe.lora_state_dict(dict(state), unet_config=model.denoiser.config, return_alphas=True,
                                     return_lora_metadata=True)
    tensors, alphas, metadata = out if len(out) == 3 else (out[0], None, out[1])
    return LoraParts(tensors, alphas or None, metadata)


def denoiser_part(model, parts: LoraParts) -> dict:
    """The denoiser's layers, PEFT-named without the prefix: `<layer>.lora_A.weight`."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    prefix = model.family.denoiser + "."
    return convert_unet_state_dict_to_peft({k.removeprefix(prefix): v for k, v in parts.state.items()
                                            if k.startswith(prefix)})


def check(model, parts: LoraParts) -> None:
    """ValueError when loading `parts` would change the model's own weights: a key that is no LoRA
    weight (a FLUX Control LoRA's norm layers), or a denoiser layer of other widths than the model's."""
    own = sorted(k for k in parts.state if "lora" not in k)
    if own:
        raise ValueError(f"it sets the model's own weights ({', '.join(own[:3])}{', ...' if len(own) > 3 else ''}),"
                         f" as a Control LoRA does; Fresco serves LoRAs, which add to them")
    denoiser = model.denoiser
    for key, value in denoiser_part(model, parts).items():
        if not key.endswith((".lora_A.weight", ".lora_B.weight")) or value.dim() != 2:
            continue
        layer, which, _ = key.rsplit(".", 2)
        try:
            module = denoiser.get_submodule(layer)
        except AttributeError:
            continue  # a layer the model has not: diffusers' loader says so
        module = getattr(module, "base_layer", module)  # a layer an earlier LoRA wrapped
        if not isinstance(module, torch.nn.Linear):
            continue
        if which == "lora_A":
            width, held = value.shape[1], module.in_features
        else:
            width, held = value.shape[0], module.out_features
        if width != held:
            raise ValueError(f"its layer {layer} is {width} wide where the model's is {held}")


def load(model, parts: LoraParts, name: str, hotswap: bool = False) -> None:
    """Load `parts` as adapter `name`: the denoiser's (hot-swapped into slot `name` when `hotswap`: a
    compiled denoiser) and each text encoder's (text encoders are not compiled: a slot's part there is
    replaced plainly)."""
    from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

    pipe = model.pipe
    common = dict(network_alphas=parts.alphas, adapter_name=name, metadata=parts.metadata, _pipeline=pipe,
                  low_cpu_mem_usage=_LOW_CPU_MEM_USAGE_DEFAULT_LORA)
    prefix = model.family.denoiser
    model.denoiser.load_lora_adapter({k: v for k, v in parts.state.items() if k.startswith(prefix + ".")},
                                     prefix=prefix, hotswap=hotswap, **common)
    for prefix in text_encoders(model):
        encoder = getattr(pipe, prefix, None)
        if encoder is None:
            continue
        if hotswap:
            drop_text_encoder_adapter(encoder, name)
        part = {k: v for k, v in parts.state.items() if k.startswith(prefix + ".")}
        if part:
            pipe.load_lora_into_text_encoder(part, text_encoder=encoder, prefix=prefix, **common)


def drop_text_encoder_adapter(encoder, name: str) -> None:
    """Remove adapter `name`'s layers from a text encoder (a slot's part is replaced plainly there)."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    if name in getattr(encoder, "peft_config", {}):
        delete_adapter_layers(encoder, name)
        getattr(encoder, "peft_config", {}).pop(name, None)
