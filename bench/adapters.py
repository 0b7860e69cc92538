"""LoRAs per request: what a resident LoRA costs a job, what a cold load costs, and the worker's memory
while LoRAs come and go (CPU, tiny profile).

Everything runs in this one process, as a worker process runs it: a real `JobRunner` on a `Runtime`
with the tiny Turbo pipeline, an embedded Redis, jobs submitted with the API's own `protocol.submit`
and taken off the RQ list as RQ's worker does (`pop_and_run` in tests/workers/harness.py). Tiny Turbo
jobs, `--size`² and `--steps` step(s), tiny random LoRAs (workers/tiny_adapters.py `lora`, rank 4, on the UNet
and both text encoders) saved as .safetensors files and named in the catalog like any LoRA.

1. **Memory while cycling** (first, so the process holds one worker's models, as a worker does):
   `--cycle-jobs` jobs on a worker keeping `--residency` LoRAs (FRESCO_WORKER_MAX_LORAS), each job
   naming the next of `--cycle-loras` LoRAs, so every job evicts one and loads one. The process RSS
   (/proc/self/statm) after every job, as the worker runs (no gc.collect() between jobs; one at the
   end, reported apart); growth from job `--rss-from` to the last (goal < 3%). After every job, the
   resident LoRAs (`model.loras.resident`) and PEFT's adapters in each module
   (`pipe.get_list_adapters()`) must be at most the residency.
2. **Per-job time, side by side**: `--rounds` rounds (after `--warmup` uncounted ones), each running
   one job of each variant, in an order that rotates from round to round (the machine's noise hits
   every variant alike): **none** (a worker that never loaded a LoRA: the base model's arithmetic),
   **resident** (a worker whose one LoRA, loaded before, every job names), **cold** (the cycling
   worker of part 1: every job evicts and loads). Each job's wall time is `JobRunner.run`'s (adapters,
   inference, PNG, storage, Redis). Resident/none (goal <= 1.10), cold - none in ms, and the mean of
   `fresco_adapter_load_seconds` over the cold loads of this part.

    .venv/bin/python bench/adapters.py [--size 256] [--steps 1] [--rounds 40] [--cycle-loras 10]
        [--residency 3] [--cycle-jobs 200] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, rss_bytes, turbo_params  # noqa: E402  (first: tunes malloc as a worker process does)

TASK, MODEL = "turbo", "tiny-turbo"
GOAL_RATIO = 1.10  # resident LoRA / no LoRA, per-job wall time
GOAL_GROWTH = 0.03  # RSS growth while LoRAs cycle


def rss() -> int:
    """This process's resident set, in bytes."""
    return rss_bytes(os.getpid())


def lora_files(folder: Path, names: list[str], seed: int = 500) -> dict[str, Path]:
    import safetensors.torch

    from workers import tiny_adapters

    out = {}
    for i, name in enumerate(names):
        path = folder / f"{name}.safetensors"
        safetensors.torch.save_file(tiny_adapters.lora(seed + i), str(path))
        out[name] = path
    return out


def catalog_with(files: dict[str, Path]):
    from service.catalog import AdapterSpec, tiny_catalog

    catalog = tiny_catalog()
    for name, path in files.items():
        catalog.adapters[name] = AdapterSpec(name=name, kind="lora", source=str(path), base=["sdxl"])
    return catalog


def turbo(seed: int, size: int, steps: int) -> dict:
    return turbo_params(size, steps, seed, prompt=f"a fox number {seed}")


