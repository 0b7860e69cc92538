"""Quantized weights per model: the models file's `quantize: int8 | fp8 | nf4`.

What is quantized: the **denoiser** (the UNet, or SD3's / FLUX's transformer) and every **T5 encoder** the
pipeline has (SD3's `text_encoder_3`, FLUX's `text_encoder_2`: T5-XXL is 4.7 B parameters, the largest
part after the denoiser). Only their `Linear` layers: convolutions, norms and embeddings stay in the
model's dtype, and so do the CLIP encoders and the VAE (small, and the VAE is mostly convolutions). A
pipeline's components are found by the types its constructor declares (`T5EncoderModel`), so no family
has to say which of its encoders is a T5.

- `int8`: torchao's `Int8WeightOnlyConfig`, int8 weights with a scale per output channel, dequantized in
  the matmul. Half of bf16's weight bytes, close to its images; runs on the CPU and on CUDA (the only
  setting the CPU-only tests can run).
- `fp8`: torchao's `Float8DynamicActivationFloat8WeightConfig`: float8 (e4m3) weights, and activations
  quantized per call, so the matmuls run on fp8 tensor cores. Needs CUDA compute capability 8.9 or newer
  (Ada, Hopper and later). Quantizing in place, layers whose sizes fp8 matmuls cannot take (not multiples
  of 16) stay as they are (the tiny models have some; loading with a config, diffusers quantizes every Linear).
- `nf4`: bitsandbytes' 4-bit NormalFloat (`load_in_4bit`, `bnb_4bit_quant_type="nf4"`), computing in the
  model's dtype. A quarter of bf16's bytes, the most lossy; needs CUDA and bitsandbytes.

How: a model that loads with `from_pretrained` gets diffusers' `PipelineQuantizationConfig`
(`load_kwargs`): diffusers' `TorchAoConfig` / `BitsAndBytesConfig` for the denoiser, transformers' own for
the T5, so each is quantized as its weights load. Models built in memory (the tiny profile) and
single-file checkpoints are quantized in place (`apply`) with the same torchao configs (`quantize_`),
or their Linear layers swapped for bitsandbytes' `Linear4bit`, so the CPU tests run the kernels a loaded
model runs. `apply` skips what is already quantized, so it can run on every model.

Host checks (`check_host`) run at worker start, before any weight loads: a setting the host cannot run
stops the worker with one line naming the model, the setting and what it needs. Settings that cannot be
combined with it are refused when the models file is read (service/catalog/models.py, in the API process
too). Nothing here imports torch, torchao or bitsandbytes at module level.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger("fresco.quantize")

FP8_CAPABILITY = (8, 9)  # float8 matmuls: Ada (8.9), Hopper (9.0) and later
FP8_MULTIPLE = 16  # torch._scaled_mm takes matrices whose sizes are multiples of 16
T5_CLASSES = ("T5EncoderModel",)  # the text encoders quantized with the denoiser
# What each setting needs, as the refusal says it.
NEEDS = {
    "int8": "torchao (pip install 'fresco[quant]', or torchao==0.18.0)",
    "fp8": "a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper) and torchao (pip install 'fresco[quant]')",
    "nf4": "a CUDA GPU and bitsandbytes (pip install bitsandbytes==0.50.2; the CUDA worker image has it)",
}


class QuantizeUnavailable(ValueError):
    """This host cannot run a model's `quantize:` setting."""


def check_host(spec, device) -> None:
    """Refuse, before any weight loads, a `quantize` setting this host cannot run (`device`: the model's)."""
    setting = spec.quantize
    if setting is None:
        return
    missing = None
    if setting in ("int8", "fp8") and importlib.util.find_spec("torchao") is None:
        missing = "torchao is not installed"
    if setting in ("fp8", "nf4") and device.type != "cuda":
        missing = f"the model runs on {device.type}"
    elif setting == "fp8":
        import torch

        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_CAPABILITY:
            missing = f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}"
    if setting == "nf4" and missing is None and importlib.util.find_spec("bitsandbytes") is None:
        missing = "bitsandbytes is not installed"
    if missing:
        raise QuantizeUnavailable(f"model {spec.name}: `quantize: {setting}` needs {NEEDS[setting]}; {missing}")


