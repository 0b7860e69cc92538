"""Editing on this CPU, side by side in one run: inpainting against img2img, `mask_padding` against the
whole canvas, and upscaling tile by tile against the whole image at once (tiny profile).

Everything runs the task pipelines in this process as a worker runs them (`Inpaint` and `Img2Img` on one
`load_model` of tiny SD; `Upscale` on the tiny ESRGAN, a x2 RRDBNet spandrel loads), rounds alternating
between the variants (one uncounted round first, then the order rotating) so the machine's noise hits
each alike; medians and ratios. torch runs on `--threads` threads (default 1: on this shared 2-core VM a
second OpenMP thread stalls whenever another process takes a core, and the times move by whole seconds).

1. **inpaint / img2img**: the same `--size`² image, steps and strength 1.0 (inpaint's default; img2img at
   strength 1.0 too), a centred square mask of half the side. Inpainting adds the mask's preparation (the
   fill, the blur), the per-step latent blend and the composite (and, before `unread_masked_image` in
   workers/pipelines/inpaint.py, a second VAE encode of the masked image): goal <= 1.25.
2. **mask_padding / whole canvas**: a `--large`² image with a `--small`² mask near a corner, inpainted with
   `mask_padding` 32 (the crop is worked at the model's native size, 512² for SD: A1111's "only masked")
   against the whole canvas at its own size: goal < 1 (faster) when `--large` is above the native size;
   at or below it the crop is worked larger than the canvas would be, and is slower.
3. **upscale, tiled / whole**: megapixels of input per second through the `upscale` task, a `--up-size`²
   image with tiles of `--tile` px against `tile` 0 (the whole image in one call), the work the tiles'
   overlaps add (the tiles' pixels over the image's), and the largest pixel difference between the two.
4. **peak RSS, tiled / whole** on a `--rss-size`² input (default 2048², output 4096²) with `--rss-tile` px
   tiles (default 512, the API's): each variant in a fresh Python process, its peak RSS during the job
   (VmHWM, reset just before it through /proc/self/clear_refs) less its RSS before. Goal: the tiled job
   holds a tile's activations plus the canvas, well under the whole image's.

    .venv/bin/python bench/edit.py [--size 256] [--steps 4] [--rounds 5] [--large 1024] [--small 64]
        [--up-size 512] [--tile 128] [--rss-size 2048] [--rss-tile 512] [--threads 1] [--skip rss] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.common  # noqa: E402,F401  (first: tunes malloc as a worker process does)

GOAL_INPAINT = 1.25
MASK_PADDING = 32
UPSCALER = "tiny-esrgan"
SECTIONS = ("inpaint", "upscale", "rss")


def _params(task: str, size: int, steps: int, seed: int = 7, **extra) -> dict:
    from PIL import Image

    from workers.pipelines.base import input_image

    image = Image.effect_noise((size, size), 64).convert("RGB")
    common = {"prompt": "a red fox", "negative_prompt": "", "seed": seed, "num_images": 1, "steps": steps,
              "guidance_scale": 7.5, "scheduler": "euler", "width": size, "height": size, "output_format": "png",
              "loras": [], "control": [], "image": input_image(image)}
    if task == "img2img":
        return {**common, "strength": 1.0, **extra}
    return {**common, "strength": 1.0, "mask_blur": 4, "mask_padding": None, "invert_mask": False,
            "fill": "original", "expand": None, **extra}


def _square_mask(size: int, box: tuple[int, int, int, int]):
    from PIL import Image, ImageDraw

    from workers.pipelines.base import input_image

    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)  # inclusive box
    return input_image(mask, "mask.png")


def _timed(pipeline, params) -> float:
    import torch

    from workers.progress import Progress

    started = time.perf_counter()
    with torch.inference_mode():
        pipeline.run(params, Progress(lambda state: False, pipeline.plan(params)))
    return time.perf_counter() - started


def _alternate(variants: dict, rounds: int) -> dict[str, float]:
    """Median seconds per variant over `rounds` rounds (after one uncounted), the order rotating."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        for n in names[r % len(names):] + names[:r % len(names)]:
            seconds = variants[n]()
            if r:
                times[n].append(seconds)
    return {n: statistics.median(t) for n, t in times.items()}


