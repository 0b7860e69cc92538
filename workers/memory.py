"""Where a model's weights live while it serves: the models file's per-model `memory:` setting.

- `default`: every module resident on the device (`pipe.to(device)`). Fastest; SDXL base alone holds
  about 7 GB of weights in half precision.
- `balanced`: diffusers' model CPU offload (`pipe.enable_model_cpu_offload(device=...)`, Accelerate
  `CpuOffload` hooks): weights live in CPU memory, each component (text encoder, UNet, VAE) moves to the
  device whole when it runs and back when the next one starts; the pipeline's call ends with all of them
  back on the CPU. GPU memory: the largest component plus activations (SDXL: the 2.6 B-parameter UNet).
- `minimal`: HCP-Diffusion-style inference in about a gigabyte: diffusers' group offloading at **leaf
  level** (each Linear, Conv and Embedding moves to the device just before it runs and back just after;
  norms go with their parent module), plus a tiled VAE (`TILE`-pixel tiles) decoding one image at a time
  (`enable_tiling`, `enable_slicing`, where the VAE has them: SVD's temporal VAE has neither and decodes
  in chunks of `decode_chunk_size` frames anyway).

Choices, and why:

- **Leaf level, not block level.** Block level moves the top-level ModuleLists of a model one group at a
  time: an SDXL UNet down/up block is up to a gigabyte and a half on its own, so block level cannot reach
  the target, and a model without such lists (SVD's temporal VAE, the text encoders' top level) would be
  one group onloaded by `forward` only, which a VAE never runs (pipelines call `decode`/`encode`). Leaf
  level holds one layer at a time and hooks every layer whichever method calls it.
- **CUDA streams where the device has them** (`use_stream=True` when the device is CUDA): each layer's
  weights are copied from pinned CPU memory on a side stream while the previous layer computes. diffusers
  learns the order from the model's first `forward` (so a worker's warm-up pays the slow, blocking first
  pass), after which leaf offloading with streams runs close to resident speed. The cost is CPU memory:
  every offloaded weight is kept in pinned (page-locked) host memory. `record_stream` stays off: each
  layer's weights are freed as soon as it has run (diffusers waits for the compute stream there), which
  keeps a layer or two on the device; with it on, the CPU could queue many layers ahead, each holding its
  weights on the device, for a little speed.
- **No streams for the VAE.** The pipelines reach it through `decode`/`encode`, never `forward`, so
  diffusers never learns its order and streams would prefetch nothing; and the streamed path reloads the
  pinned copies made when offloading began, so the float32 upcast the SDXL pipelines do around a float16
  VAE with `force_upcast` (`vae.to(float32)` ... `vae.to(float16)`) would onload float16 weights into a
  float32 decode. Without streams the VAE's layers move with `module.to`, which keeps whatever dtype the
  pipeline cast them to.
- **On a CPU-only machine** every mode applies with the CPU as the onload device, so tests can check each
  gives the default mode's pixels: `enable_model_cpu_offload(device=cpu)` is accepted (Accelerate hooks
  with execution device `cpu:0`) and group offloading runs without streams (diffusers refuses streams on
  the CPU). Nothing moves (onload and offload devices are the same), so neither saves memory there: the
  modes only cost their hooks' overhead.

Modules shared between pipelines (the SDXL refiner takes the base's `vae` and `text_encoder_2`;
img2img and ControlNet pipelines are `from_pipe` on the base): call `apply_memory` with the same mode on
every pipeline, the base first, then the refiner and each `from_pipe` pipeline once built.

- `minimal`: a module that already has group offloading is skipped (`enable_group_offload` on it again
  would register a second stream and prefetch hook on top of the first); the new modules a derived
  pipeline brings (the refiner's UNet, a ControlNet) are offloaded. `from_pipe` keeps the hooks: they live
  on the modules, and its `to(dtype=...)` leaves group-offloaded modules alone (so a `from_pipe` cannot
  change an offloaded module's dtype).
- `balanced`: Accelerate's hooks live on the modules too, so a `from_pipe` pipeline runs with the base's
  hooks; but its own call would end without moving anything back (it has no hook list of its own) and a
  ControlNet it brings would stay on the CPU while the UNet runs on the device. `apply_memory` on it gives
  it its own hooks: `enable_model_cpu_offload` replaces the hooks of that pipeline's components (shared
  ones included), and every pipeline's call ends by moving its components back to the CPU and
  re-installing its own hooks. So a shared module carries the hooks of whichever pipeline ran last:
  every hooked module still moves to the device when it runs (the results are the same); only which
  module is evicted when the next starts may follow the other pipeline's order, until the call's end
  moves everything back.
- `default` after an offload mode raises: a pipeline in an offload mode must not be moved with
  `pipe.to(device)` (diffusers skips group-offloaded modules with a warning, and for model offload moves
  everything to the device, silently losing the offload): build a fresh pipeline instead.

Order: cast the dtype and apply the GPU-path options that replace or add weights (fused QKV projections,
LoRA layers) before `apply_memory`, on the CPU; the offload hooks know only the weights that exist when
they are installed (a layer added later stays on the CPU, and on a GPU its first call fails). `minimal`
cannot be combined with `compile`: the per-layer hooks are `torch.compiler.disable`d, which a fullgraph
(regional) compilation of a block refuses; `apply_memory` raises if a module is already compiled.
`balanced` works with both. `offload_mode(pipe)` says which mode a pipeline is in (for a caller deciding
whether `.to()` or pinning the execution device is allowed).

Pixels: the offload modes move weights and leave the arithmetic alone (the tests find bit-identical
images on the CPU), except `minimal`'s VAE: above `TILE` pixels its tiles are decoded apart and blended
(as diffusers' tiling does), and a batch of images is decoded one at a time, which rounds differently
(about 1e-5 on the CPU). And `balanced`'s hooks copy weights to the device inside the job's inference
mode, so the device copies are inference tensors (on the CPU too, where `cpu:0` is another device to
`.to()`): give the pipelines frozen weights (`requires_grad_(False)`, as workers/models.py does), or the
CPU's matmul rounds the resident and the copied weights differently (about 3e-6).
"""

