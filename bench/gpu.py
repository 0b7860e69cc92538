"""The GPU path, measured: plain diffusers defaults against Fresco's tuned path, in one run.

Builds the full-size architectures with random weights (bench/configs/full_size.json: SDXL base and
refiner UNets, the SDXL VAE, CLIP ViT-L and OpenCLIP bigG text encoders; SVD-XT's UNet, temporal VAE
and CLIP vision encoder) directly on the device in the target dtype (seconds, no download; the time a
model takes does not depend on its weights' values), then for each workload

- plain: what the diffusers documentation does: float16, the SDXL VAE as configured (it upcasts to
  float32 to decode), diffusers' default attention (SDPA), called directly;
- fresco: the same modules through Fresco's own task pipelines (workers/pipelines), tuned as a models
  file would ask: `--dtype` (bfloat16), a VAE that decodes in that dtype (the fp16-fix VAE's config),
  channels_last, fused QKV projections, regional torch.compile of the UNets' transformer blocks, warmed
  at the workload's size first (as a worker does at start, so no timed run compiles),

and prints the median latency and the peak device memory of each, and their ratio.

Workloads (batch 1): SDXL base + refiner 1024², 30 steps (switch 0.8); Turbo 512², 1 step;
SVD-XT 25 frames 576×1024, 25 steps. `--tiny` runs the tiny profile's models at tiny sizes instead,
on whatever device there is (the CPU here): the same code path, for the tests.

The `memory` section times the models file's `memory:` modes (workers/memory.py) side by side on the SDXL
base alone, 1024², 30 steps, in `--dtype` (no compilation): `default` (resident), `balanced` (model CPU
offload), `minimal` (leaf-level group offload with CUDA streams, tiled and sliced VAE), each on a fresh
pipeline, and prints each one's median latency and peak device memory (`torch.cuda.max_memory_allocated`,
reset before each mode) as ratios to `default`, with the goal of `minimal` under 1.5 GB, and how far each
mode's latents are from `default`'s (same seed: offloading moves weights, it should not change them).
On the CPU the peak is not measurable ("n/a (CPU)") and the modes save nothing: only their latency shows.

The `train` section (run when asked, and by default when there is a CUDA device) trains a LoRA on the
full-size SDXL base (random weights, built in `--dtype` as a training job's copy of a served model is)
with Fresco's trainer (workers/training, as a `train` job runs it): 1024², rank 16, batch 1, gradient
checkpointing, the trainer's defaults otherwise (mixed precision bf16 or fp16 on CUDA, bitsandbytes'
8-bit AdamW when installed), `--train-steps` steps of which the first TRAIN_WARMUP are not timed. It
prints the steps per second (from the trainer's step hook, which follows each step's loss read-back), the
minutes 1,000 steps would take, the preparing stage's time, and the peak device memory
(`torch.cuda.max_memory_allocated`, reset before the run), next to the anchor: Replicate's SDXL trainer
takes about 10 to 15 minutes for 1,000 steps on an L40S (about 1.1 to 1.7 it/s). `--tiny`: the tiny SDXL
at 128², on the CPU.

The `flux` and `sd3` sections (issue 22) time FLUX.1-schnell (1024², 4 steps, no guidance, 256 T5 tokens)
and SD 3.5 large (1024², 28 steps, guidance 3.5, 256 T5 tokens), each with its T5-XXL, built with random
weights from their published configs directly on the device in `--dtype`, through Fresco's own `txt2img`
task pipeline, once per weights setting: unquantized, then each `quantize:` of the models file (`int8`,
`fp8`, `nf4`: workers/quantize.py, applied to the built pipeline as a worker applies it to a model built in
memory: the transformer's and T5's Linear layers), each on a fresh pipeline, regionally compiled but nf4
(which `compile` cannot trace); median latency and peak device memory (`torch.cuda.max_memory_allocated`,
reset before each) with their ratios to the unquantized run. A setting this host cannot run (fp8 below
compute capability 8.9, nf4 without bitsandbytes, int8 without torchao, anything but int8 on the CPU) is
a row marked skipped, with the reason. `--tiny`: the tiny profile's `tiny-flux-schnell` and `tiny-sd3` at
64², 2 steps.

The `edit` section (issue: native editing) times the editing tasks at full size:
- inpaint: SDXL base 1024², 30 steps, strength 1.0, guidance 5.0, a centred square mask of half the side;
  plain diffusers (`StableDiffusionXLInpaintPipeline.from_pipe` on the same modules, float16, called
  directly) against Fresco's `inpaint` task pipeline (workers/pipelines/inpaint.py: the fill, the mask's
  4 px blur, the composite over the original) on the tuned modules, warmed at 1024² first; median latency
  and peak device memory of each, as the workloads above;
- upscale: a Real-ESRGAN-sized RRDBNet (RealESRGAN_x4plus's layout: 64 filters, 23 RRDB blocks, growth
  32, x4; 16.7 M parameters) with random weights, written to a .safetensors file and loaded through
  spandrel by `workers.upscalers.load_upscaler` as a models file's upscaler would be (float16 on CUDA),
  a 1024² input made 4096²: `tile` 512 (the API's default) against the whole image in one call; median
  latency, megapixels of input per second, peak device memory of each (`torch.cuda.max_memory_allocated`,
  reset before each), the tiles' share of extra work (their overlaps) and the largest pixel difference.
`--tiny`: the tiny SDXL at 128², 2 steps, and the catalogue's tiny ESRGAN (x2) on a 96² input, 64 px tiles.

    python bench/gpu.py [--only sdxl turbo svd memory flux sd3 edit train] [--repeats N] [--dtype bfloat16]
                        [--compile-mode MODE]
    python bench/gpu.py --tiny --compile-backend eager      # CPU, seconds
    python bench/gpu.py --only train [--train-steps 40]     # SDXL LoRA training, 1024², rank 16
    python bench/gpu.py --only edit                         # SDXL inpaint 1024², Real-ESRGAN-sized 4x of 1024²
    python bench/gpu.py --only flux sd3                     # FLUX.1-schnell, SD 3.5 large: bf16, int8, fp8, nf4
    python bench/gpu.py --save-turbo /tmp/t && python bench/overhead.py --models-file /tmp/t/models.yaml
                                                            # Turbo end to end through the service
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs" / "full_size.json"
TARGETS_S = {"sdxl": 1.5, "turbo": 0.080, "svd": 20.0}  # on one H100 (Turbo: end to end, see BENCHMARKS.md)
MEMORY_MODES = ("default", "balanced", "minimal")
MINIMAL_GOAL_BYTES = 1.5e9  # minimal: under 1.5 GB peak (HCP-Diffusion's SD inference in about 1 GB)
SECTIONS = ("sdxl", "turbo", "svd", "memory", "flux", "sd3", "edit", "train")
TRAIN_ANCHOR = ("Replicate's SDXL trainer takes about 10 to 15 minutes for 1,000 steps on an L40S "
                "(about 1.1 to 1.7 it/s)")
TRAIN_ANCHOR_ITS = (1000 / (15 * 60), 1000 / (10 * 60))
TRAIN_FULL = {"resolution": 1024, "rank": 16, "batch_size": 1, "steps": 40}
TRAIN_TINY = {"resolution": 128, "rank": 16, "batch_size": 1, "steps": 4}
TRAIN_WARMUP = {"full": 5, "tiny": 1}  # first steps of the run not timed (allocator, autotuning, first kernels)

FULL = {
    "sdxl": {"width": 1024, "height": 1024, "steps": 30, "guidance_scale": 5.0, "refiner_switch": 0.8},
    "turbo": {"width": 512, "height": 512, "steps": 1},
    "svd": {"width": 1024, "height": 576, "num_frames": 25, "steps": 25, "decode_chunk_size": 8},
}
EDIT_FULL = {"width": 1024, "height": 1024, "steps": 30, "guidance_scale": 5.0, "strength": 1.0,
             "upscale_size": 1024, "tile": 512}
EDIT_TINY = {"width": 128, "height": 128, "steps": 2, "guidance_scale": 5.0, "strength": 1.0,
             "upscale_size": 96, "tile": 64}
ESRGAN_FULL = {"filters": 64, "blocks": 23, "growth": 32, "scale": 4}  # RealESRGAN_x4plus's RRDBNet
# The transformer families (issue 22): what each section runs, full size and tiny. `source` is what the
# model stands for (its defaults follow it: FLUX.1-schnell's guidance-free 4 steps); the weights are built.
TRANSFORMER_FULL = {
    "flux": {"model": "FLUX.1-schnell", "source": "black-forest-labs/FLUX.1-schnell",
             "transformer": "FLUX1_SCHNELL_TRANSFORMER", "width": 1024, "height": 1024, "steps": 4,
             "guidance_scale": 0.0, "max_sequence_length": 256},
    "sd3": {"model": "SD 3.5 large", "source": "stabilityai/stable-diffusion-3.5-large",
            "transformer": "SD35_LARGE_TRANSFORMER", "width": 1024, "height": 1024, "steps": 28,
            "guidance_scale": 3.5, "max_sequence_length": 256},
}
TRANSFORMER_TINY = {
    "flux": {"model": "tiny-flux-schnell", "width": 64, "height": 64, "steps": 2, "guidance_scale": 0.0,
             "max_sequence_length": 32},
    "sd3": {"model": "tiny-sd3", "width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5,
            "max_sequence_length": 32},
}
WEIGHTS = (None, "int8", "fp8", "nf4")  # unquantized, then each `quantize:` setting
TINY = {
    "sdxl": {"width": 256, "height": 256, "steps": 4, "guidance_scale": 5.0, "refiner_switch": 0.75},
    "turbo": {"width": 256, "height": 256, "steps": 1},
    "svd": {"width": 128, "height": 64, "num_frames": 4, "steps": 2, "decode_chunk_size": 4},
}


# ---------------------------------------------------------------- building the models


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(kind: str, tiny: bool, device: torch.device, dtype: torch.dtype, base_only: bool = False):
    """(pipeline, refiner or None), random weights, built in place on `device` in `dtype`. `base_only`:
    no refiner for sdxl."""
    from workers import tiny as tiny_profile
    from workers.families.sdxl import tiny_base, tiny_refiner
    from workers.families.svd import SVD_SCHEDULER, tiny_svd

    if tiny:
        if kind == "svd":
            pipe, refiner = tiny_svd(), None
        else:
            pipe = tiny_base(seed=0 if kind == "sdxl" else 3)
            refiner = tiny_refiner(pipe) if kind == "sdxl" and not base_only else None
        for p in (pipe, refiner):
            if p is not None:
                p.set_progress_bar_config(disable=True)
                if p.dtype != dtype or p.device != device:
                    p.to(device=device, dtype=dtype)
        return pipe, refiner

    from diffusers import (AutoencoderKL, AutoencoderKLTemporalDecoder, EulerDiscreteScheduler,
                           StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, StableVideoDiffusionPipeline,
                           UNet2DConditionModel, UNetSpatioTemporalConditionModel)
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)

    cfg = json.loads(CONFIGS.read_text())
    # Schedulers, tokenizers and the image processor stay on the CPU in float32: only the weights are
    # built in place on the device, in the target dtype.
    def scheduler(config: dict):
        return EulerDiscreteScheduler(**config)

    with torch.device(device), default_dtype(dtype), torch.no_grad():
        if kind == "svd":
            vae = AutoencoderKLTemporalDecoder(**cfg["SVD_VAE"])
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["SVD_IMAGE_ENCODER"]))
            unet = UNetSpatioTemporalConditionModel(**cfg["SVD_UNET"])
        else:
            text = CLIPTextModel(CLIPTextConfig(**cfg["CLIP_L_TEXT"]))
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["OPENCLIP_BIGG_TEXT"]))
            vae = AutoencoderKL(**cfg["SDXL_VAE"])
            unet = UNet2DConditionModel(**cfg["SDXL_BASE_UNET"])
            refiner_unet = (UNet2DConditionModel(**cfg["SDXL_REFINER_UNET"])
                            if kind == "sdxl" and not base_only else None)
    if kind == "svd":
        pipe = StableVideoDiffusionPipeline(
            vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler(SVD_SCHEDULER),
            feature_extractor=CLIPImageProcessor(crop_size=224, size=224))
        pipe.set_progress_bar_config(disable=True)
        return pipe, None
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tiny_profile.tokenizer(),
        tokenizer_2=tiny_profile.tokenizer(), unet=unet, scheduler=scheduler(tiny_profile.SCHEDULER),
        add_watermarker=False)
    refiner = None
    if refiner_unet is not None:
        refiner = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, text_encoder_2=text_2, tokenizer=None, tokenizer_2=tiny_profile.tokenizer(),
            unet=refiner_unet, scheduler=scheduler(tiny_profile.SCHEDULER), requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, add_watermarker=False)
    for p in (pipe, refiner):
        if p is not None:
            p.set_progress_bar_config(disable=True)
    return pipe, refiner


# ---------------------------------------------------------------- the two ways of running them


def plain_call(kind: str, pipe, refiner, w: dict, device: torch.device):
    """How the diffusers documentation runs each workload."""
    from diffusers import EulerAncestralDiscreteScheduler
    from PIL import Image

    gen = torch.Generator("cpu").manual_seed(0)
    if kind == "turbo":
        if not isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler):
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                         timestep_spacing="trailing")
        return pipe(prompt="a red fox", width=w["width"], height=w["height"], num_inference_steps=w["steps"],
                    guidance_scale=0.0, generator=gen).images
    if kind == "sdxl":
        latents = pipe(prompt="a lighthouse", width=w["width"], height=w["height"], num_inference_steps=w["steps"],
                       guidance_scale=w["guidance_scale"], denoising_end=w["refiner_switch"], output_type="latent",
                       generator=gen).images
        return refiner(prompt="a lighthouse", image=latents, num_inference_steps=w["steps"],
                       denoising_start=w["refiner_switch"], guidance_scale=w["guidance_scale"],
                       generator=gen).images
    image = Image.new("RGB", (w["width"], w["height"]), (120, 90, 60))
    return pipe(image=image, width=w["width"], height=w["height"], num_frames=w["num_frames"],
                num_inference_steps=w["steps"], decode_chunk_size=w["decode_chunk_size"], generator=gen).frames


def fresco_spec(kind: str, args, w: dict, refiner: bool = True):
    from service.catalog import ModelSpec

    return ModelSpec(name=f"bench-{kind}", kind=kind, source="tiny" if args.tiny else "random",
                     refiner=("tiny" if args.tiny else "random") if kind == "sdxl" and refiner else None,
                     dtype=args.dtype, channels_last=True, fuse_qkv=True, compile=not args.no_compile,
                     compile_backend=args.compile_backend, compile_mode=args.compile_mode,
                     buckets=[(w["width"], w["height"])], num_frames=w.get("num_frames"))


def fresco_params(kind: str, w: dict) -> dict:
    common = {"prompt": "a red fox", "negative_prompt": "", "width": w["width"], "height": w["height"],
              "steps": w["steps"], "seed": 0, "num_images": 1, "output_format": "png"}
    if kind == "turbo":
        return {**common, "guidance_scale": 0.0}
    if kind == "sdxl":
        return {**common, "guidance_scale": w["guidance_scale"], "scheduler": "euler", "refiner": True,
                "refiner_switch": w["refiner_switch"]}
    return {**common, "num_frames": w["num_frames"], "fps": 7, "motion_bucket_id": 127, "noise_aug_strength": 0.02,
            "min_guidance_scale": 1.0, "max_guidance_scale": 3.0, "decode_chunk_size": w["decode_chunk_size"],
            "output_format": "mp4"}


def tune(kind: str, pipe, refiner, args, w: dict, device: torch.device, task: str | None = None):
    """Fresco's path: the models file's options applied by workers/models.py, the task pipeline of
    workers/pipelines (`task`'s, default the workload's), warmed at the workload's size. Returns
    (TaskPipeline, warm-up seconds)."""
    from workers.models import LoadedModel, freeze_compiled, optimize
    from workers.pipelines.registry import PIPELINES
    from workers.runtime import warm_up

    spec = fresco_spec(kind, args, w, refiner=refiner is not None)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else pipe.dtype
    for p in (pipe, refiner):
        if p is not None:
            # Every module, not only when `p.dtype` differs: a pipeline's dtype is its first module's, and
            # the refiner's first (the VAE it shares with the base) is already converted with the base.
            p.to(device=device, dtype=dtype)
            vae = getattr(p, "vae", None)
            if vae is not None and getattr(vae.config, "force_upcast", False):
                vae.register_to_config(force_upcast=False)  # the fp16-fix VAE's config: decode in `dtype`
    optimize(spec, pipe, refiner)
    model = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, scheduler_config=pipe.scheduler.config,
                        refiner=refiner, refiner_scheduler_config=refiner.scheduler.config if refiner else None)
    pipeline = PIPELINES[task or kind](model)
    torch.compiler.set_stance("default")  # an earlier workload froze compilation: this one compiles its own
    seconds = warm_up(pipeline, spec, 1)
    if spec.compile:
        freeze_compiled()
    return pipeline, seconds


def fresco_call(kind: str, pipeline, w: dict):
    from PIL import Image

    from workers.pipelines.base import input_image
    from workers.progress import Progress

    params = fresco_params(kind, w)
    if kind == "svd":
        params["image"] = input_image(Image.new("RGB", (w["width"], w["height"]), (120, 90, 60)))
    with torch.inference_mode():
        return pipeline.run(params, Progress(lambda state: False, pipeline.plan(params)))


# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":  # the CPU has no peak to reset, and a collection there takes a second or more
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return None  # the CPU has no per-run peak to read; RSS only ever grows


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def measure(kind: str, args, device: torch.device, w: dict, repeats: int, plain_dtype: torch.dtype):
    """Build, time plain diffusers, tune the same modules, time Fresco's path."""
    t0 = time.perf_counter()
    pipe, refiner = build(kind, args.tiny, device, plain_dtype)
    built_s = time.perf_counter() - t0
    peak_reset(device)
    with torch.inference_mode():
        plain = timed(lambda: plain_call(kind, pipe, refiner, w, device), device, repeats)
    plain_peak = peak_bytes(device)
    pipeline, warm_s = tune(kind, pipe, refiner, args, w, device)
    peak_reset(device)
    fresco = timed(lambda: fresco_call(kind, pipeline, w), device, repeats)
    return built_s, warm_s, plain, plain_peak, fresco, peak_bytes(device)


