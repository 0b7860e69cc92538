"""LoRA training (CPU, tiny SD and SDXL): Fresco's trainer (workers/training) against a bare diffusers +
peft loop, side by side in one process; its memory over a long run; resuming; and whether the LoRA learns.

Both sides train the same LoRA on the same pipeline (a fresh copy of the tiny model each round) and data:
PEFT LoRA of rank `--rank` (alpha = rank, Gaussian init) on the UNet's to_k, to_q, to_v, to_out.0,
`--resolution`² (default: the family's own, 512 for SD and 1024 for SDXL), batch 1, torch's AdamW
(lr 1e-3, betas 0.9/0.999, weight decay 1e-2, eps 1e-8), gradient clipping at 1.0, gradient
checkpointing on (the trainer's default; `--no-gradient-checkpointing` turns it off on both sides), no
caption dropout, no checkpoints during the timed rounds.

- **bare**: what diffusers' examples/text_to_image/train_text_to_image_lora(_sdxl).py does per step,
  minus its data loading: the images VAE-encoded once and the captions encoded once before the loop
  (`pipe.encode_prompt`), then per step a random example, `randn` noise, a random timestep, DDPM's
  `add_noise`, the UNet, the MSE against the noise, `backward`, `clip_grad_norm_`, AdamW's step,
  `zero_grad`, `loss.item()`; plain torch (no accelerate).
- **fresco**: `workers.training.train(pipe, family, examples, config, hooks)`, as the worker calls it
  (accelerate's Accelerator, the bucketed DataLoader, the seeded draws, the step hook).

Parts, per family (the memory run first, so that it starts from a process holding the pipeline alone):

1. **Time per step**: `--rounds` rounds (after one uncounted warm-up round; none with `--quick`), each
   one run of each side of `--round-steps` steps, alternated (fresco, bare, fresco, bare, ...). A side's
   step time is the time between consecutive steps (fresco: its step hook; bare: after `loss.item()`),
   the first `WARMUP_STEPS` of each run not counted, in wall time and in the process's CPU time (which
   other processes on the machine disturb less). Per side: the median step over all rounds and the mean;
   the ratio fresco/bare is the median of the rounds' ratios of their median steps (target <= 1.10).
   The preparing stage (fresco: `train()` until its "training" stage; bare: LoRA, latents, encodings,
   optimizer) and fresco's saving stage are timed apart and not in the step times.
2. **Memory**: one trainer run of `--steps` steps (default 500) as a job runs (checkpoint every 100
   steps, the bytes handed to a hook that drops them); the process RSS at every `--steps`/10 steps, its
   growth from step `--steps`/10 (50) to the last, and the peak RSS over the run (VmHWM, reset before it).
3. **Resume**: `--resume-steps` steps (checkpoint at half), uninterrupted against stopped after the
   checkpoint and resumed from it, same seed and caption dropout on: both loss curves, every 10th step,
   and the largest difference of the final LoRA files' tensors.
4. **It learns**: on part 2's trained pipeline against the base model, the denoising loss on the training
   images with their captions (fixed noise, fixed timesteps: lower is a better fit), and a fixed-seed
   image's mean absolute pixel difference with and without the LoRA.

    .venv/bin/python -m bench.train [--family sd|sdxl|both] [--steps 500] [--rounds 8] [--round-steps 20]
                                    [--resolution N] [--threads 1] [--json out.json]
    .venv/bin/python -m bench.train --quick     # seconds: 64², few steps (the tests' run)

torch runs on `--threads` threads (default 1): on this shared 2-core VM, two OpenMP threads stall whenever
another process takes a core, which moves step times by whole seconds; one thread keeps the comparison
steady. Both sides always run on the same number of threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import peak_rss, reset_peak_rss, rss_bytes  # noqa: E402  (first: tunes malloc as a worker process does)

import torch  # noqa: E402

TARGET_RATIO = 1.10  # fresco / bare, time per step
TARGET_GROWTH = 0.05  # RSS growth over the memory run (flat)
WARMUP_STEPS = 2  # of each run, not counted
RESOLUTION = {"sd": 512, "sdxl": 1024}
QUICK_RESOLUTION = 64
LEARNING_RATE = 1e-3
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]  # diffusers' LoRA scripts, Fresco's trainer alike
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-2
# The training set: solid shapes on a dark ground, each with its caption.
SHAPES = [((220, 40, 40), "circle", "a red circle"), ((40, 60, 220), "square", "a blue square"),
          ((40, 200, 60), "circle", "a green circle"), ((230, 200, 40), "square", "a yellow square")]
PARTS = ("time", "memory", "resume")
DENOISE_TIMESTEPS = (100, 250, 400, 550, 700, 850)


def shape_examples(resolution: int) -> list:
    from PIL import Image, ImageDraw

    out = []
    for colour, kind, caption in SHAPES:
        image = Image.new("RGB", (resolution, resolution), (16, 16, 16))
        margin = resolution // 5
        box = (margin, margin, resolution - margin, resolution - margin)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=colour)
        out.append((image, caption))
    return out


def base_pipeline(family: str):
    from workers.families.sd import tiny_sd
    from workers.families.sdxl import tiny_base

    pipe = tiny_sd() if family == "sd" else tiny_base()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_config(resolution: int, steps: int, rank: int, gradient_checkpointing: bool, **changes):
    from workers.training import TrainConfig

    fields = dict(method="lora", steps=steps, learning_rate=LEARNING_RATE, rank=rank, resolution=resolution,
                  batch_size=1, caption_dropout=0.0, checkpoint_every=0, seed=0, mixed_precision="no",
                  gradient_checkpointing=gradient_checkpointing)
    return TrainConfig(**{**fields, **changes})


def rss() -> int:
    return rss_bytes(os.getpid())


# ---------------------------------------------------------------- the two sides


def clock_hooks(every: int = 0, on_sample=None, stop_at: int | None = None, keep_checkpoints: bool = True):
    """Hooks that note when each stage begins and each step ends (and, every `every` steps, call
    `on_sample(step)`); `stop_at`: raise Stop after that step (a cancelled run); checkpoints kept, or
    only their sizes noted."""
    from workers.training import Hooks

    class Clock(Hooks):
        def __init__(self):
            self.stages: dict[str, float] = {}
            self.cpu_stages: dict[str, float] = {}
            self.cpu: list[float] = []
            self.steps: list[float] = []
            self.losses: list[float] = []
            self.checkpoints: dict[int, bytes] = {}
            self.checkpoint_sizes: dict[int, int] = {}

        def stage(self, name):
            self.stages[name] = time.perf_counter()
            self.cpu_stages[name] = time.process_time()

        def step(self, step, total, loss):
            self.steps.append(time.perf_counter())
            self.cpu.append(time.process_time())
            self.losses.append(loss)
            if every and on_sample is not None and (step % every == 0 or step == total):
                on_sample(step)
            if stop_at is not None and step == stop_at:
                raise Stop(step)

        def checkpoint(self, step, data):
            self.checkpoint_sizes[step] = len(data)
            if keep_checkpoints:
                self.checkpoints[step] = data

    return Clock()


class Stop(Exception):
    pass


def fresco_run(base, family: str, examples, config) -> dict:
    """One `train()` run on a fresh copy of `base`: its step times and stage times."""
    from workers.families import FAMILIES
    from workers.training import train

    pipe = copy.deepcopy(base)
    clock = clock_hooks()
    t0 = time.perf_counter()
    result = train(pipe, FAMILIES[family], examples, config, hooks=clock)
    end = time.perf_counter()
    start = clock.stages["training"]
    marks, cpu = [start] + clock.steps, [clock.cpu_stages["training"]] + clock.cpu
    return {"prepare_s": start - t0, "save_s": end - clock.stages["saving"],
            "step_s": [b - a for a, b in zip(marks, marks[1:])], "cpu_s": [b - a for a, b in zip(cpu, cpu[1:])],
            "losses": result.losses}


class Bare:
    """diffusers' train_text_to_image_lora(_sdxl).py, its data loading done once before the loop."""

    def __init__(self, base, xl: bool, examples, config):
        import numpy as np
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        self.pipe = pipe = copy.deepcopy(base)
        self.xl = xl
        unet = pipe.unet
        for module in (unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if module is not None:
                module.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                    target_modules=TARGET_MODULES))
        self.params = [p for p in unet.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, betas=(0.9, 0.999),
                                           weight_decay=WEIGHT_DECAY, eps=1e-8)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.timesteps = self.scheduler.config.num_train_timesteps
        captions = [caption for _, caption in examples]
        with torch.no_grad():
            pixels = torch.stack([torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
                                  .permute(2, 0, 1) / 127.5 - 1.0 for image, _ in examples])
            self.latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            if xl:
                self.hidden, _, self.pooled, _ = pipe.encode_prompt(captions, device="cpu", num_images_per_prompt=1,
                                                                    do_classifier_free_guidance=False)
                size = float(config.resolution)
                self.time_ids = torch.tensor([[size, size, 0.0, 0.0, size, size]]).repeat(len(examples), 1)
            else:
                self.hidden, _ = pipe.encode_prompt(captions, device="cpu", num_images_per_prompt=1,
                                                    do_classifier_free_guidance=False)
        self.batch = config.batch_size
        self.generator = torch.Generator().manual_seed(config.seed)
        unet.train()

    def step(self) -> float:
        unet, g = self.pipe.unet, self.generator
        rows = torch.randint(0, len(self.latents), (self.batch,), generator=g)
        latents = self.latents[rows]
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, self.timesteps, (self.batch,), generator=g).long()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        extra = {}
        if self.xl:
            extra["added_cond_kwargs"] = {"text_embeds": self.pooled[rows], "time_ids": self.time_ids[rows]}
        pred = unet(noisy, timesteps, self.hidden[rows], return_dict=False, **extra)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def bare_run(base, family: str, examples, config) -> dict:
    t0 = time.perf_counter()
    bare = Bare(base, family == "sdxl", examples, config)
    start = time.perf_counter()
    marks, cpu, losses = [start], [time.process_time()], []
    for _ in range(config.steps):
        losses.append(bare.step())
        marks.append(time.perf_counter())
        cpu.append(time.process_time())
    return {"prepare_s": start - t0, "save_s": None, "step_s": [b - a for a, b in zip(marks, marks[1:])],
            "cpu_s": [b - a for a, b in zip(cpu, cpu[1:])], "losses": losses}