class Worker:
    """A worker's job runner in this process (bench/ may not import tests/workers/harness.py: the same
    few lines). Jobs run one at a time: submit, pop off the RQ list, run, drop RQ's job hash."""

    def __init__(self, redis_url: str, data: Path, name: str, catalog, **overrides):
        from service.redis import sync_client
        from service.settings import Settings
        from service.storage import LocalStorage
        from workers.jobs import JobRunner
        from workers.runtime import Runtime

        # Each job stored before `run` returns (no finishing stage): its wall time is the whole job's.
        settings = Settings(redis_url=redis_url, data_dir=data, worker_tasks=[TASK], worker_pending_outputs=0,
                            **overrides)
        self.redis = sync_client(redis_url)
        self.runner = JobRunner(Runtime(settings, catalog).load(), self.redis, LocalStorage(data / "results"),
                                settings, name)
        self.model = self.runner.runtime.models[MODEL]

    def job(self, params: dict) -> tuple[float, dict]:
        """Run one job; its wall time (JobRunner.run) and its record's timings."""
        from service.jobs import keys, protocol

        job_id = str(uuid.uuid4())
        assert protocol.submit(job_id, TASK, MODEL, params, owner=None, retries=0, timeout_s=600, cap=0).run(self.redis)
        raw = self.redis.lpop(keys.rq_queue(TASK, MODEL))
        assert raw is not None and raw.decode() == job_id
        started = time.perf_counter()
        try:
            self.runner.run({"id": job_id, "task": TASK, "model": MODEL})
        finally:
            wall = time.perf_counter() - started
            self.redis.delete(keys.rq_job(job_id))
        record = protocol.decode_hash(self.redis.hgetall(keys.job(job_id)))
        if record.get("status") != "succeeded":
            raise RuntimeError(f"job {job_id} {record.get('status')}: {record.get('error')}")
        self.redis.delete(keys.job(job_id))  # read once: dropping it keeps Redis small over many jobs
        return wall, json.loads(record.get("timings") or "{}")

    def resident(self) -> tuple[int, int]:
        """LoRAs resident by the worker's count, and the most PEFT adapters any module holds."""
        loras = self.model.loras
        adapters = loras.pipe.get_list_adapters()
        return len(loras.resident), max((len(names) for names in adapters.values()), default=0)


def load_seconds() -> tuple[float, float]:
    """fresco_adapter_load_seconds{model=tiny-turbo}: (sum, count) so far in this process."""
    from workers import metrics

    child = metrics.ADAPTER_LOAD_SECONDS.labels(MODEL)
    return child._sum.get(), sum(b.get() for b in child._buckets)