def _gib(b: int | None) -> str:
    return f"{b / 2**30:6.2f} GiB" if b is not None else "   n/a    "


def run_workload(kind: str, args, device: torch.device, out=print) -> dict:
    w = (TINY if args.tiny else FULL)[kind]
    repeats = args.repeats or ({"sdxl": 5, "turbo": 20, "svd": 3}[kind] if not args.tiny else 2)
    plain_dtype = torch.float16 if device.type == "cuda" else torch.float32
    built_s, warm_s, plain, plain_peak, fresco, fresco_peak = measure(kind, args, device, w, repeats, plain_dtype)
    peak_reset(device)  # the models are gone with measure()'s frame
    row = {"workload": kind, "size": f"{w['width']}x{w['height']}", "steps": w["steps"],
           "frames": w.get("num_frames"), "repeats": repeats, "build_s": built_s, "warmup_s": warm_s,
           "plain_s": statistics.median(plain), "fresco_s": statistics.median(fresco),
           "plain_peak_bytes": plain_peak, "fresco_peak_bytes": fresco_peak,
           "target_s": None if args.tiny else TARGETS_S[kind]}
    row["speedup"] = row["plain_s"] / row["fresco_s"]
    target = "" if args.tiny else (f"  target {TARGETS_S[kind] * 1000:.0f} ms: "
                                   f"{'met' if row['fresco_s'] <= TARGETS_S[kind] else 'NOT met'}")
    frames = f" x{w['num_frames']}" if w.get("num_frames") else ""
    out(f"{kind:6} {row['size']:>9} {w['steps']:>3} steps{frames}"
        f"  plain {row['plain_s'] * 1000:9.1f} ms {_gib(plain_peak)}  fresco {row['fresco_s'] * 1000:9.1f} ms "
        f"{_gib(fresco_peak)}  x{row['speedup']:.2f}  (built {built_s:.1f} s, warm-up {warm_s:.1f} s){target}")
    return row


