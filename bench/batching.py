"""Dynamic batching: throughput of a burst of Turbo jobs, batched against unbatched, in one run.

For each batch size (FRESCO_WORKER_BATCH_SIZE; 1 is unbatched), `--jobs` Turbo jobs (distinct seeds and
prompts) are queued while no worker runs, then one worker starts and works through them. Its
throughput is jobs / (last job's finished_at - first job's started_at), from the jobs' own timestamps,
so the worker's start-up is not counted. Rounds alternate between the sizes (the machine is noisy);
the table gives medians and the ratio to unbatched. It also checks that every job succeeded and that
each image is the one the same seed gives unbatched (at most one level off in under 1% of pixels).

    .venv/bin/python bench/batching.py [--jobs 16] [--batch 1 4 8 16] [--size 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import Deployment, turbo_body  # noqa: E402


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def burst(dep: Deployment, client: httpx.Client, jobs: int, size: int, steps: int, batch: int,
          wait_ms: float) -> tuple[float, list[dict]]:
    ids = [client.post("/generate", json=turbo_body(size, steps, seed=1000 + i, prompt=f"a red fox, take {i}"))
           .json()["id"] for i in range(jobs)]
    index = len(dep.workers)
    dep.spawn_worker(env={"FRESCO_WORKER_BATCH_SIZE": str(batch), "FRESCO_WORKER_BATCH_WAIT_MS": str(wait_ms)})
    try:
        done = [client.get(f"/jobs/{i}", params={"wait": 60}).json() for i in ids]
        for job in done:
            while job["status"] not in ("succeeded", "failed", "canceled"):
                job = client.get(f"/jobs/{job['id']}", params={"wait": 60}).json()
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        done = [client.get(f"/jobs/{i}").json() for i in ids]
    finally:
        dep.stop_worker(index)
    span = max(_ts(j["finished_at"]) for j in done) - min(_ts(j["started_at"]) for j in done)
    return jobs / span, done


def pixels(client: httpx.Client, job: dict) -> np.ndarray:
    data = client.get(job["result"]["images"][0]["url"]).content
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def measure(jobs: int, batches: list[int], size: int, steps: int, rounds: int, wait_ms: float, out=print,
            models_file: str | None = None) -> dict:
    if 1 not in batches:
        batches = [1, *batches]
    rates: dict[int, list[float]] = {b: [] for b in batches}
    results: dict[int, list[dict]] = {}
    env = {"FRESCO_MODELS_FILE": str(Path(models_file).resolve())} if models_file else {}
    with Deployment(workers=0, env=env) as dep:
        dep.wait_ready()
        with httpx.Client(base_url=dep.url, timeout=120) as client:
            for _ in range(rounds):
                for b in batches:
                    rate, done = burst(dep, client, jobs, size, steps, b, wait_ms)
                    rates[b].append(rate)
                    results.setdefault(b, done)
            reference = [pixels(client, j) for j in results[1]]
            worst = {}
            for b in batches:
                diffs = [(np.abs(pixels(client, j) - ref).max(), (pixels(client, j) != ref).mean())
                         for j, ref in zip(results[b], reference)]
                worst[b] = (max(d[0] for d in diffs), max(d[1] for d in diffs))
    base = statistics.median(rates[1])
    summary = {"jobs": jobs, "size": size, "steps": steps, "rounds": rounds, "batches": {}}
    out(f"{jobs} Turbo jobs {size}x{size}, {steps} step(s), queued before the worker starts; {rounds} round(s)")
    out(f"{'batch size':>10} {'jobs/s':>8} {'ratio':>7} {'max px diff':>12} {'px differing':>13}")
    for b in batches:
        rate = statistics.median(rates[b])
        summary["batches"][b] = {"jobs_per_s": rate, "ratio": rate / base, "max_diff": int(worst[b][0]),
                                 "frac_diff": float(worst[b][1])}
        out(f"{b:>10} {rate:8.2f} {rate / base:6.2f}x {worst[b][0]:>12} {worst[b][1] * 100:12.3f}%")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait-ms", type=float, default=0.0, help="FRESCO_WORKER_BATCH_WAIT_MS")
    parser.add_argument("--models-file", default=None,
                        help="its default Turbo model instead of the tiny profile's (a GPU host: see bench/gpu.py "
                             "--save-turbo)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    summary = measure(args.jobs, args.batch, args.size, args.steps, args.rounds, args.wait_ms,
                      models_file=args.models_file)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
