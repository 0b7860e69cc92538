"""Service overhead: what HTTP, Redis, the queue, the worker, encoding and storage add to the model's time.

In one run, the same tiny Turbo job (default 512², 1 step, same prompt and seed) is

- called in-process on the pipeline, exactly as the worker calls it (`Turbo.run`, PIL image out), and
- sent end to end: POST /generate with `Prefer: wait` (or POST, then the `?wait=` long-poll) through the
  API, Redis, a real worker process, PNG encoding and storage, until the answer with the result URL
  (over one keep-alive connection, by a minimal HTTP client: an HTTP library's own cost is not the
  service's),

alternately, `--jobs` times each, after a warm-up, each run after `--gap-ms` of idle time. The added
time of each pair is `end to end - in-process`; the table gives its p50 and p95. Since the model's own
time varies from process to process and minute to minute on a shared machine by more than the service
adds, it also gives `end to end - the worker's own inference time for that job` (the job's timings),
which is exact per job, and where the time goes, from the job's own timestamps (HTTP and submit,
queue pick-up, the worker's inference, encode, store, bookkeeping, the reply).

    .venv/bin/python bench/overhead.py [--jobs 50] [--size 512] [--steps 1] [--mode prefer|longpoll]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Deployment, RawHttp, percentile, turbo_body, turbo_params  # noqa: E402

TARGET_P50_MS = 15.0


def in_process_runner(size: int, steps: int, models_file: str | None = None):
    """The Turbo pipeline in this process, as the worker holds it (the tiny profile's, or the models
    file's default Turbo model, optimised and warmed as a worker does); returns a callable timing one
    run (on a GPU, up to the synchronised end of the call)."""
    import torch

    from service.catalog import load_catalog
    from workers.models import freeze_compiled, load_model
    from workers.runtime import warm_up
    from workers.pipelines.turbo import Turbo
    from workers.progress import Progress

    catalog = load_catalog(models_file)
    spec = catalog.spec(catalog.default_for("turbo"))
    model = load_model(spec)
    pipeline = Turbo(model)
    if spec.compile:
        warm_up(pipeline, spec)
        freeze_compiled()
    params = turbo_params(size, steps)
    plan = pipeline.plan(params)
    cuda = model.device.type == "cuda"

    def run() -> tuple[float, object]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = pipeline.run(params, Progress(lambda state: False, plan))
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out.images[0]

    return run


def _ts(iso: str | None) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else float("nan")


def end_to_end(client: RawHttp, body: dict, mode: str) -> tuple[float, float, dict]:
    sent = time.time()
    t0 = time.perf_counter()
    if mode == "prefer":
        job = client.json("POST", "/generate", body, {"Prefer": "wait=60"})
    else:
        job = client.json("POST", "/generate", body)
        job = client.json("GET", f"/jobs/{job['id']}?wait=60")
    elapsed = time.perf_counter() - t0
    if job.get("status") != "succeeded":
        raise RuntimeError(f"job did not succeed: {json.dumps(job)[:500]}")
    return elapsed, sent, job


def measure(jobs: int, size: int, steps: int, mode: str, warmup: int = 5, deployment_kwargs: dict | None = None,
            out=print, dep: Deployment | None = None, gap_s: float = 0.03, models_file: str | None = None) -> dict:
    """The table, and its figures as a dict. `dep`: a running deployment to use (else one is started).
    `models_file`: a models file's default Turbo model instead of the tiny profile's (a GPU host)."""
    runner = in_process_runner(size, steps, models_file)
    body = turbo_body(size, steps)
    with contextlib.ExitStack() as stack:
        if dep is None:
            kwargs = dict(deployment_kwargs or {})
            if models_file:
                kwargs["env"] = {**kwargs.get("env", {}), "FRESCO_MODELS_FILE": str(Path(models_file).resolve())}
            dep = stack.enter_context(Deployment(**kwargs))
            dep.wait_ready()
        rows = []
        client = RawHttp(dep.port)
        try:
            for i in range(warmup + jobs):
                time.sleep(gap_s)  # each run starts on an idle machine: nothing left over from the last
                t_in, _ = runner()
                time.sleep(gap_s)
                t_e2e, sent, job = end_to_end(client, body, mode)
                if i >= warmup:
                    rows.append((t_in, t_e2e, sent, job))
        finally:
            client.close()
    added = [e2e - t_in for t_in, e2e, _, _ in rows]
    inproc = [r[0] for r in rows]
    e2e = [r[1] for r in rows]
    worker_inf = [r[3]["timings"]["inference_s"] for r in rows]
    phases = {"http in + submit": [], "queue pick-up": [], "inference (worker)": [], "encode": [], "store": [],
              "worker bookkeeping": [], "done -> client": []}
    for t_in, t_e2e, sent, job in rows:
        t = job["timings"]
        http_in = _ts(job["created_at"]) - sent  # ms precision: the view's timestamps are milliseconds
        phases["http in + submit"].append(http_in)
        phases["queue pick-up"].append(t["queue_s"])
        phases["inference (worker)"].append(t["inference_s"])
        phases["encode"].append(t["encode_s"])
        phases["store"].append(t["store_s"])
        phases["worker bookkeeping"].append(
            t["total_s"] - t["queue_s"] - t["inference_s"] - t["encode_s"] - t["store_s"])
        phases["done -> client"].append(t_e2e - http_in - t["total_s"])
    result = {
        "jobs": jobs, "size": size, "steps": steps, "mode": mode,
        "in_process_p50_ms": percentile(inproc, 50) * 1000, "in_process_p95_ms": percentile(inproc, 95) * 1000,
        "e2e_p50_ms": percentile(e2e, 50) * 1000, "e2e_p95_ms": percentile(e2e, 95) * 1000,
        "added_p50_ms": percentile(added, 50) * 1000, "added_p95_ms": percentile(added, 95) * 1000,
        "added_vs_worker_inference_p50_ms": percentile([e - w for e, w in zip(e2e, worker_inf)], 50) * 1000,
        "added_vs_worker_inference_p95_ms": percentile([e - w for e, w in zip(e2e, worker_inf)], 95) * 1000,
        "phases_p50_ms": {k: statistics.median(v) * 1000 for k, v in phases.items()},
        "png_bytes": rows[-1][3]["result"]["images"][0].get("bytes"),
    }
    out(f"{'Turbo (' + models_file + ')' if models_file else 'tiny Turbo'} {size}x{size}, {steps} step(s), "
        f"{jobs} jobs each way after {warmup} warm-up, "
        f"end to end via {'Prefer: wait' if mode == 'prefer' else 'POST + GET ?wait='}")
    out(f"{'':34}{'p50':>10}{'p95':>10}")
    out(f"{'in-process pipeline call':34}{result['in_process_p50_ms']:8.1f}ms{result['in_process_p95_ms']:8.1f}ms")
    out(f"{'end to end (HTTP, Redis, worker)':34}{result['e2e_p50_ms']:8.1f}ms{result['e2e_p95_ms']:8.1f}ms")
    out(f"{'added (pairwise difference)':34}{result['added_p50_ms']:8.1f}ms{result['added_p95_ms']:8.1f}ms"
        f"   target p50 <= {TARGET_P50_MS:.0f} ms: {'met' if result['added_p50_ms'] <= TARGET_P50_MS else 'NOT met'}")
    within = result["added_vs_worker_inference_p50_ms"]
    out(f"{'added vs the job own inference_s':34}{within:8.1f}ms{result['added_vs_worker_inference_p95_ms']:8.1f}ms"
        f"   target p50 <= {TARGET_P50_MS:.0f} ms: "
        f"{'met' if within <= TARGET_P50_MS else 'NOT met'}")
    out("where the end-to-end time goes (p50 of each phase):")
    for k, v in result["phases_p50_ms"].items():
        out(f"  {k:32}{v:8.2f}ms")
    return result


def in_process_only(jobs: int, size: int, steps: int, gap_s: float) -> float:
    runner = in_process_runner(size, steps)
    times = []
    for _ in range(jobs + 3):
        time.sleep(gap_s)
        times.append(runner()[0])
    return percentile(times[3:], 50)


def spread(processes: int, jobs: int, size: int, steps: int, gap_ms: float, out=print) -> list[float]:
    """The in-process time alone, in `processes` fresh processes one after another: how much the
    model's own time moves from one process to the next on this machine, with no service involved."""
    import subprocess

    medians = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, __file__, "--in-process-only", "--jobs", str(jobs), "--size", str(size),
                               "--steps", str(steps), "--gap-ms", str(gap_ms)], capture_output=True, text=True,
                              check=True)
        medians.append(float(done.stdout.strip().splitlines()[-1]))
    out(f"in-process p50 in {processes} fresh processes, {jobs} runs each: "
        + ", ".join(f"{m:.1f}" for m in medians) + f" ms (spread {max(medians) - min(medians):.1f} ms)")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", type=int, default=512, help="width and height (multiple of 8, 256..1024)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--mode", choices=["prefer", "longpoll"], default="prefer")
    parser.add_argument("--gap-ms", type=float, default=30.0,
                        help="idle time before each run, so neither inherits the other's leftover work")
    parser.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    parser.add_argument("--spread", type=int, default=0, metavar="N",
                        help="instead: the in-process time alone in N fresh processes (its variance, no service)")
    parser.add_argument("--in-process-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-file", default=None,
                        help="serve its default Turbo model instead of the tiny profile (e.g. the one "
                             "`bench/gpu.py --save-turbo DIR` writes, on a GPU host)")
    args = parser.parse_args(argv)
    if args.in_process_only:
        print(f"{in_process_only(args.jobs, args.size, args.steps, args.gap_ms / 1000) * 1000:.2f}")
        return 0
    if args.spread:
        spread(args.spread, args.jobs, args.size, args.steps, args.gap_ms)
        return 0
    result = measure(args.jobs, args.size, args.steps, args.mode, args.warmup, gap_s=args.gap_ms / 1000,
                     models_file=args.models_file)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