# ---------------------------------------------------------------- memory modes


def memory_call(pipe, w: dict, output_type: str = "pil"):
    gen = torch.Generator("cpu").manual_seed(0)
    return pipe(prompt="a lighthouse", width=w["width"], height=w["height"], num_inference_steps=w["steps"],
                guidance_scale=w["guidance_scale"], generator=gen, output_type=output_type).images


def memory_mode(mode: str, args, device: torch.device, dtype: torch.dtype, w: dict, repeats: int):
    """A fresh SDXL base in `mode`: (latencies, peak bytes or None, latents on the CPU)."""
    from workers.memory import apply_memory
    from workers.models import freeze, no_needless_upcast

    pipe, _ = build("sdxl", args.tiny, device, dtype, base_only=True)
    no_needless_upcast(pipe, dtype)  # as a worker loads it: no float32 VAE upcast in bfloat16/float32
    freeze(pipe)
    apply_memory(pipe, mode, device)  # the offload modes move the weights built on the device to the CPU
    peak_reset(device)
    with torch.inference_mode():
        times = timed(lambda: memory_call(pipe, w), device, repeats)  # the warm-up traces the stream order
        latents = memory_call(pipe, w, output_type="latent").float().cpu()
    return times, peak_bytes(device), latents


def run_memory_modes(args, device: torch.device, out=print) -> list[dict]:
    w = (TINY if args.tiny else FULL)["sdxl"]
    repeats = args.repeats or (2 if args.tiny else 3)
    dtype = (getattr(torch, args.dtype) if args.dtype != "auto"
             else torch.float16 if device.type == "cuda" else torch.float32)
    out(f"memory modes: SDXL base {w['width']}x{w['height']}, {w['steps']} steps, "
        f"{str(dtype).removeprefix('torch.')}, median of {repeats}; ratios to default")
    rows, reference = [], None
    for mode in MEMORY_MODES:
        peak_reset(device)
        times, peak, latents = memory_mode(mode, args, device, dtype, w, repeats)
        reference = latents if reference is None else reference
        row = {"workload": "memory", "mode": mode, "size": f"{w['width']}x{w['height']}", "steps": w["steps"],
               "dtype": str(dtype).removeprefix("torch."), "repeats": repeats,
               "latency_s": statistics.median(times), "peak_bytes": peak,
               "latents_max_abs_diff": float((latents - reference).abs().max())}
        row["latency_ratio"] = row["latency_s"] / rows[0]["latency_s"] if rows else 1.0
        row["peak_ratio"] = peak / rows[0]["peak_bytes"] if rows and peak and rows[0]["peak_bytes"] else None
        rows.append(row)
        if peak is None:
            memory = "peak n/a (CPU)"
        else:
            memory = f"peak {peak / 1e9:6.2f} GB x{row['peak_ratio'] or 1.0:.2f}"
        goal = ""
        if mode == "minimal":
            row["goal_bytes"] = MINIMAL_GOAL_BYTES
            goal = ("  goal minimal < 1.5 GB peak: " + ("n/a (CPU)" if peak is None else
                                                         "met" if peak < MINIMAL_GOAL_BYTES else "NOT met"))
        out(f"  {mode:9} {row['latency_s'] * 1000:9.1f} ms x{row['latency_ratio']:.2f}  {memory}  "
            f"latents max|d| vs default {row['latents_max_abs_diff']:.2g}{goal}")
    peak_reset(device)
    return rows


