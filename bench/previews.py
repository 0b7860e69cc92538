"""Live previews: what they cost a job's inference, side by side with previews off (BENCHMARKS.md §9).

In one run, a real job runner (workers/jobs.py `JobRunner`, the tiny profile, an embedded Redis) runs the
same tiny SDXL job (the API's defaults: 1024², 30 steps, base then refiner at 0.8, euler, seed fixed), or
with `--model tiny-sd3` / `tiny-flux` the same text-to-image job on SD 3 or FLUX.1 (16-channel latents;
FLUX's packed 2×2, unpacked for each preview; flow_euler), over and over, in rounds of three, each round in
another order:

- watched by nobody (previews off: what every job without a watcher costs),
- watched, previews every `preview_every_steps` steps (the default, 2),
- watched, previews at every step (the most a setting can ask),

each job's inference time read from its own record (`timings.inference_s`). Previews are made inside the
job's progress reports (the step callback, workers/jobs.py `report`), which the bench times per job: the
figure is the time a watched job's reports take beyond an unwatched one's (the previews' own cost: render,
store, publish), as a share of the job's inference time; goal under 3% with the linear decoder at the
default cadence. Beside it, each variant's inference time, and its ratio to the "off" job of the same
round (paired, median): the same cost seen from outside, within this machine's noise of ±10% per job.

    .venv/bin/python bench/previews.py [--rounds 15] [--size 1024] [--steps 30] [--model tiny-sdxl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile  # noqa: E402  (tunes the process as a worker's)

TARGET_SHARE = 0.03
# --model -> its task, what its job adds to the common parameters, and how the report names it
JOBS = {
    "tiny-sdxl": ("sdxl", {"negative_prompt": "", "guidance_scale": 5.0, "refiner": True, "refiner_switch": 0.8,
                           "scheduler": "euler"}, "SDXL job ({size}², {steps} steps, base + refiner)"),
    "tiny-sd3": ("txt2img", {"negative_prompt": "", "guidance_scale": 3.5, "scheduler": "flow_euler"},
                 "SD 3 job ({size}², {steps} steps, 16-channel latents)"),
    "tiny-flux": ("txt2img", {"guidance_scale": 3.5, "scheduler": "flow_euler"},
                  "FLUX.1-dev job ({size}², {steps} steps, packed latents)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", choices=list(JOBS), default="tiny-sdxl")
    args = parser.parse_args()

    import torch

    from service.catalog import tiny_catalog
    from service.jobs import keys, protocol
    from service.redis import EmbeddedRedis, sync_client
    from service.settings import Settings
    from service.storage import LocalStorage
    from workers.jobs import JobRunner
    from workers.runtime import Runtime

    data = Path(tempfile.mkdtemp(prefix="fresco-bench-previews-"))
    server = EmbeddedRedis(data / "redis")
    redis = sync_client(server.url)
    task, extra, title = JOBS[args.model]
    settings = Settings(redis_url=server.url, data_dir=data, worker_tasks=[task], worker_models=[args.model],
                        preview_every_steps=2, worker_pending_outputs=0)  # each job ended before `run` returns
    runner = JobRunner(Runtime(settings, tiny_catalog()).load(), redis, LocalStorage(data / "results"), settings,
                       "bench-previews")
    params = {"prompt": "a lighthouse on a cliff at dusk", "width": args.size, "height": args.size,
              "steps": args.steps, "num_images": 1, "seed": 11, "output_format": "png", **extra}

    spent = {"report": 0.0}  # seconds in the progress callback (where previews are made) of the current job
    report = runner.report

    def timed_report(*args_):
        t0 = time.perf_counter()
        try:
            return report(*args_)
        finally:
            spent["report"] += time.perf_counter() - t0

    runner.report = timed_report

    def one(every: int | None) -> tuple[float, float, int]:
        """One job, watched with previews every `every` steps (None: not watched): its inference seconds,
        the seconds of those its progress reports took, and how many previews it published."""
        job_id = str(uuid.uuid4())
        protocol.submit(job_id, task, args.model, params, owner=None, retries=0, timeout_s=600, cap=0).run(redis)
        if every is not None:
            runner.settings.preview_every_steps = every
            redis.set(keys.watched(job_id), "1", px=600_000)
        pubsub = redis.pubsub()
        pubsub.subscribe(keys.events(job_id))
        pubsub.get_message(timeout=2)
        redis.lpop(keys.rq_queue(task, args.model))
        spent["report"] = 0.0
        assert runner.run({"id": job_id, "task": task, "model": args.model}) == {"status": "succeeded"}
        previews = 0
        while (m := pubsub.get_message(timeout=0.05)) is not None:
            previews += "preview" in json.loads(m["data"])
        pubsub.close()
        timings = json.loads(redis.hget(keys.job(job_id), "timings"))
        redis.delete(keys.job(job_id), keys.rq_job(job_id), keys.watched(job_id), keys.preview(job_id))
        return timings["inference_s"], spent["report"], previews

    variants = {"off": None, "every 2 steps (default)": 2, "every step": 1}
    names = list(variants)
    for every in variants.values():  # warm-up: first calls allocate
        one(every)
    times: dict[str, list[float]] = {name: [] for name in variants}
    reports: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, int] = {}
    for r in range(args.rounds):  # each round in another order: no variant always follows the same one
        for name in names[r % 3:] + names[:r % 3]:
            seconds, in_reports, previews = one(variants[name])
            times[name].append(seconds)
            reports[name].append(in_reports)
            counts[name] = previews

    base = statistics.median(times["off"])
    base_reports = statistics.median(reports["off"])
    print(f"Live previews, tiny {title.format(size=args.size, steps=args.steps)}, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'variant':<26} {'previews/job':>12} {'inference p50':>14} {'p95':>10} {'paired':>8} "
          f"{'in progress reports':>20} {'added':>8}")
    shares = {}
    for name in names:
        p50 = statistics.median(times[name])
        # paired: this variant's job over the "off" job of the same round (drift hits both alike)
        paired = statistics.median(t / o - 1 for t, o in zip(times[name], times["off"]))
        in_reports = statistics.median(reports[name])
        shares[name] = (in_reports - base_reports) / base  # the previews' own time: made inside the reports
        print(f"{name:<26} {counts[name]:>12} {p50 * 1000:>11.1f} ms {percentile(times[name], 95) * 1000:>7.1f} ms "
              f"{paired * 100:>+7.2f}% {in_reports * 1000:>14.1f} ms/job {shares[name] * 100:>+7.2f}%")
    default = "every 2 steps (default)"
    print(f"previews at the default cadence cost {shares[default] * 100:.2f}% of the job's {base * 1000:.0f} ms "
          f"inference (time added to its progress reports, where they are made; goal < {TARGET_SHARE * 100:.0f}%): "
          f"{'met' if shares[default] < TARGET_SHARE else 'NOT met'}")
    per_preview = (statistics.median(reports[default]) - base_reports) / max(1, counts[default])
    print(f"  per preview: {per_preview * 1000:.2f} ms "
          f"(render to a WebP data URL, store, publish); the tiny profile's latents are noise, WebP's worst case")
    redis.close()
    server.shutdown()


if __name__ == "__main__":
    main()