# ---------------------------------------------------------------- the parts


SIDES = {"fresco": ("Fresco trainer", fresco_run), "bare": ("bare diffusers + peft", bare_run)}


def compare(base, family: str, examples, args, out) -> dict:
    """Part 1: fresco and bare, round by round."""
    names = ["fresco", "bare"]
    config = bench_config(args.resolution, args.round_steps, args.rank, args.gradient_checkpointing)
    if not args.quick:  # an uncounted round first: first-call costs (lazy imports, the allocator's first blocks)
        warm = bench_config(args.resolution, WARMUP_STEPS + 1, args.rank, args.gradient_checkpointing)
        for name in names:
            SIDES[name][1](base, family, examples, warm)
    sides = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            sides[name].append(SIDES[name][1](base, family, examples, config))
    figures = {}
    for side, runs in sides.items():
        steps = [s for run in runs for s in run["step_s"][WARMUP_STEPS:]]
        cpu = [s for run in runs for s in run["cpu_s"][WARMUP_STEPS:]]
        figures[side] = {
            "step_p50_s": statistics.median(steps), "step_mean_s": statistics.fmean(steps),
            "cpu_p50_s": statistics.median(cpu), "cpu_mean_s": statistics.fmean(cpu),
            "round_p50_s": [statistics.median(run["step_s"][WARMUP_STEPS:]) for run in runs],
            "round_cpu_p50_s": [statistics.median(run["cpu_s"][WARMUP_STEPS:]) for run in runs],
            "prepare_s": statistics.median(run["prepare_s"] for run in runs),
            "save_s": None if side == "bare" else statistics.median(run["save_s"] for run in runs),
            "first_loss": statistics.fmean(run["losses"][0] for run in runs),
            "last_loss": statistics.fmean(run["losses"][-1] for run in runs),
        }
    bare = figures["bare"]
    for side in names:
        if side == "bare":
            continue
        f = figures[side]
        ratios = [a / b for a, b in zip(f["round_p50_s"], bare["round_p50_s"])]
        cpu_ratios = [a / b for a, b in zip(f["round_cpu_p50_s"], bare["round_cpu_p50_s"])]
        f.update(ratio=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)],
                 ratio_of_p50s=f["step_p50_s"] / bare["step_p50_s"],
                 ratio_of_means=f["step_mean_s"] / bare["step_mean_s"],
                 cpu_ratio=statistics.median(cpu_ratios), cpu_ratio_range=[min(cpu_ratios), max(cpu_ratios)])
    fresco = figures["fresco"]
    for key in ("ratio", "ratio_range", "ratio_of_p50s", "ratio_of_means", "cpu_ratio", "cpu_ratio_range"):
        figures[key] = fresco[key]
    figures["target"] = TARGET_RATIO
    figures["met"] = figures["ratio"] <= TARGET_RATIO

    out(f"time per step: {args.rounds} rounds x {args.round_steps} steps a side, alternated "
        f"(first {WARMUP_STEPS} of each run not counted); wall time, and the process's CPU time")
    out(f"  {'':24} {'wall p50':>9} {'mean':>9} {'CPU p50':>9} {'mean':>9}   {'preparing':>9} {'saving':>7}")
    for side in ["bare"] + [n for n in names if n != "bare"]:
        f = figures[side]
        save = "-" if f["save_s"] is None else f"{f['save_s']:.2f} s"
        out(f"  {SIDES[side][0]:24} {f['step_p50_s'] * 1000:6.1f} ms {f['step_mean_s'] * 1000:6.1f} ms "
            f"{f['cpu_p50_s'] * 1000:6.1f} ms {f['cpu_mean_s'] * 1000:6.1f} ms   {f['prepare_s']:7.2f} s {save:>7}")
    for side in names:
        if side == "bare":
            continue
        f = figures[side]
        (lo, hi), (clo, chi) = f["ratio_range"], f["cpu_ratio_range"]
        target = (f"  target <= {TARGET_RATIO:.2f}: {'met' if figures['met'] else 'NOT met'}" if side == "fresco"
                  else "  (a diagnosis, not the trainer)")
        out(f"  ratio {side}/bare per step  x{f['ratio']:.3f} wall (median of {args.rounds} rounds' ratios, "
            f"range x{lo:.3f}-x{hi:.3f}; of the pooled p50s x{f['ratio_of_p50s']:.3f}, of the means "
            f"x{f['ratio_of_means']:.3f}){target}")
        out(f"  {'':{len(side) + 22}}x{f['cpu_ratio']:.3f} CPU time (median of the rounds' ratios, "
            f"range x{clo:.3f}-x{chi:.3f})")
    out(f"  loss, first -> last step of a run (mean over rounds): fresco {fresco['first_loss']:.4f} -> "
        f"{fresco['last_loss']:.4f}, bare {bare['first_loss']:.4f} -> {bare['last_loss']:.4f}")
    return figures