# ---------------------------------------------------------------- SD 3.5 and FLUX.1: bf16 and quantized


def build_transformer_family(kind: str, args, device: torch.device, dtype: torch.dtype):
    """A FLUX.1-schnell or SD 3.5 large pipeline (T5-XXL included) with random weights, built in place on
    `device` in `dtype` from the published configs; `--tiny`: the tiny profile's model of the section."""
    from workers.families import FAMILIES

    if args.tiny:
        from service.catalog import tiny_catalog

        pipe, _ = FAMILIES[kind].tiny(tiny_catalog().spec(TRANSFORMER_TINY[kind]["model"]))
        pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
                           SD3Transformer2DModel, StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from workers import tiny as tiny_profile
    from workers.families.flux import FLUX_SCHNELL_SCHEDULER
    from workers.families.sd3 import SD3_SCHEDULER

    cfg = json.loads(CONFIGS.read_text())
    with torch.device(device), default_dtype(dtype), torch.no_grad():
        t5 = T5EncoderModel(T5Config(**cfg["T5_XXL_ENCODER"]))
        if kind == "flux":
            parts = dict(transformer=FluxTransformer2DModel(**cfg[TRANSFORMER_FULL[kind]["transformer"]]),
                         vae=AutoencoderKL(**cfg["FLUX_VAE"]),
                         text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["CLIP_L_TEXT"])), text_encoder_2=t5)
        else:
            parts = dict(transformer=SD3Transformer2DModel(**cfg[TRANSFORMER_FULL[kind]["transformer"]]),
                         vae=AutoencoderKL(**cfg["SD3_VAE"]),
                         text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**cfg["CLIP_L_TEXT"])),
                         text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfg["OPENCLIP_BIGG_TEXT"])),
                         text_encoder_3=t5)
    # Tokenizers and the scheduler stay on the CPU: the tiny profile's offline tokenizers (their vocabularies
    # are smaller than the encoders', which changes no shape: T5 pads to max_sequence_length, CLIP to 77).
    if kind == "flux":
        pipe = FluxPipeline(**parts, tokenizer=tiny_profile.tokenizer(), tokenizer_2=tiny_profile.t5_tokenizer(),
                            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHNELL_SCHEDULER))
    else:
        pipe = StableDiffusion3Pipeline(**parts, tokenizer=tiny_profile.tokenizer(),
                                        tokenizer_2=tiny_profile.tokenizer(), tokenizer_3=tiny_profile.t5_tokenizer(),
                                        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def transformer_spec(kind: str, args, w: dict, setting: str | None):
    from service.catalog import ModelSpec, tiny_catalog

    source = tiny_catalog().spec(w["model"]).source if args.tiny else w["source"]
    return ModelSpec(name=f"bench-{kind}-{setting or 'none'}", kind=kind, source=source, dtype=args.dtype,
                     quantize=setting, compile=not args.no_compile and setting != "nf4",
                     compile_backend=args.compile_backend, compile_mode=args.compile_mode,
                     buckets=[(w["width"], w["height"])], steps=w["steps"], guidance_scale=w["guidance_scale"],
                     max_sequence_length=w["max_sequence_length"])


def transformer_params(pipeline, w: dict) -> dict:
    """A txt2img job as the API resolves it: the task pipeline's own warm-up parameters (every field the
    task reads) with the workload's prompt, size, steps, guidance and T5 tokens."""
    params = pipeline.warmup_params(w["width"], w["height"])
    params.update(prompt="a red fox in the snow, detailed fur", seed=0, steps=w["steps"],
                  guidance_scale=w["guidance_scale"], max_sequence_length=w["max_sequence_length"])
    return params


def transformer_setting(kind: str, setting: str | None, args, device: torch.device, dtype: torch.dtype,
                        w: dict, repeats: int) -> dict:
    """One weights setting on a fresh pipeline: built, quantized as a worker quantizes a model built in
    memory (workers/quantize.py), tuned (regional compile), warmed at the workload's size, timed."""
    from workers import quantize
    from workers.models import LoadedModel, freeze, freeze_compiled, no_needless_upcast, optimize
    from workers.pipelines.registry import PIPELINES
    from workers.progress import Progress
    from workers.runtime import warm_up

    spec = transformer_spec(kind, args, w, setting)
    row = {"workload": kind, "model": w["model"], "quantize": setting or "none",
           "dtype": str(dtype).removeprefix("torch."), "size": f"{w['width']}x{w['height']}", "steps": w["steps"],
           "repeats": repeats, "compile": spec.compile}
    try:
        quantize.check_host(spec, device)
    except quantize.QuantizeUnavailable as exc:
        return {**row, "skipped": str(exc)}
    t0 = time.perf_counter()
    pipe = build_transformer_family(kind, args, device, dtype)
    no_needless_upcast(pipe, dtype)
    freeze(pipe)
    try:
        layers = quantize.apply(pipe, spec, device)
    except (ImportError, RuntimeError, NotImplementedError) as exc:  # a library that cannot run it here
        return {**row, "skipped": f"{type(exc).__name__}: {exc}"}
    optimize(spec, pipe)
    row["build_s"] = time.perf_counter() - t0
    row["quantized_layers"] = layers
    model = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, scheduler_config=pipe.scheduler.config)
    pipeline = PIPELINES["txt2img"](model)
    torch.compiler.set_stance("default")  # an earlier setting froze compilation: this one compiles its own
    row["warmup_s"] = warm_up(pipeline, spec, 1)
    if spec.compile:
        freeze_compiled()
    params = transformer_params(pipeline, w)

    def call():
        with torch.inference_mode():
            return pipeline.run(params, Progress(lambda state: False, pipeline.plan(params)))

    peak_reset(device)
    times = timed(call, device, repeats)
    row.update(latency_s=statistics.median(times), peak_bytes=peak_bytes(device))
    return row