from __future__ import annotations

import torch

MODES = ("default", "balanced", "minimal")
TILE = 512  # pixels: the minimal mode's VAE tile side (the SDXL VAE's own is 1024, no tiling at 1024²)
CPU = torch.device("cpu")


def _modules(pipe):
    return [(name, m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)]


def group_offloaded(module: torch.nn.Module) -> bool:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)


def model_offloaded(module: torch.nn.Module) -> bool:
    from accelerate.hooks import CpuOffload

    return isinstance(getattr(module, "_hf_hook", None), CpuOffload)


def offload_mode(pipe) -> str:
    """"minimal" if any component has group offloading, "balanced" if any has Accelerate's model offload
    hook, else "default"."""
    modules = [m for _, m in _modules(pipe)]
    if any(group_offloaded(m) for m in modules):
        return "minimal"
    if any(model_offloaded(m) for m in modules):
        return "balanced"
    return "default"


def _tile_vae(vae) -> None:
    """Tiled, one-image-at-a-time decoding in `TILE`-pixel tiles (never larger than the VAE's own tile)."""
    if vae is None:
        return
    if hasattr(vae, "use_tiling"):
        vae.enable_tiling()
        if getattr(vae, "tile_sample_min_size", None) and isinstance(vae.tile_sample_min_size, int) \
                and vae.tile_sample_min_size > TILE:
            vae.tile_latent_min_size = vae.tile_latent_min_size * TILE // vae.tile_sample_min_size
            vae.tile_sample_min_size = TILE
    if hasattr(vae, "use_slicing"):
        vae.enable_slicing()


def _minimal(pipe, device: torch.device) -> None:
    from diffusers.hooks import apply_group_offloading

    streams = device.type == "cuda"
    compiled = [name for name, m in _modules(pipe)
                if any(getattr(sub, "_compiled_call_impl", None) is not None for sub in m.modules())]
    if compiled:
        raise ValueError(f"memory: minimal cannot be used with compiled modules ({', '.join(compiled)}): "
                         f"torch.compile cannot trace the per-layer offload hooks; turn `compile` off")
    for name, module in _modules(pipe):
        if group_offloaded(module):  # shared with a pipeline already in this mode
            continue
        options = dict(onload_device=device, offload_device=CPU, offload_type="leaf_level",
                       use_stream=streams and name != "vae")
        if hasattr(module, "enable_group_offload"):  # diffusers models
            module.enable_group_offload(**options)
        else:  # transformers' text and image encoders
            apply_group_offloading(module, **options)
    _tile_vae(getattr(pipe, "vae", None))


def apply_memory(pipe, mode: str, device: torch.device) -> None:
    """Put the loaded pipeline `pipe` into memory mode `mode` ("default", "balanced", "minimal") for
    running on `device` (the CPU included: see the module's docstring). Call it once per pipeline, the
    refiner and `from_pipe` pipelines too, after every option that adds or replaces weights."""
    if mode not in MODES:
        raise ValueError(f"unknown memory mode {mode!r}: one of {', '.join(MODES)}")
    device = torch.device(device)
    current = offload_mode(pipe)
    if mode == "default":
        if current != "default":
            raise ValueError(f"this pipeline is in the {current!r} memory mode, which cannot be undone by moving "
                             f"it: build a fresh pipeline for the default mode")
        pipe.to(device)
    elif mode == "balanced":
        if current == "minimal":
            raise ValueError("a pipeline with group-offloaded modules (memory: minimal) cannot also use model "
                             "offload (memory: balanced)")
        pipe.enable_model_cpu_offload(device=device)
    else:
        if current == "balanced":
            raise ValueError("a pipeline with model-offloaded modules (memory: balanced) cannot also use group "
                             "offloading (memory: minimal)")
        _minimal(pipe, device)