def measure(size: int = 256, steps: int = 1, rounds: int = 40, warmup: int = 3, cycle_loras: int = 10,
            residency: int = 3, cycle_jobs: int = 200, rss_from: int = 50, threads: int = 0, out=print) -> dict:
    if rounds < 1 or cycle_jobs < 1:
        raise ValueError("--rounds and --cycle-jobs must be at least 1")
    if cycle_loras <= residency:
        raise ValueError("--cycle-loras must be above --residency, or no job evicts and loads")
    rss_from = min(rss_from, cycle_jobs)
    started = time.monotonic()
    import torch

    from workers import quiet

    quiet.silence_known_noise()  # as a worker process starts: PEFT's and transformers' per-load chatter
    if threads:
        torch.set_num_threads(threads)  # as FRESCO_TORCH_THREADS does in a worker
    data = Path(tempfile.mkdtemp(prefix="fresco-bench-adapters-"))
    from service.redis import EmbeddedRedis

    server = EmbeddedRedis(data / "redis")
    try:
        cycle_names = [f"c{i}" for i in range(cycle_loras)]
        (data / "loras").mkdir()
        files = lora_files(data / "loras", ["r", *cycle_names])
        catalog = catalog_with(files)
        # ---- 1. memory while cycling, on the worker that keeps `residency` LoRAs
        cycling = Worker(server.url, data / "cycling", "bench-cycling", catalog, worker_max_loras=residency)
        next_lora = iter(range(10**9))

        def cold_params(seed: int) -> dict:
            return {**turbo(seed, size, steps), "loras": [{"name": cycle_names[next(next_lora) % cycle_loras],
                                                           "scale": 1.0}]}

        rss_start = rss()
        rss_after: list[int] = []
        max_resident = max_peft = 0
        loads_before = _loads()
        cycle_started = time.monotonic()
        for i in range(1, cycle_jobs + 1):
            cycling.job(cold_params(i))
            rss_after.append(rss())
            resident, peft = cycling.resident()
            max_resident, max_peft = max(max_resident, resident), max(max_peft, peft)
        cycle_s = time.monotonic() - cycle_started
        cycle_loads = _loads() - loads_before
        gc.collect()
        rss_end_gc = rss()
        rss_at_from, rss_end = rss_after[rss_from - 1], rss_after[-1]
        growth = (rss_end - rss_at_from) / rss_at_from

        # ---- 2. per-job time: none, resident, cold, interleaved
        plain = Worker(server.url, data / "plain", "bench-none", catalog, worker_max_loras=residency)
        holding = Worker(server.url, data / "resident", "bench-resident", catalog, worker_max_loras=residency)
        holding.job({**turbo(0, size, steps), "loras": [{"name": "r", "scale": 1.0}]})  # loaded before
        variants = {
            "none": (plain, lambda seed: turbo(seed, size, steps)),
            "resident": (holding, lambda seed: {**turbo(seed, size, steps), "loras": [{"name": "r", "scale": 1.0}]}),
            "cold": (cycling, cold_params),
        }
        names = list(variants)
        wall: dict[str, list[float]] = {n: [] for n in names}
        inference: dict[str, list[float]] = {n: [] for n in names}
        for r in range(warmup + rounds):
            if r == warmup:
                sum_before, count_before = load_seconds()
                loads_before = _loads()
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                worker, params = variants[name]
                seconds, timings = worker.job(params(1000 + r))  # the same seed and prompt for every variant
                if r >= warmup:
                    wall[name].append(seconds)
                    inference[name].append(timings["inference_s"])
                if worker is cycling:
                    resident, peft = cycling.resident()
                    max_resident, max_peft = max(max_resident, resident), max(max_peft, peft)
        sum_after, count_after = load_seconds()
        cold_loads = _loads() - loads_before
        resident_now = holding.resident()[0]
    finally:
        server.shutdown()
        shutil.rmtree(data, ignore_errors=True)

    med = {n: statistics.median(v) for n, v in wall.items()}
    p95 = {n: percentile(v, 95) for n, v in wall.items()}
    med_inf = {n: statistics.median(v) for n, v in inference.items()}
    ratio = med["resident"] / med["none"]
    cold_cost = med["cold"] - med["none"]
    load_count = count_after - count_before
    load_mean = (sum_after - sum_before) / load_count if load_count else float("nan")
    summary = {
        "size": size, "steps": steps, "rounds": rounds, "warmup": warmup, "cycle_loras": cycle_loras,
        "residency": residency, "cycle_jobs": cycle_jobs, "rss_from": rss_from,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "wall_ms": {n: round(v * 1000, 2) for n, v in med.items()},
        "wall_p95_ms": {n: round(v * 1000, 2) for n, v in p95.items()},
        "inference_ms": {n: round(v * 1000, 2) for n, v in med_inf.items()},
        "resident_ratio": round(ratio, 4),
        "inference_ratio": round(med_inf["resident"] / med_inf["none"], 4),
        "resident_cost_ms": round((med["resident"] - med["none"]) * 1000, 2),
        "cold_load_ms": round(cold_cost * 1000, 2),
        "adapter_load_mean_ms": round(load_mean * 1000, 2),
        "adapter_loads": int(load_count), "cold_loads_per_job": round(cold_loads / rounds, 3),
        "resident_worker_kept_its_lora": resident_now == 1,
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_mib": {"1": round(rss_after[0] / 2**20, 1), str(rss_from): round(rss_at_from / 2**20, 1),
                    str(cycle_jobs): round(rss_end / 2**20, 1)},
        "rss_end_after_gc_mib": round(rss_end_gc / 2**20, 1),
        "rss_growth_pct": round(growth * 100, 3),
        "cycle_loads_per_job": round(cycle_loads / cycle_jobs, 3), "cycle_s": round(cycle_s, 1),
        "max_resident": max_resident, "max_peft_adapters": max_peft,
        "goals": {"resident_ratio": ratio <= GOAL_RATIO, "rss_growth": growth < GOAL_GROWTH,
                  "max_resident": max(max_resident, max_peft) <= residency},
        "seconds": round(time.monotonic() - started, 1),
    }
    report(summary, out)
    return summary


def _loads() -> float:
    from workers import metrics

    return metrics.ADAPTER_LOADS.labels(MODEL)._value.get()