def run_transformer(kind: str, args, device: torch.device, out=print) -> list[dict]:
    """FLUX.1-schnell or SD 3.5 large unquantized and in each `quantize:` setting: latency and peak memory,
    as ratios to the unquantized run."""
    w = (TRANSFORMER_TINY if args.tiny else TRANSFORMER_FULL)[kind]
    repeats = args.repeats or (2 if args.tiny else 5)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    out(f"{kind}: {w['model']} {w['width']}x{w['height']}, {w['steps']} steps, guidance {w['guidance_scale']}, "
        f"{w['max_sequence_length']} T5 tokens, {str(dtype).removeprefix('torch.')}, txt2img task, median of "
        f"{repeats}; ratios to unquantized")
    rows = []
    for setting in WEIGHTS:
        peak_reset(device)
        row = transformer_setting(kind, setting, args, device, dtype, w, repeats)
        peak_reset(device)  # the pipeline is gone with transformer_setting()'s frame
        rows.append(row)
        name = setting or "none"
        if "skipped" in row:
            out(f"  {name:5} skipped: {row['skipped']}")
            continue
        base = rows[0] if "latency_s" in rows[0] else None
        row["latency_ratio"] = row["latency_s"] / base["latency_s"] if base else None
        row["peak_ratio"] = (row["peak_bytes"] / base["peak_bytes"]
                             if base and row["peak_bytes"] and base["peak_bytes"] else None)
        ratios = (f"x{row['latency_ratio']:.2f}" if row["latency_ratio"] else "",
                  f"x{row['peak_ratio']:.2f}" if row["peak_ratio"] else "")
        out(f"  {name:5} {row['latency_s'] * 1000:9.1f} ms {ratios[0]:>6}  peak {_gib(row['peak_bytes'])} "
            f"{ratios[1]:>6}  ({row['quantized_layers']} Linear layers quantized; built {row['build_s']:.1f} s, "
            f"warm-up {row['warmup_s']:.1f} s{'' if row['compile'] else ', not compiled'})")
    return rows