def memory(base, family: str, examples, args, out) -> tuple[dict, object]:
    """Part 2: one long trainer run as a job does it; its RSS. Returns (figures, the trained pipeline)."""
    from workers.families import FAMILIES
    from workers.training import train

    steps = args.steps
    every = max(1, steps // 10)
    config = bench_config(args.resolution, steps, args.rank, args.gradient_checkpointing,
                          checkpoint_every=100 if steps > 100 else max(1, steps // 2))
    samples: dict[int, int] = {}
    clock = clock_hooks(every, lambda step: samples.__setitem__(step, rss()), keep_checkpoints=False)
    pipe = copy.deepcopy(base)
    before = rss()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    result = train(pipe, FAMILIES[family], examples, config, hooks=clock)
    wall = time.perf_counter() - t0
    peak = peak_rss() if reset else max(samples.values())
    first, last = samples[every], samples[steps]
    # A checkpoint is written between its step's hook and the next step: that step's interval holds it.
    intervals = [b - a for a, b in zip(clock.steps, clock.steps[1:])]  # [i]: step i+2's
    usual = statistics.median(intervals)
    saves = [intervals[k - 1] - usual for k in clock.checkpoint_sizes if 0 < k <= len(intervals)]
    figures = {"steps": steps, "checkpoint_every": config.checkpoint_every, "rss_before": before,
               "rss": {str(k): v for k, v in sorted(samples.items())}, "rss_from_step": every,
               "rss_first": first, "rss_last": last, "growth": (last - first) / first, "peak_rss": peak,
               "peak_is_hwm": reset, "wall_s": wall, "losses": result.losses, "target_growth": TARGET_GROWTH,
               "step_p50_s": usual, "checkpoints": len(clock.checkpoint_sizes),
               "checkpoint_bytes": max(clock.checkpoint_sizes.values(), default=0),
               "checkpoint_s": statistics.median(saves) if saves else None}
    figures["met"] = figures["growth"] < TARGET_GROWTH
    mib = 2 ** 20
    out(f"memory: one trainer run of {steps} steps (checkpoint every {config.checkpoint_every}), "
        f"{wall:.1f} s; process RSS before it {before / mib:.1f} MiB")
    out(f"  RSS at step {every} {first / mib:.1f} MiB -> step {steps} {last / mib:.1f} MiB: "
        f"{figures['growth'] * 100:+.2f}%  target < {TARGET_GROWTH * 100:.0f}%: "
        f"{'met' if figures['met'] else 'NOT met'}; "
        f"peak over the run {peak / mib:.1f} MiB ({(peak - before) / mib:+.1f} MiB over the RSS before it"
        f"{'' if reset else '; the highest sample: VmHWM not resettable'})")
    out("  RSS every " + f"{every} steps (MiB): " + " ".join(f"{v / mib:.1f}" for _, v in sorted(samples.items())))
    if saves:
        out(f"  {len(clock.checkpoint_sizes)} checkpoints of {figures['checkpoint_bytes'] / 1e6:.2f} MB, each adding "
            f"{figures['checkpoint_s'] * 1000:.0f} ms to its step (median; the step p50 {usual * 1000:.1f} ms)")
    return figures, pipe


def resume(base, family: str, examples, args, out) -> dict:
    """Part 3: uninterrupted against stopped at the checkpoint and resumed, same seed."""
    from safetensors.torch import load

    from workers.families import FAMILIES
    from workers.training import train

    steps = args.resume_steps
    at = steps // 2
    config = bench_config(args.resolution, steps, args.rank, args.gradient_checkpointing, checkpoint_every=at,
                          caption_dropout=0.05, seed=args.seed)
    whole = train(copy.deepcopy(base), FAMILIES[family], examples, config)
    stopped = clock_hooks(stop_at=at + 1)
    try:
        train(copy.deepcopy(base), FAMILIES[family], examples, config, hooks=stopped)
    except Stop:
        pass
    resumed = train(copy.deepcopy(base), FAMILIES[family], examples, config, resume=stopped.checkpoints[at])
    joined = stopped.losses[:at] + resumed.losses  # the interrupted job's curve: its first run's, then the resumed
    a, b = load(whole.lora), load(resumed.lora)
    assert set(a) == set(b), "the two LoRA files hold different tensors"
    tensor_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    loss_diff = max(abs(x - y) for x, y in zip(whole.losses[at:], resumed.losses))
    figures = {"steps": steps, "checkpoint": at, "resumed_from": resumed.resumed_from, "seed": args.seed,
               "uninterrupted": whole.losses, "resumed": resumed.losses, "loss_max_abs_diff": loss_diff,
               "tensors": len(a), "adapter_max_abs_diff": tensor_diff}
    every = 10 if steps >= 20 else 1
    out(f"resume: {steps} steps, seed {args.seed}, caption dropout 0.05; checkpoint at step {at}, a second run "
        f"stopped at step {at + 1} and resumed from it")
    out(f"  {'step':>6} {'uninterrupted':>14} {'stopped+resumed':>16}")
    for step in range(every, steps + 1, every):
        mark = "" if step <= at else "  (resumed)"
        out(f"  {step:6d} {whole.losses[step - 1]:14.6f} {joined[step - 1]:16.6f}{mark}")
    out(f"  after the checkpoint: losses max |diff| {loss_diff:.3g}; final LoRA files: {len(a)} tensors, "
        f"max |diff| {tensor_diff:.3g}")
    return figures


@torch.no_grad()
def denoise_loss(pipe, examples, xl: bool, resolution: int) -> float:
    """The pipeline's mean noise-prediction error on `examples` (their captions, its own prompt encoding
    and VAE) at fixed timesteps with fixed noise: lower is a better fit."""
    import numpy as np
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    for image, caption in examples:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
        latents = pipe.vae.encode(pixels / 127.5 - 1.0).latent_dist.mean * pipe.vae.config.scaling_factor
        extra = {}
        if xl:
            embeds, _, pooled, _ = pipe.encode_prompt(caption, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            size = float(resolution)
            extra["added_cond_kwargs"] = {"text_embeds": pooled,
                                          "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]])}
        else:
            embeds, _ = pipe.encode_prompt(caption, device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
        for t in DENOISE_TIMESTEPS:
            noise = torch.randn(latents.shape, generator=generator)
            step = torch.tensor([t])
            pred = pipe.unet(scheduler.add_noise(latents, noise, step), step, encoder_hidden_states=embeds,
                             **extra).sample
            total += torch.nn.functional.mse_loss(pred, noise).item()
            count += 1
    return total / count


def fixed_image(pipe, prompt: str, resolution: int):
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=4, height=resolution, width=resolution, output_type="np",
                    generator=torch.Generator().manual_seed(7)).images[0]


def learns(base, trained, family: str, examples, steps: int, args, out) -> dict:
    """Part 4: the trained pipeline (part 2's) against the base model."""
    import numpy as np

    xl = family == "sdxl"
    before = denoise_loss(base, examples, xl, args.resolution)
    after = denoise_loss(trained, examples, xl, args.resolution)
    prompt = examples[0][1]
    without, with_lora = fixed_image(base, prompt, args.resolution), fixed_image(trained, prompt, args.resolution)
    diff = float(np.abs(with_lora - without).mean())
    figures = {"steps": steps, "denoise_loss_before": before, "denoise_loss_after": after,
               "denoise_change": (after - before) / before, "image_mean_abs_diff": diff,
               "falls": after < before, "changes_image": diff > 0}
    out(f"it learns ({steps} steps, lr {LEARNING_RATE:g}): denoising loss on the training images (fixed noise, "
        f"timesteps {', '.join(map(str, DENOISE_TIMESTEPS))}) {before:.5f} -> {after:.5f} "
        f"({figures['denoise_change'] * 100:+.3f}%){'' if figures['falls'] else '  DID NOT FALL'}")
    out(f"  fixed-seed image of {prompt!r}, with vs without the LoRA: mean |pixel diff| {diff:.4f} "
        f"(of 1; {diff * 255:.2f} of 255)")
    return figures


def run(family: str, args, out=print) -> dict:
    examples = shape_examples(args.resolution)
    base = base_pipeline(family)
    gc_mode = "on" if args.gradient_checkpointing else "off"
    out(f"== tiny {family.upper()}, {args.resolution}x{args.resolution}, {len(examples)} images, LoRA r{args.rank}/"
        f"alpha {args.rank} on {','.join(TARGET_MODULES)}, batch 1, AdamW lr {LEARNING_RATE:g}, gradient "
        f"checkpointing {gc_mode}, float32, torch {torch.get_num_threads()} thread(s)")
    figures = {"family": family, "resolution": args.resolution, "rank": args.rank,
               "gradient_checkpointing": args.gradient_checkpointing, "threads": torch.get_num_threads()}
    if "memory" in args.parts:  # first: the process holds the pipeline and no more, as a worker starting a job
        figures["memory"], trained = memory(base, family, examples, args, out)
        figures["learns"] = learns(base, trained, family, examples, args.steps, args, out)
        del trained
    if "time" in args.parts:
        figures["compare"] = compare(base, family, examples, args, out)
    if "resume" in args.parts:
        figures["resume"] = resume(base, family, examples, args, out)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--family", choices=["sd", "sdxl", "both"], default="both")
    parser.add_argument("--steps", type=int, default=None, help="steps of the memory run (default 500; quick 10)")
    parser.add_argument("--rounds", type=int, default=None, help="counted rounds a side (default 8; quick 1)")
    parser.add_argument("--round-steps", type=int, default=None, help="steps of each timed run (default 20; quick 4)")
    parser.add_argument("--resume-steps", type=int, default=None,
                        help="steps of the resume check (default 60; quick 4)")
    parser.add_argument("--resolution", type=int, default=None,
                        help=f"training side (default: sd {RESOLUTION['sd']}, sdxl {RESOLUTION['sdxl']}; quick "
                             f"{QUICK_RESOLUTION})")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="the resume check's seed")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="time: per step, side by side; memory: the long run's RSS, then whether it learnt; "
                             "resume: the resumed run against the uninterrupted one")
    parser.add_argument("--quick", action="store_true", help="64², a few steps of each part (seconds; the tests)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every figure as JSON here too")
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (10 if quick else 500)
    args.rounds = args.rounds or (1 if quick else 8)
    args.round_steps = args.round_steps or (4 if quick else 20)
    args.resume_steps = args.resume_steps or (4 if quick else 60)
    if args.round_steps <= WARMUP_STEPS:
        parser.error(f"--round-steps: more than the {WARMUP_STEPS} uncounted steps of each run")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = _report(args, quick)
    finally:
        torch.set_num_threads(threads)  # as it was (the tests run this in their own process)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _report(args, quick: bool) -> list[dict]:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    families = ["sd", "sdxl"] if args.family == "both" else [args.family]
    resolution = args.resolution
    print(f"Fresco's LoRA trainer against a bare diffusers + peft loop (torch {torch.__version__}, CPU, "
          f"{torch.get_num_threads()} thread(s))", flush=True)
    print("reproduce: " + shlex.join([".venv/bin/python", "-m", "bench.train", "--family", args.family, "--steps",
                                      str(args.steps), "--rounds", str(args.rounds), "--round-steps",
                                      str(args.round_steps), "--resume-steps", str(args.resume_steps), "--rank",
                                      str(args.rank), "--threads", str(args.threads)]
                                     + (["--resolution", str(resolution)] if resolution else [])
                                     + ([] if args.gradient_checkpointing else ["--no-gradient-checkpointing"])
                                     + (["--quick"] if quick else [])
                                     + (["--parts", *args.parts] if list(args.parts) != list(PARTS) else [])),
          flush=True)
    report = []
    for family in families:
        args.resolution = resolution or (QUICK_RESOLUTION if quick else RESOLUTION[family])
        report.append(run(family, args, out=lambda line: print(line, flush=True)))
    print("summary:")
    for r in report:
        parts = []
        if "compare" in r:
            c = r["compare"]
            parts.append(f"per step x{c['ratio']:.3f} of the bare loop (target <= {TARGET_RATIO:.2f}: "
                         f"{'met' if c['met'] else 'NOT met'})")
        if "memory" in r:
            m, lr = r["memory"], r["learns"]
            parts.append(f"RSS {m['growth'] * 100:+.2f}% from step {m['rss_from_step']} to {m['steps']}, peak "
                         f"{m['peak_rss'] / 2**20:.0f} MiB")
            parts.append(f"denoising loss {lr['denoise_change'] * 100:+.3f}%, image changed by "
                         f"{lr['image_mean_abs_diff']:.4f}")
        if "resume" in r:
            parts.append(f"resumed LoRA max |diff| {r['resume']['adapter_max_abs_diff']:.3g}")
        print(f"  tiny {r['family']:4} {r['resolution']}²: " + "; ".join(parts))
    return report


if __name__ == "__main__":
    sys.exit(main())