def targets(pipeline_cls, denoiser: str) -> list[str]:
    """The components quantized: the denoiser and the T5 encoders `pipeline_cls` declares."""
    names = [denoiser]
    for name, types in pipeline_cls._get_signature_types().items():
        if any(getattr(t, "__name__", "") in T5_CLASSES for t in types):
            names.append(name)
    return names


def _torchao_config(setting: str):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig

    # set_inductor_config=False: leave torch.compile's settings to the model's own `compile` options.
    if setting == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    return Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False)


def _fp8_fits(module, _name: str = "") -> bool:
    import torch

    return (isinstance(module, torch.nn.Linear) and module.in_features % FP8_MULTIPLE == 0
            and module.out_features % FP8_MULTIPLE == 0)


def load_kwargs(spec, pipeline_cls, denoiser: str, dtype) -> dict[str, Any]:
    """`from_pretrained`'s `quantization_config` for `spec` (none without `quantize`): each target component
    quantized as its weights load, with diffusers' config for the denoiser, transformers' for a T5."""
    if spec.quantize is None:
        return {}
    from diffusers import PipelineQuantizationConfig

    mapping = {}
    for name in targets(pipeline_cls, denoiser):
        library = "diffusers" if name == denoiser else "transformers"
        mapping[name] = _load_config(spec.quantize, library, dtype)
    return {"quantization_config": PipelineQuantizationConfig(quant_mapping=mapping)}


def _load_config(setting: str, library: str, dtype):
    if library == "diffusers":
        from diffusers import BitsAndBytesConfig, TorchAoConfig
    else:
        from transformers import BitsAndBytesConfig, TorchAoConfig
    if setting == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return TorchAoConfig(_torchao_config(setting))


def is_quantized(module) -> bool:
    """Whether `module` was quantized (at load by diffusers/transformers, or by `apply`)."""
    return any(quantized_weight(m) for m in module.modules())


def quantized_weight(layer) -> bool:
    """Whether a layer's weight is a quantized tensor (torchao's subclasses, bitsandbytes' Params4bit)."""
    import torch

    weight = getattr(layer, "weight", None)
    if weight is None:
        return False
    return type(weight) not in (torch.Tensor, torch.nn.Parameter) or type(weight.data) is not torch.Tensor


def apply(pipe, spec, device) -> int:
    """Quantize `pipe`'s target components in place (the tiny profile, single-file checkpoints, a refiner),
    skipping any that loaded quantized. Returns how many Linear layers it quantized."""
    if spec.quantize is None or pipe is None:
        return 0
    from workers.families import family_of

    done = 0
    for name in targets(type(pipe), family_of(spec).denoiser):
        module = getattr(pipe, name, None)
        if module is None or is_quantized(module):
            continue
        done += _nf4_in_place(module, device) if spec.quantize == "nf4" else _torchao_in_place(module, spec.quantize)
        log.info("%s: quantized the %s to %s in place", spec.name, name, spec.quantize)
    return done


def _torchao_in_place(module, setting: str) -> int:
    import torch
    from torchao.quantization import quantize_

    fits = _fp8_fits if setting == "fp8" else None
    before = sum(isinstance(m, torch.nn.Linear) and (fits is None or fits(m)) for m in module.modules())
    quantize_(module, _torchao_config(setting), filter_fn=fits)
    return before


def _nf4_in_place(module, device) -> int:
    """Every Linear of `module` as bitsandbytes' `Linear4bit` (nf4), quantized as it moves to `device`;
    the layers go back where the module was (the CPU, for `memory: balanced`), quantized."""
    import bitsandbytes as bnb
    import torch

    home = next(module.parameters()).device
    swapped = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            dtype = child.weight.dtype
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, layer.to(device).to(home))
            swapped += 1
    return swapped