# ---------------------------------------------------------------- editing: inpaint and upscale


def edit_inputs(width: int, height: int):
    """The image (noise: its content does not change a step's time) and a centred square mask of half the
    side (white: repaint)."""
    from PIL import Image, ImageDraw

    image = Image.effect_noise((width, height), 64).convert("RGB")
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width * 3 // 4 - 1, height * 3 // 4 - 1), fill=255)
    return image, mask


def plain_inpaint(pipe, w: dict, image, mask):
    """How the diffusers documentation inpaints: the pipeline called directly."""
    gen = torch.Generator("cpu").manual_seed(0)
    return pipe(prompt="a lighthouse", image=image, mask_image=mask, width=w["width"], height=w["height"],
                strength=w["strength"], num_inference_steps=w["steps"], guidance_scale=w["guidance_scale"],
                generator=gen).images


def fresco_inpaint(pipeline, w: dict, image, mask):
    """The `inpaint` task's parameters as the API resolves them (its defaults: `fill` original, `mask_blur`
    4, the whole canvas), run as a worker runs a job."""
    from workers.pipelines.base import input_image
    from workers.progress import Progress

    params = {"prompt": "a lighthouse", "negative_prompt": "", "width": w["width"], "height": w["height"],
              "steps": w["steps"], "seed": 0, "num_images": 1, "output_format": "png",
              "guidance_scale": w["guidance_scale"], "scheduler": "euler", "strength": w["strength"],
              "loras": [], "control": [], "image": input_image(image), "mask": input_image(mask, "mask.png"),
              "mask_blur": 4, "mask_padding": None, "invert_mask": False, "fill": "original", "expand": None}
    with torch.inference_mode():
        return pipeline.run(params, Progress(lambda state: False, pipeline.plan(params)))


def run_inpaint(args, device: torch.device, out=print) -> dict:
    """SDXL inpainting: plain diffusers against Fresco's `inpaint` task on the same (then tuned) modules."""
    from diffusers import StableDiffusionXLInpaintPipeline

    w = EDIT_TINY if args.tiny else EDIT_FULL
    repeats = args.repeats or (2 if args.tiny else 5)
    plain_dtype = torch.float16 if device.type == "cuda" else torch.float32
    image, mask = edit_inputs(w["width"], w["height"])
    t0 = time.perf_counter()
    pipe, _ = build("sdxl", args.tiny, device, plain_dtype, base_only=True)
    built_s = time.perf_counter() - t0
    plain_pipe = StableDiffusionXLInpaintPipeline.from_pipe(pipe)
    plain_pipe.set_progress_bar_config(disable=True)
    peak_reset(device)
    with torch.inference_mode():
        plain = timed(lambda: plain_inpaint(plain_pipe, w, image, mask), device, repeats)
    plain_peak = peak_bytes(device)
    pipeline, warm_s = tune("sdxl", pipe, None, args, w, device, task="inpaint")
    peak_reset(device)
    fresco = timed(lambda: fresco_inpaint(pipeline, w, image, mask), device, repeats)
    fresco_peak = peak_bytes(device)
    row = {"workload": "inpaint", "model": "sdxl", "size": f"{w['width']}x{w['height']}", "steps": w["steps"],
           "strength": w["strength"], "repeats": repeats, "build_s": built_s, "warmup_s": warm_s,
           "plain_s": statistics.median(plain), "fresco_s": statistics.median(fresco),
           "plain_peak_bytes": plain_peak, "fresco_peak_bytes": fresco_peak}
    row["speedup"] = row["plain_s"] / row["fresco_s"]
    out(f"inpaint SDXL {row['size']:>9} {w['steps']:>3} steps  plain {row['plain_s'] * 1000:9.1f} ms "
        f"{_gib(plain_peak)}  fresco {row['fresco_s'] * 1000:9.1f} ms {_gib(fresco_peak)}  x{row['speedup']:.2f}  "
        f"(built {built_s:.1f} s, warm-up {warm_s:.1f} s)")
    return row


def esrgan_state_dict(filters: int, blocks: int, growth: int, seed: int = 0, std: float = 0.02) -> dict:
    """A Real-ESRGAN x4 RRDBNet's state dict (its key layout, which spandrel detects: `conv_first`,
    `body.N.rdbK.convJ`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`), random weights
    small enough that float16 stays finite through 23 blocks (the time does not depend on them)."""
    g = torch.Generator().manual_seed(seed)

    def conv(name: str, out_c: int, in_c: int) -> None:
        state[f"{name}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=g) * std
        state[f"{name}.bias"] = torch.zeros(out_c)

    state: dict = {}
    conv("conv_first", filters, 3)
    for b in range(blocks):
        for k in (1, 2, 3):
            for j in range(1, 6):
                conv(f"body.{b}.rdb{k}.conv{j}", growth if j < 5 else filters, filters + (j - 1) * growth)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, filters, filters)
    conv("conv_last", 3, filters)
    return state