def _worked_size(params: dict, native: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """The canvas box an inpaint job works on and the size it works at (workers/pipelines/inpaint.py's)."""
    from workers.pipelines.base import pixels
    from workers.pipelines.inpaint import blurred, canvas_and_mask, context

    canvas, mask, known = canvas_and_mask(pixels(params["image"]), pixels(params["mask"]), False, None)
    return context(blurred(mask, params["mask_blur"], known), params["mask_padding"], native)


def inpaint_figures(size: int, steps: int, large: int, small: int, rounds: int, out) -> dict:
    from service.catalog import tiny_catalog
    from workers.models import load_model
    from workers.pipelines.img2img import Img2Img
    from workers.pipelines.inpaint import Inpaint

    model = load_model(tiny_catalog().spec("tiny-sd"))
    native = tuple(model.spec.size)
    img2img, inpaint = Img2Img(model), Inpaint(model)
    quarter = size // 4
    masked = _params("inpaint", size, steps, mask=_square_mask(size, (quarter, quarter, 3 * quarter - 1,
                                                                      3 * quarter - 1)))
    plain = _params("img2img", size, steps)
    t = _alternate({"img2img": lambda: _timed(img2img, plain), "inpaint": lambda: _timed(inpaint, masked)}, rounds)
    ratio = t["inpaint"] / t["img2img"]
    out(f"inpaint / img2img, tiny SD {size}², {steps} steps, strength 1, a {size // 2}² mask: "
        f"{t['inpaint'] * 1000:.0f} ms / {t['img2img'] * 1000:.0f} ms = {ratio:.2f}x  "
        f"goal <= {GOAL_INPAINT}: {'met' if ratio <= GOAL_INPAINT else 'NOT met'}")
    corner = _square_mask(large, (16, 16, 16 + small - 1, 16 + small - 1))
    whole = _params("inpaint", large, steps, mask=corner)
    padded = dict(whole, mask_padding=MASK_PADDING)
    box, work = _worked_size(padded, native)
    box, work = tuple(int(v) for v in box), tuple(int(v) for v in work)
    p = _alternate({"whole": lambda: _timed(inpaint, whole), "padded": lambda: _timed(inpaint, padded)}, rounds)
    pad_ratio = p["padded"] / p["whole"]
    out(f"mask_padding {MASK_PADDING} / whole canvas, a {small}² mask in {large}², {steps} steps: "
        f"{p['padded'] * 1000:.0f} ms / {p['whole'] * 1000:.0f} ms = {pad_ratio:.2f}x  "
        f"goal < 1: {'met' if pad_ratio < 1 else 'NOT met'}  (crop {box[2] - box[0]}x{box[3] - box[1]} "
        f"worked at {work[0]}x{work[1]}, the model's native size, against {large}x{large})")
    return {"size": size, "steps": steps, "inpaint_ms": t["inpaint"] * 1000, "img2img_ms": t["img2img"] * 1000,
            "inpaint_ratio": ratio, "inpaint_goal": GOAL_INPAINT, "large": large, "small": small,
            "mask_padding": MASK_PADDING, "crop": [box[2] - box[0], box[3] - box[1]], "worked_at": list(work),
            "padded_ms": p["padded"] * 1000, "whole_ms": p["whole"] * 1000, "padding_ratio": pad_ratio}


def upscale_figures(size: int, tile: int, rounds: int, out) -> dict:
    import numpy as np
    from PIL import Image

    from service.catalog import tiny_catalog
    from workers.pipelines.base import input_image
    from workers.pipelines.upscale import Upscale
    from workers.progress import Progress

    pipeline = Upscale(tiny_catalog().spec(UPSCALER))
    upscaler = pipeline.upscaler
    image = Image.effect_noise((size, size), 64).convert("RGB")
    results = {}

    def run(t: int) -> float:
        params = {"image": input_image(image), "scale": float(upscaler.scale), "tile": t, "output_format": "png",
                  "width": size * upscaler.scale, "height": size * upscaler.scale}
        started = time.perf_counter()
        results[t] = pipeline.run(params, Progress(lambda state: False, pipeline.plan(params))).images[0]
        return time.perf_counter() - started

    s = _alternate({"whole": lambda: run(0), "tiled": lambda: run(tile)}, rounds)
    mp = size * size / 1e6
    spans = upscaler._spans(size, tile)
    tiles = len(spans) ** 2
    work = (sum(b - a for a, b in spans) / size) ** 2  # the tiles' pixels over the image's
    diff = int(np.abs(np.asarray(results[0], np.int16) - np.asarray(results[tile], np.int16)).max())
    rate_ratio = s["whole"] / s["tiled"]
    out(f"upscale {UPSCALER} x{upscaler.scale} ({upscaler.architecture}), {size}² input: tiled ({tile} px, "
        f"{tiles} tiles, {work:.2f}x the pixels) {mp / s['tiled']:.3f} MP/s, whole {mp / s['whole']:.3f} MP/s: "
        f"tiled / whole rate {rate_ratio:.2f}x ({rate_ratio * work:.2f}x per pixel worked); "
        f"largest pixel difference {diff}")
    return {"size": size, "tile": tile, "tiles": tiles, "work": work, "tiled_ms": s["tiled"] * 1000,
            "whole_ms": s["whole"] * 1000, "tiled_mp_s": mp / s["tiled"], "whole_mp_s": mp / s["whole"],
            "rate_ratio": rate_ratio, "max_diff": diff}


_RSS_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from bench.common import peak_rss, reset_peak_rss, rss_bytes
import torch
if {threads}:
    torch.set_num_threads({threads})
from PIL import Image
from service.catalog import tiny_catalog
from workers.upscalers import upscaler_for

upscaler = upscaler_for(tiny_catalog().spec({name!r}))
image = Image.effect_noise(({size}, {size}), 64).convert("RGB")
upscaler.upscale(image.crop((0, 0, 64, 64)), upscaler.scale, 0)  # warm: lazy initialisation is not the job's
assert reset_peak_rss(), "VmHWM cannot be reset here"
before = rss_bytes()
started = time.perf_counter()
upscaler.upscale(image, upscaler.scale, {tile})
print(peak_rss() - before, time.perf_counter() - started, upscaler.tiles({size}, {size}, {tile}), upscaler.scale)
"""


def rss_figures(size: int, tile: int, threads: int, out) -> dict:
    peaks, seconds, tiles, scale = {}, {}, {}, 1
    for name, t in (("tiled", tile), ("whole", 0)):
        code = _RSS_CHILD.format(root=str(ROOT), name=UPSCALER, size=size, tile=t, threads=threads)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        peak, secs, count, factor = done.stdout.split()[-4:]
        peaks[name], seconds[name], tiles[name], scale = int(peak), float(secs), int(count), int(factor)
    ratio = peaks["tiled"] / max(1, peaks["whole"])
    canvas = (size * scale) ** 2 * 3
    out(f"peak RSS growth upscaling {size}² (x{scale}, output {size * scale}², {canvas / 2**20:.0f} MiB as uint8): "
        f"tiled ({tile} px, {tiles['tiled']} tiles) {peaks['tiled'] / 2**20:.0f} MiB in {seconds['tiled']:.1f} s, "
        f"whole {peaks['whole'] / 2**20:.0f} MiB in {seconds['whole']:.1f} s = {ratio:.2f}x")
    return {"size": size, "tile": tile, "tiles": tiles["tiled"], "tiled_rss_mib": peaks["tiled"] / 2**20,
            "whole_rss_mib": peaks["whole"] / 2**20, "rss_ratio": ratio, "tiled_s": seconds["tiled"],
            "whole_s": seconds["whole"], "canvas_mib": canvas / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="inpaint / img2img: the image's side")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds per comparison (one more uncounted)")
    parser.add_argument("--large", type=int, default=1024, help="mask_padding: the canvas's side")
    parser.add_argument("--small", type=int, default=64, help="mask_padding: the mask's side")
    parser.add_argument("--up-size", type=int, default=512, help="upscale rate: the input's side")
    parser.add_argument("--tile", type=int, default=128, help="upscale rate: the tile")
    parser.add_argument("--rss-size", type=int, default=2048, help="upscale peak RSS: the input's side")
    parser.add_argument("--rss-tile", type=int, default=512, help="upscale peak RSS: the tile (the API's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # as it was (the tests run this in their own process)


def run(args) -> int:
    import torch

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # not "modules that should be kept in float32: []" per cast
    print("reproduce: " + shlex.join([
        ".venv/bin/python", "bench/edit.py", "--size", str(args.size), "--steps", str(args.steps), "--rounds",
        str(args.rounds), "--large", str(args.large), "--small", str(args.small), "--up-size", str(args.up_size),
        "--tile", str(args.tile), "--rss-size", str(args.rss_size), "--rss-tile", str(args.rss_tile), "--threads",
        str(args.threads)] + (["--skip", *args.skip] if args.skip else [])))
    print(f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} alternated rounds)", flush=True)
    started = time.monotonic()
    summary: dict = {"threads": torch.get_num_threads(), "rounds": args.rounds}
    if "inpaint" not in args.skip:
        summary["inpaint"] = inpaint_figures(args.size, args.steps, args.large, args.small, args.rounds, print)
    if "upscale" not in args.skip:
        summary["upscale"] = upscale_figures(args.up_size, args.tile, args.rounds, print)
    if "rss" not in args.skip:
        summary["rss"] = rss_figures(args.rss_size, args.rss_tile, args.threads, print)
    summary["seconds"] = time.monotonic() - started
    print(f"({summary['seconds']:.0f} s; load average {os.getloadavg()[0]:.1f}; this process's peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
