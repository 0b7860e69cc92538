"""Library log lines that mean nothing to a Fresco operator, silenced in one place.

Each entry drops one known line, and only that line, from one library logger; everything else those
libraries say still reaches the log. Called at worker start, before any model loads.
"""

from __future__ import annotations

import logging
import warnings

# (logger, a fragment of the message, why it is harmless here)
KNOWN_NOISE: tuple[tuple[str, str, str], ...] = (
    ("diffusers.models.modeling_utils", "that should be kept in float32: []",
     "diffusers 0.42 warns on every `.to(dtype)` of a model, listing the modules that must stay float32; "
     "the list is empty for every model Fresco loads, so the cast is exactly what was asked for. Printed "
     "once per module at start, and twice per img2img job on a float16 model whose VAE needs upcasting."),
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to",
     "SVD's CLIPImageProcessor uses its PIL implementation when torchvision is absent (a worker needs no "
     "torchvision); the result is the same 224x224 input to the image encoder."),
    ("transformers.integrations.peft", "LOAD REPORT",
     "loading a LoRA's text-encoder part when other LoRAs are resident, transformers 5.17 to 5.24 report the "
     "other LoRAs' layers as missing from the new file (a table per load; 5.25 no longer does); a file "
     "that does not fit the model raises instead, and the job fails with a message (workers/loras.py)."),
    # torchao (`quantize:`, workers/quantize.py), on import:
    ("torchao", "_C_cutlass_90a", "torchao's Hopper CUTLASS kernels (int4 and sparse formats Fresco does not use) "
     "load only beside a matching CUDA torch; int8 and fp8 run without them."),
    ("torchao", "_C_mxfp8", "torchao's MX-format kernels, which Fresco does not use, likewise."),
    ("torchao.kernel.intmm", "Detected no triton", "a CPU-only torch has no Triton; int8 weight-only runs "
     "without it."),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported", "torchao 0.18 registers its "
     "enums the way torch 2.13 deprecates; nothing changes in what runs."),
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects",
     "diffusers 0.42 looks for torchao classes 0.18 removed, to unpickle checkpoints saved quantized; Fresco "
     "quantizes at load (safetensors), never unpickling one."),
)
# (a warning's message, at its start, why it is harmless here)
KNOWN_WARNINGS: tuple[tuple[str, str], ...] = (
    ("Already found a `peft_config` attribute in the model",
     "PEFT warns whenever a second LoRA loads into a model: several resident LoRAs are the point."),
    (r"Adapter \S+ was active which is now deleted",
     "PEFT warns when an evicted LoRA was among the active ones; the next job sets its own LoRAs anyway."),
)


class _DropLine(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def silence_known_noise() -> None:
    for name, fragment, _why in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLine) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropLine(fragment))
    for message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # transformers draws a "Loading weights" progress bar on stderr for each text-encoder LoRA load, and
    # diffusers a "Loading pipeline components..." bar for each model a worker loads: a log is no terminal.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