def bench_upscaler(args, device: torch.device, directory: Path):
    """The upscaler the section times, loaded by workers.upscalers as a worker loads a models file's:
    `--tiny`, the catalogue's tiny ESRGAN; else a Real-ESRGAN-sized RRDBNet written to `directory`."""
    from safetensors.torch import save_file

    from service.catalog import ModelSpec, tiny_catalog
    from workers.upscalers import load_upscaler

    if args.tiny:
        return load_upscaler(tiny_catalog().spec("tiny-esrgan"), device)
    path = directory / "bench-esrgan-x4.safetensors"
    save_file(esrgan_state_dict(ESRGAN_FULL["filters"], ESRGAN_FULL["blocks"], ESRGAN_FULL["growth"]), str(path))
    spec = ModelSpec(name="bench-esrgan", kind="upscaler", source=str(path), scale=ESRGAN_FULL["scale"])
    return load_upscaler(spec, device)


def run_upscale(args, device: torch.device, out=print) -> dict:
    """One input upscaled tile by tile (the API's default tile) against the whole image in one call."""
    import tempfile

    import numpy as np
    from PIL import Image

    w = EDIT_TINY if args.tiny else EDIT_FULL
    repeats = args.repeats or (2 if args.tiny else 5)
    size, tile = w["upscale_size"], w["tile"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        upscaler = bench_upscaler(args, device, Path(directory))
    built_s = time.perf_counter() - t0
    params = sum(p.numel() for p in upscaler.descriptor.model.parameters())
    image = Image.effect_noise((size, size), 64).convert("RGB")
    results, times, peaks = {}, {}, {}
    for name, t in (("whole", 0), ("tiled", tile)):
        peak_reset(device)

        def call(t=t, name=name):
            results[name] = upscaler.upscale(image, upscaler.scale, t)  # its read-back to the CPU syncs

        times[name] = timed(call, device, repeats)
        peaks[name] = peak_bytes(device)
    spans = upscaler._spans(size, tile)
    work = (sum(b - a for a, b in spans) / size) ** 2  # the tiles' pixels over the image's
    diff = int(np.abs(np.asarray(results["whole"], np.int16) - np.asarray(results["tiled"], np.int16)).max())
    mp = size * size / 1e6
    row = {"workload": "upscale", "architecture": upscaler.architecture, "parameters": params,
           "dtype": str(upscaler.dtype).removeprefix("torch."), "scale": upscaler.scale, "size": f"{size}x{size}",
           "output": f"{size * upscaler.scale}x{size * upscaler.scale}", "tile": tile, "tiles": len(spans) ** 2,
           "work": work, "repeats": repeats, "build_s": built_s,
           "whole_s": statistics.median(times["whole"]), "tiled_s": statistics.median(times["tiled"]),
           "whole_peak_bytes": peaks["whole"], "tiled_peak_bytes": peaks["tiled"], "max_diff": diff}
    row["whole_mp_s"], row["tiled_mp_s"] = mp / row["whole_s"], mp / row["tiled_s"]
    row["rate_ratio"] = row["whole_s"] / row["tiled_s"]
    row["peak_ratio"] = peaks["tiled"] / peaks["whole"] if peaks["whole"] else None
    peak_ratio = f"x{row['peak_ratio']:.2f}" if row["peak_ratio"] is not None else "n/a (CPU)"
    out(f"upscale {upscaler.architecture} x{upscaler.scale} ({params / 1e6:.1f} M parameters, {row['dtype']}) "
        f"{row['size']} -> {row['output']}: whole {row['whole_s'] * 1000:.1f} ms {row['whole_mp_s']:.2f} MP/s "
        f"{_gib(peaks['whole']).strip()}; tiled ({tile} px, {row['tiles']} tiles, {work:.2f}x the pixels) "
        f"{row['tiled_s'] * 1000:.1f} ms {row['tiled_mp_s']:.2f} MP/s {_gib(peaks['tiled']).strip()}; "
        f"tiled/whole rate x{row['rate_ratio']:.2f}, peak {peak_ratio}; largest pixel difference {diff} "
        f"(loaded in {built_s:.1f} s)")
    return row


def run_edit(args, device: torch.device, out=print) -> list[dict]:
    rows = []
    for run in (run_inpaint, run_upscale):
        peak_reset(device)
        rows.append(run(args, device, out))
        peak_reset(device)  # the models are gone with run()'s frame
    return rows


# ---------------------------------------------------------------- LoRA training


def training_examples(resolution: int, count: int = 4) -> list:
    """`count` captioned square images (solid shapes): the training set (its content does not change a
    step's time)."""
    from PIL import Image, ImageDraw

    colours = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (230, 200, 40)]
    out = []
    for i in range(count):
        image = Image.new("RGB", (resolution, resolution), (16, 16, 16))
        m = resolution // 5
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 == 0 else draw.rectangle)((m, m, resolution - m, resolution - m),
                                                          fill=colours[i % len(colours)])
        out.append((image, f"a shape, number {i}"))
    return out


