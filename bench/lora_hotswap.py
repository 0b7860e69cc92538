"""LoRAs on a compiled UNet, measured: the GPU half of the adapters benchmark (bench/adapters.py is the
CPU half, through a worker).

Builds full-size SDXL Turbo with random weights (bench/gpu.py `build`), applies Fresco's model path as
a models file with `compile: true` would (workers/models.py `optimize`, LoRA slots prepared before the
warm-up compiles: workers/lora_slots.py), makes `--loras` random LoRAs of rank `--rank` on the UNet's
attention projections (a typical SDXL LoRA's layers), then, in one run:

- a Turbo call with no LoRA, with a resident LoRA, and right after a switch (median of `--repeats`);
- the switch itself: hot-swapping a LoRA not resident into a slot (`Loras.use`), per LoRA;
- recompilations: none allowed. Timed calls run under torch's `fail_on_recompile` stance (a guard
  failure raises) and dynamo's graph count is read before and after.

Goals (issue "Adapters per request"): a switch under 1 s, no recompilation, a resident LoRA within 10%
of none. `--tiny` runs the tiny profile on the CPU with the eager backend (the tests run it).

    python bench/lora_hotswap.py [--rank 64] [--slots 2] [--loras 4] [--repeats 5] [--dtype bfloat16]
    python bench/lora_hotswap.py --tiny --compile-backend eager
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.gpu import build, sync  # noqa: E402

LORA_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")
GOALS = {"switch_s": 1.0, "resident_ratio": 1.10, "recompiles": 0}


def random_lora(unet, rank: int, seed: int) -> dict:
    """A LoRA of `rank` on the UNet's attention projections, PEFT layout, small random weights."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(tuple("." + layer for layer in LORA_LAYERS)):
            state[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            state[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
    return state


def run(args) -> dict:
    import safetensors.torch

    from service.catalog import AdapterSpec, Catalog, ModelSpec
    from service.settings import Settings
    from workers.adapter_files import AdapterFiles
    from workers.loras import Loras
    from workers.models import LoadedModel, freeze, freeze_compiled, optimize
    from workers.pipelines.registry import PIPELINES
    from workers.progress import Progress
    from workers.quiet import silence_known_noise
    from workers.runtime import warm_up

    silence_known_noise()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float32 if args.tiny and args.dtype == "auto" else getattr(torch, args.dtype)
    size = 256 if args.tiny else 512
    pipe, _ = build("turbo", args.tiny, device, dtype)
    freeze(pipe)
    spec = ModelSpec(name="bench-turbo", kind="turbo", source="tiny" if args.tiny else "random", dtype=args.dtype,
                     compile=not args.no_compile, compile_backend=args.compile_backend, compile_mode=args.compile_mode,
                     buckets=[(size, size)], lora_rank=args.rank, lora_slots=args.slots)
    folder = Path(tempfile.mkdtemp(prefix="fresco-lora-bench-"))
    adapters = {}
    for i in range(args.loras):
        path = folder / f"lora{i}.safetensors"
        safetensors.torch.save_file(random_lora(pipe.unet, args.rank, 1000 + i), str(path))
        adapters[f"lora{i}"] = AdapterSpec(name=f"lora{i}", kind="lora", source=str(path), base=["sdxl"])
    catalog = Catalog(models={spec.name: spec}, adapters=adapters)
    optimize(spec, pipe)
    model = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, scheduler_config=pipe.scheduler.config)
    model.loras = Loras(model, catalog, AdapterFiles(Settings(data_dir=folder)), capacity=args.slots)
    if spec.compile:
        model.loras.prepare_slots(args.rank, args.slots)
    pipeline = PIPELINES["turbo"](model)
    torch.compiler.set_stance("default")
    t0 = time.perf_counter()
    warm_up(pipeline, spec, 1)
    warm_s = time.perf_counter() - t0
    if spec.compile:
        freeze_compiled()

    params = {"prompt": "a red fox", "negative_prompt": "", "width": size, "height": size, "steps": 1, "seed": 0,
              "num_images": 1, "output_format": "png", "guidance_scale": 0.0, "loras": []}

    def call(loras):
        with torch.inference_mode():
            p = {**params, "loras": loras}
            pipeline.use_adapters(p)
            pipeline.run(p, Progress(lambda state: False, pipeline.plan(p)))
        sync(device)

    def median_s(loras) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            call(loras)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    from torch._dynamo.utils import counters

    if spec.compile:
        torch.compiler.set_stance("fail_on_recompile")
    graphs_before = sum(counters["stats"].values())
    # The first load of each slot happens before timing: a slot's first LoRA is a swap like any other.
    call([{"name": "lora0", "scale": 1.0}])
    rounds = {"none": [], "resident": []}
    for _ in range(2):  # interleaved, so noise hits both alike
        rounds["none"].append(median_s([]))
        rounds["resident"].append(median_s([{"name": "lora0", "scale": 1.0}]))
    switches = []
    for i in range(1, args.loras):
        entry = [{"name": f"lora{i}", "scale": 0.8}]
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            pipeline.use_adapters({**params, "loras": entry})
        sync(device)
        switches.append(time.perf_counter() - t)
        call(entry)
    after_switch = median_s([{"name": f"lora{args.loras - 1}", "scale": 0.8}])
    graphs_after = sum(counters["stats"].values())
    torch.compiler.set_stance("eager_on_recompile" if spec.compile else "default")
    none_s, resident_s = min(rounds["none"]), min(rounds["resident"])
    return {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "tiny": args.tiny, "compile": spec.compile, "backend": args.compile_backend, "dtype": args.dtype,
        "rank": args.rank, "slots": args.slots, "size": size, "warm_up_s": round(warm_s, 2),
        "none_s": none_s, "resident_s": resident_s, "resident_ratio": resident_s / none_s,
        "after_switch_s": after_switch, "switch_s": statistics.median(switches), "switch_max_s": max(switches),
        "recompiles": 0 if graphs_after == graphs_before else graphs_after - graphs_before,
        "dynamo_stats_before": graphs_before, "dynamo_stats_after": graphs_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny profile on the CPU (tests)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--loras", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args(argv)
    if args.tiny and args.dtype == "bfloat16":
        args.dtype = "float32"
    row = run(args)
    print(f"LoRAs on a {'compiled' if row['compile'] else 'plain'} Turbo UNet ({row['device']}, {row['dtype']}, "
          f"{row['size']}², rank {row['rank']}, {row['slots']} slots; warm-up {row['warm_up_s']} s)")
    print(f"  no LoRA           {row['none_s'] * 1000:9.1f} ms")
    print(f"  resident LoRA     {row['resident_s'] * 1000:9.1f} ms   ratio {row['resident_ratio']:.3f}"
          f"   (goal <= {GOALS['resident_ratio']})")
    print(f"  after a switch    {row['after_switch_s'] * 1000:9.1f} ms")
    print(f"  switch (hot swap) {row['switch_s'] * 1000:9.1f} ms   max {row['switch_max_s'] * 1000:.1f} ms"
          f"   (goal < {GOALS['switch_s'] * 1000:.0f} ms)")
    print(f"  recompilations    {row['recompiles']:9d}      (goal {GOALS['recompiles']}; timed calls ran "
          f"under fail_on_recompile)")
    print("reproduce: python bench/lora_hotswap.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
