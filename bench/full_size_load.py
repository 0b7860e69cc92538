"""Full-size SD 3.5 and FLUX.1 checkpoints through Fresco's loader, on a host without a GPU or the weights.

The GPU bench (bench/gpu.py) builds its full-size models in memory; this one checks the other half of a
worker's start on the real architectures: that a checkpoint in the hub's layout (`model_index.json`,
one folder per component, sharded safetensors with their index) of the published configs
(bench/configs/full_size.json) loads through a models file, quantized as it loads where the model says
`quantize:`, and runs. The weights are random and written tensor by tensor from a model built on the
`meta` device, so writing a 24 GB transformer takes one shard of memory, not the model.

- `sd3`: SD 3.5 **medium** without T5 (`t5: false`: its transformer 2.5 B, CLIP-L, bigG, the VAE; 6.3 GiB
  in bf16), loaded with `workers.models.load_model` from a models file, one `txt2img` job at `--size`,
  `--steps` through the task pipeline, on the CPU in bf16.
- `flux`: FLUX.1-schnell's **transformer** alone (11.9 B: 22 GiB in bf16; T5-XXL adds 9 GB), loaded with
  the `from_pretrained` arguments Fresco's loader gives a `quantize: int8` model (workers/quantize.py
  `load_kwargs`: diffusers' TorchAoConfig), and one forward pass at `--size` (the packed latents of that
  size and 64 T5 tokens). Needs a host with about 48 GiB of RAM: on a 24 GiB one the load passed 17.5 GiB
  of RSS a third of the way through its shards (BENCHMARKS.md §15) and was stopped.

Prints what ran, the bytes written, load seconds, the process's peak RSS after each stage, and the
job's (or forward pass's) seconds; `--json` writes the rows. The directories are temporary unless
`--keep DIR`.

    python bench/full_size_load.py [--only sd3 flux] [--size 256] [--steps 1] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import peak_rss  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs" / "full_size.json"
SHARD_BYTES = 2 * 2**30  # the hub's own checkpoints shard at 5-10 GB; smaller shards keep this bench's memory low
GiB = 2**30


def write_random(module, directory: Path, weights_name: str, index_name: str, seed: int = 0) -> int:
    """`module` (built on the meta device) as random bfloat16 safetensors shards in `directory`, with the
    index `from_pretrained` reads; each tensor is made, written with its shard, and dropped. Floating
    tensors are N(0, 0.02) (norm scales 1), so activations stay finite; the few integer buffers zeros.
    Returns the bytes written."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    sizes = [0]
    names = []
    for name, meta in module.state_dict(keep_vars=True).items():
        if meta.dtype.is_floating_point:
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "_norm.weight", "layer_norm.weight")):
                t = torch.ones(meta.shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(meta.shape, generator=g, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        else:
            t = torch.zeros(meta.shape, dtype=meta.dtype)
        nbytes = t.numel() * t.element_size()
        if sizes[-1] and sizes[-1] + nbytes > SHARD_BYTES:
            _flush(shards, sizes, directory, weights_name, names, save_file)
        shards[-1][name] = t
        sizes[-1] += nbytes
    _flush(shards, sizes, directory, weights_name, names, save_file, last=True)
    total = sum(sizes)
    files = [f for f, _ in names]
    count = len(files)
    weight_map = {}
    for i, (old, keys) in enumerate(names):
        new = weights_name.replace(".safetensors", f"-{i + 1:05d}-of-{count:05d}.safetensors")
        (directory / old).rename(directory / new)
        weight_map.update({k: new for k in keys})
    (directory / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2))
    return total


def _flush(shards, sizes, directory, weights_name, names, save_file, last=False):
    if shards[-1]:
        part = f"part-{len(names)}.safetensors"
        save_file(shards[-1], str(directory / part), metadata={"format": "pt"})
        names.append((part, list(shards[-1])))
        shards[-1] = {}  # its tensors go now
    if not last:
        sizes.append(0)


def write_diffusers(module, directory: Path) -> int:
    module.save_config(directory)
    return write_random(module, directory, "diffusion_pytorch_model.safetensors",
                        "diffusion_pytorch_model.safetensors.index.json")


def write_transformers(module, directory: Path) -> int:
    module.config.dtype = torch.bfloat16
    module.config.save_pretrained(directory)
    return write_random(module, directory, "model.safetensors", "model.safetensors.index.json")


def stage(rows: list, what: str, seconds: float, out=print, **extra) -> None:
    row = {"stage": what, "seconds": seconds, "peak_rss_bytes": peak_rss(), **extra}
    rows.append(row)
    more = "".join(f", {k} {v / GiB:.2f} GiB" if k.endswith("bytes") else f", {k} {v}" for k, v in extra.items())
    out(f"  {what}: {seconds:.1f} s{more}; peak RSS so far {row['peak_rss_bytes'] / GiB:.2f} GiB")


def run_sd3(root: Path, size: int, steps: int, out=print) -> list[dict]:
    """SD 3.5 medium (no T5) in the hub layout, loaded from a models file by Fresco's loader, one job."""
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from service.catalog import load_catalog
    from workers import tiny
    from workers.families.sd3 import SD3_SCHEDULER
    from workers.models import load_model
    from workers.pipelines.registry import PIPELINES
    from workers.progress import Progress

    cfg = json.loads(CONFIGS.read_text())
    directory = root / "stable-diffusion-3.5-medium"
    rows: list[dict] = []
    out(f"sd3: SD 3.5 medium without T5 in the hub layout at {directory}")
    t0 = time.perf_counter()
    written = 0
    with torch.device("meta"):
        parts = {"transformer": SD3Transformer2DModel(**cfg["SD35_MEDIUM_TRANSFORMER"]),
                 "vae": AutoencoderKL(**cfg["SD3_VAE"]),
                 "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**cfg["CLIP_L_TEXT"])),
                 "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**cfg["OPENCLIP_BIGG_TEXT"]))}
    for name, module in parts.items():
        write = write_diffusers if name in ("transformer", "vae") else write_transformers
        written += write(module, directory / name)
    del parts
    FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER).save_pretrained(directory / "scheduler")
    tiny.tokenizer().save_pretrained(directory / "tokenizer")  # offline CLIP tokenizers: same shapes (77)
    tiny.tokenizer().save_pretrained(directory / "tokenizer_2")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": [None, None], "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    stage(rows, "written (random bf16, sharded)", time.perf_counter() - t0, out, written_bytes=written)

    models = root / "models.yaml"
    models.write_text(f"models:\n  sd3.5-medium:\n    kind: sd3\n    source: {directory}\n    dtype: bfloat16\n"
                      f"    device: cpu\n    t5: false\n")
    spec = load_catalog(models).spec("sd3.5-medium")
    t0 = time.perf_counter()
    model = load_model(spec)
    params = sum(p.numel() for m in model.pipe.components.values() if isinstance(m, torch.nn.Module)
                 for p in m.parameters())
    stage(rows, "loaded by workers.models.load_model", time.perf_counter() - t0, out, parameters=params)
    pipeline = PIPELINES["txt2img"](model)
    job = pipeline.warmup_params(size, size)
    job.update(prompt="a lighthouse on a cliff at dusk", steps=steps, seed=0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        result = pipeline.run(job, Progress(lambda state: False, pipeline.plan(job)))
    stage(rows, f"txt2img {size}x{size}, {steps} step(s), guidance {job['guidance_scale']}", time.perf_counter() - t0,
          out, output=type(result).__name__)
    for row in rows:
        row["model"] = "sd3.5-medium (no T5)"
    return rows


def run_flux(root: Path, size: int, out=print) -> list[dict]:
    """FLUX.1-schnell's transformer in the hub layout, loaded int8 as Fresco's loader loads it, one forward."""
    from diffusers import FluxTransformer2DModel

    from service.catalog import ModelSpec
    from workers import quantize

    cfg = json.loads(CONFIGS.read_text())
    directory = root / "FLUX.1-schnell" / "transformer"
    rows: list[dict] = []
    out(f"flux: FLUX.1-schnell's transformer in the hub layout at {directory}")
    t0 = time.perf_counter()
    with torch.device("meta"):
        module = FluxTransformer2DModel(**cfg["FLUX1_SCHNELL_TRANSFORMER"])
    written = write_diffusers(module, directory)
    del module
    stage(rows, "written (random bf16, sharded)", time.perf_counter() - t0, out, written_bytes=written)

    spec = ModelSpec(name="flux1-schnell", kind="flux", source=str(directory.parent), dtype="bfloat16",
                     device="cpu", quantize="int8")
    quantize.check_host(spec, torch.device("cpu"))
    # What workers.models gives from_pretrained for this model's denoiser (quantize.load_kwargs' mapping).
    config = quantize._load_config("int8", "diffusers", torch.bfloat16)
    t0 = time.perf_counter()
    transformer = FluxTransformer2DModel.from_pretrained(directory, torch_dtype=torch.bfloat16,
                                                         quantization_config=config)
    layers = sum(quantize.quantized_weight(m) for m in transformer.modules() if isinstance(m, torch.nn.Linear))
    linear = sum(isinstance(m, torch.nn.Linear) for m in transformer.modules())
    stage(rows, "loaded int8 (from_pretrained + TorchAoConfig, as workers/quantize.py asks)",
          time.perf_counter() - t0, out, int8_linear_layers=f"{layers} of {linear}")
    # One denoising step's forward: the packed latents of a size² image (16 channels, 2×2 patches) and
    # 64 T5 tokens; schnell has no guidance embedding.
    tokens = (size // 16) ** 2
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, tokens, 64, generator=g).to(torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, 64, 4096, generator=g).to(torch.bfloat16),
                  pooled_projections=torch.randn(1, 768, generator=g).to(torch.bfloat16),
                  timestep=torch.tensor([1.0], dtype=torch.bfloat16),
                  img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(64, 3), guidance=None, return_dict=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        (sample,) = transformer(**inputs)
    finite = bool(torch.isfinite(sample).all())
    stage(rows, f"one forward pass, {size}x{size} ({tokens} image + 64 text tokens)", time.perf_counter() - t0,
          out, finite=finite)
    for row in rows:
        row["model"] = "FLUX.1-schnell transformer (int8)"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=("sd3", "flux"), default=["sd3", "flux"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--keep", default=None, help="write the checkpoints here and keep them")
    parser.add_argument("--json", default=None, help="write the rows as JSON here too")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fresco-full-size-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, checkpoints under {root}")
    rows = []
    try:
        for what in args.only:
            rows += run_sd3(root, args.size, args.steps) if what == "sd3" else run_flux(root, args.size)
            if not args.keep:
                shutil.rmtree(root / ("stable-diffusion-3.5-medium" if what == "sd3" else "FLUX.1-schnell"),
                              ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