def report(s: dict, out=print) -> None:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    size, n = s["size"], s["cycle_jobs"]
    out(f"Tiny Turbo jobs {size}x{size}, {s['steps']} step(s), in-process worker, CPU "
        f"({s['cpus']} cores, {s['torch_threads']} torch threads)")
    out(f"per-job time: {s['rounds']} rounds (+{s['warmup']} warm-up), one job of each variant a round, order rotating")
    out(f"{'':34}{'wall p50':>10}{'wall p95':>10}{'inference p50':>15}")
    labels = {"none": "no LoRA", "resident": "resident LoRA (same every job)",
              "cold": f"cold LoRA ({s['residency']} kept of {s['cycle_loras']})"}
    for name, label in labels.items():
        out(f"  {label:32}{s['wall_ms'][name]:8.1f}ms{s['wall_p95_ms'][name]:8.1f}ms{s['inference_ms'][name]:13.1f}ms")
    out(f"  resident / none (wall p50)       {s['resident_ratio']:8.3f}x   goal <= {GOAL_RATIO:.2f}x: "
        f"{met(s['goals']['resident_ratio'])}   (+{s['resident_cost_ms']:.1f} ms; inference alone "
        f"{s['inference_ratio']:.3f}x)")
    out(f"  cold load cost (cold - none)     {s['cold_load_ms']:8.1f}ms   report   "
        f"(fresco_adapter_load_seconds mean {s['adapter_load_mean_ms']:.1f} ms over {s['adapter_loads']} loads; "
        f"{s['cold_loads_per_job']:.2f} loads per cold job)")
    out(f"memory while cycling: {n} jobs, {s['cycle_loras']} LoRAs, worker_max_loras={s['residency']} "
        f"({s['cycle_loads_per_job']:.2f} loads per job, {s['cycle_s']:.0f} s)")
    out(f"  RSS before the first job {s['rss_start_mib']:8.1f} MiB")
    for job, mib in s["rss_mib"].items():
        out(f"  RSS after job {job:>10} {mib:8.1f} MiB")
    out(f"  RSS growth job {s['rss_from']} -> {n}    {s['rss_growth_pct']:+8.2f}%    goal < {GOAL_GROWTH * 100:.0f}%: "
        f"{met(s['goals']['rss_growth'])}   (after gc.collect() at the end: {s['rss_end_after_gc_mib']:.1f} MiB)")
    out(f"  max resident LoRAs, any job      {s['max_resident']:8d}     goal <= {s['residency']}: "
        f"{met(s['goals']['max_resident'])}   (PEFT adapters in any module: {s['max_peft_adapters']})")
    out(f"({s['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image width and height")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps")
    parser.add_argument("--rounds", type=int, default=40, help="counted rounds of the per-job comparison")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted rounds first")
    parser.add_argument("--cycle-loras", type=int, default=10, help="LoRAs the memory part cycles through")
    parser.add_argument("--residency", type=int, default=3, help="FRESCO_WORKER_MAX_LORAS of the cycling worker")
    parser.add_argument("--cycle-jobs", type=int, default=200, help="jobs of the memory part")
    parser.add_argument("--rss-from", type=int, default=50, help="RSS growth from after this job to the last")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads, as FRESCO_TORCH_THREADS (0: torch's default, one per core)")
    parser.add_argument("--json", action="store_true", help="a one-line JSON summary at the end")
    args = parser.parse_args(argv)
    print("reproduce: " + shlex.join([".venv/bin/python", "bench/adapters.py", "--size", str(args.size),
                                      "--steps", str(args.steps), "--rounds", str(args.rounds), "--warmup",
                                      str(args.warmup), "--cycle-loras", str(args.cycle_loras), "--residency",
                                      str(args.residency), "--cycle-jobs", str(args.cycle_jobs), "--rss-from",
                                      str(args.rss_from), "--threads", str(args.threads)]
                                     + (["--json"] if args.json else [])), flush=True)
    summary = measure(args.size, args.steps, args.rounds, args.warmup, args.cycle_loras, args.residency,
                      args.cycle_jobs, args.rss_from, args.threads)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