def run_training(args, device: torch.device, out=print) -> dict:
    """SDXL LoRA training with Fresco's trainer: steps/s and peak device memory."""
    from workers.families import FAMILIES
    from workers.training import Hooks, TrainConfig, train
    from workers.training.trainer import optimizer_class

    w = TRAIN_TINY if args.tiny else TRAIN_FULL
    steps = max(2, args.train_steps or w["steps"])  # at least one timed step after the first
    warmup = min(TRAIN_WARMUP["tiny" if args.tiny else "full"], steps - 1)
    dtype = (getattr(torch, args.dtype) if args.dtype != "auto"
             else torch.float16 if device.type == "cuda" else torch.float32)

    class Clock(Hooks):
        def __init__(self):
            self.stages, self.steps, self.losses = {}, [], []

        def stage(self, name):
            self.stages[name] = time.perf_counter()

        def step(self, step, total, loss):
            self.steps.append(time.perf_counter())  # after the step's loss was read back: the device is done
            self.losses.append(loss)

    t0 = time.perf_counter()
    pipe, _ = build("sdxl", args.tiny, device, dtype, base_only=True)
    built_s = time.perf_counter() - t0
    config = TrainConfig(steps=steps, rank=w["rank"], resolution=w["resolution"], batch_size=w["batch_size"],
                         gradient_checkpointing=True, checkpoint_every=0)
    clock = Clock()
    peak_reset(device)
    start = time.perf_counter()
    train(pipe, FAMILIES["sdxl"], training_examples(w["resolution"]), config, hooks=clock)
    peak = peak_bytes(device)
    del pipe
    peak_reset(device)
    timed_steps = [b - a for a, b in zip(clock.steps[warmup:], clock.steps[warmup + 1:])]
    step_s = statistics.median(timed_steps)
    its = 1.0 / step_s
    mean_its = len(timed_steps) / (clock.steps[-1] - clock.steps[warmup])
    precision = "no" if device.type != "cuda" else (
        "bf16" if torch.cuda.is_bf16_supported() else "fp16")  # the trainer's "auto"
    row = {"workload": "train", "model": "sdxl", "size": f"{w['resolution']}x{w['resolution']}", "rank": w["rank"],
           "batch_size": w["batch_size"], "gradient_checkpointing": True, "dtype": str(dtype).removeprefix("torch."),
           "mixed_precision": precision, "optimizer": optimizer_class(device)[1], "steps": steps,
           "timed_steps": len(timed_steps), "build_s": built_s, "prepare_s": clock.stages["training"] - start,
           "step_s": step_s, "it_per_s": its, "mean_it_per_s": mean_its, "minutes_per_1000": 1000 / its / 60,
           "peak_bytes": peak, "losses": clock.losses, "anchor": TRAIN_ANCHOR,
           "anchor_it_per_s": list(TRAIN_ANCHOR_ITS)}
    out(f"train  SDXL LoRA {row['size']}, rank {w['rank']}, batch {w['batch_size']}, gradient checkpointing, "
        f"weights {row['dtype']}, mixed precision {precision}, {row['optimizer']}; {len(timed_steps)} steps timed "
        f"after {warmup}")
    out(f"       {its:.2f} it/s (median step {step_s * 1000:.0f} ms; mean {mean_its:.2f} it/s): 1,000 steps in "
        f"{row['minutes_per_1000']:.1f} min; peak {_gib(peak).strip()}{' (CPU)' if peak is None else ''}; "
        f"preparing {row['prepare_s']:.1f} s (built {built_s:.1f} s)")
    versus = "" if args.tiny else f"  -> x{its / TRAIN_ANCHOR_ITS[1]:.2f} to x{its / TRAIN_ANCHOR_ITS[0]:.2f}"
    out(f"       anchor: {TRAIN_ANCHOR}{versus}")
    return row


MODELS_YAML = """\
# Written by bench/gpu.py --save-turbo: random Turbo weights (full size; tiny with --tiny), the tuned path.
models:
  bench-turbo:
    kind: turbo
    source: ./turbo
    dtype: {dtype}
    channels_last: true
    fuse_qkv: true
    compile: {compile}
    compile_backend: {backend}
    buckets: [[512, 512]]
"""


def save_turbo(directory: Path, args, device: torch.device) -> Path:
    """A Turbo pipeline with random weights saved as a diffusers directory, and a models file serving it
    on the tuned path: `bench/overhead.py --models-file DIR/models.yaml` then measures Turbo end to end
    (HTTP, Redis, worker, PNG, storage) on a GPU host."""
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else torch.float16
    pipe, _ = build("turbo", args.tiny, device, dtype)
    pipe.save_pretrained(directory / "turbo")
    path = directory / "models.yaml"
    path.write_text(MODELS_YAML.format(dtype=args.dtype, compile=str(not args.no_compile).lower(),
                                       backend=args.compile_backend))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny profile's models at tiny sizes (CPU tests)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                        help="default: all but train; train too when the device is CUDA")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per path (default: per workload)")
    parser.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "float16", "bfloat16"],
                        help="the tuned path's dtype (plain diffusers runs float16 on a GPU, float32 on a CPU)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default=None, help='e.g. "max-autotune-no-cudagraphs"')
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    parser.add_argument("--train-steps", type=int, default=0,
                        help=f"train: steps of the run (default {TRAIN_FULL['steps']}; --tiny {TRAIN_TINY['steps']}), "
                             f"the first {TRAIN_WARMUP['full']} ({TRAIN_WARMUP['tiny']}) not timed")
    parser.add_argument("--out", default=None, help="write the rows as JSON here too")
    parser.add_argument("--save-turbo", default=None, metavar="DIR",
                        help="instead: save a random Turbo pipeline and a models file for bench/overhead.py there")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # not "modules that should be kept in float32: []" per cast
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.only is None:
        args.only = [s for s in SECTIONS if s != "train" or device.type == "cuda"]
    if args.tiny and args.dtype == "bfloat16" and device.type == "cpu":
        args.dtype = "float32"  # the tiny CPU run checks the path, not bfloat16 CPU kernels
    if args.save_turbo:
        print(f"models file for bench/overhead.py: {save_turbo(Path(args.save_turbo), args, device)}")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, {'tiny' if args.tiny else 'full-size'} models, "
          f"tuned path: {args.dtype}, channels_last, fused QKV, "
          f"{'no compile' if args.no_compile else f'regional compile ({args.compile_backend})'}")
    try:
        rows = []
        for kind in args.only:
            if kind == "memory":
                rows += run_memory_modes(args, device)
            elif kind == "edit":
                rows += run_edit(args, device)
            elif kind in TRANSFORMER_FULL:
                rows += run_transformer(kind, args, device)
            elif kind == "train":
                rows.append(run_training(args, device))
            else:
                rows.append(run_workload(kind, args, device))
    finally:
        torch.compiler.set_stance("default")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
