"""Duty under a backlog: the share of the wall time the worker's pipeline runs, with the finishing stage
on (FRESCO_WORKER_PENDING_OUTPUTS=2: job N is encoded and stored while job N+1 runs) against off (0),
side by side in one run, with local storage and with an S3-protocol server.

Each phase starts a deployment with one worker, warms it up, then queues `--jobs` tiny Turbo jobs at once
(512², 1 step, a seed each; or `--task sdxl`: tiny SDXL 1024², 30 steps, no refiner, where inference
dominates) and waits for all of them. To stand for a device and its host on a 2-core
machine, the worker's torch runs on one thread (FRESCO_TORCH_THREADS=1): the other core is the host's.
The S3 phases store through moto's server (tests/deploy/s3server.py, the one the tests use), each upload
made `--put-delay-ms` slower to stand for a real object store's latency.

Per phase: duty = the worker's `fresco_worker_busy_seconds_total` over the backlog's wall time (first
job's start to last job's end), jobs/s, and per job the pipeline, encode and store times and the rest
(wall / jobs - pipeline: what the device waited for), and the worker's minor page faults (fresh memory
the kernel zero-fills). Phases alternate on/off `--rounds` times; the table gives each phase's median
round and the on/off ratios.

    .venv/bin/python bench/duty.py [--task turbo|sdxl] [--jobs 200] [--rounds 1] [--storage local s3]
                                   [--put-delay-ms 50] [--size 512] [--steps 1] [--json out.json]
    .venv/bin/python bench/duty.py --task sdxl --storage local     # 20 tiny SDXL 1024², 30 steps

On a GPU host, the full-size Turbo (random weights, bench/gpu.py) on the device, torch's own threads:

    python bench/gpu.py --only turbo --save-turbo /tmp/t
    python bench/duty.py --models-file /tmp/t/models.yaml --torch-threads 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Deployment, RawHttp, turbo_body  # noqa: E402

GOAL_DUTY, GOAL_S3_SPEEDUP = 0.97, 1.15
# What is queued: Turbo (the service's shortest jobs, where the worker's own work shows most), or SDXL
# without its refiner (long jobs, inference dominates: the finishing stage should change nothing).
WORKLOADS = {"turbo": {"size": 512, "steps": 1}, "sdxl": {"size": 1024, "steps": 30}}


def body(task: str, size: int, steps: int, seed: int) -> dict:
    if task == "turbo":
        return turbo_body(size, steps, seed=seed)
    return {"task": task, "prompt": "a red fox in the snow", "width": size, "height": size, "steps": steps,
            "seed": seed, "refiner": False}
SENDERS = 4  # connections queueing the backlog


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (/proc/<pid>/stat: fresh memory the kernel zero-fills)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def busy_seconds(port: int) -> float:
    import httpx

    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith("fresco_worker_busy_seconds_total "):
            return float(line.split()[1])
    raise RuntimeError("the worker exports no fresco_worker_busy_seconds_total")


def queue(port: int, bodies: list[dict]) -> list[str]:
    """POST every body (on SENDERS keep-alive connections): the job ids, in order."""

    def send(chunk: list[dict]) -> list[str]:
        client = RawHttp(port)
        try:
            ids = []
            for body in chunk:
                reply = client.json("POST", "/generate", body)
                if "id" not in reply:
                    raise RuntimeError(f"POST /generate refused {body}: {reply}")
                ids.append(reply["id"])
            return ids
        finally:
            client.close()

    chunks = [bodies[i::SENDERS] for i in range(SENDERS)]
    with ThreadPoolExecutor(SENDERS) as pool:
        ids = list(pool.map(send, chunks))
    return [job_id for chunk in ids for job_id in chunk]


def wait_all(dep: Deployment, ids: list[str], timeout: float) -> list[dict]:
    """Every job's record once all have ended (raw: timestamps as Redis holds them)."""
    from service.jobs import keys, protocol

    r = dep.redis()
    deadline = time.monotonic() + timeout
    while True:
        with r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            records = [protocol.decode_hash(h) for h in pipe.execute()]
        if all(h.get("status") in {"succeeded", "failed", "canceled"} for h in records):
            return records
        if time.monotonic() > deadline:
            raise RuntimeError(f"the backlog did not drain in {timeout} s")
        time.sleep(0.2)


def deployment(task: str, storage: str, s3=None, models_file: Path | None = None) -> Deployment:
    """An API on an embedded Redis, with no worker yet: each phase starts its own (`phase`)."""
    env = {"FRESCO_QUEUE_CAP": json.dumps({task: 0})}
    if models_file is not None:
        env["FRESCO_MODELS_FILE"] = str(models_file.resolve())
    if storage == "s3":
        env.update(s3.env(s3.new_bucket()))
    dep = Deployment(env=env, tasks=task, workers=0)
    dep.wait_ready(path="/healthz")
    return dep


def phase(dep: Deployment, task: str, jobs: int, pending: int, storage: str, size: int, steps: int,
          torch_threads: int = 1, warmup: int = 3) -> dict:
    """One worker with `pending` outputs, warmed up, then the backlog; the worker stopped at the end."""
    worker = dep.spawn_worker(env={"FRESCO_TORCH_THREADS": str(torch_threads),
                                   "FRESCO_WORKER_PENDING_OUTPUTS": str(pending)})
    index = dep.workers.index(worker)
    try:
        dep.wait_worker(index)
        port = dep.worker_metrics_ports[index]
        warm = queue(dep.port, [body(task, size, steps, seed=i) for i in range(warmup)])
        wait_all(dep, warm, timeout=600)  # warmed up, and nothing of it left in the busy seconds
        time.sleep(0.2)
        before, faults_before = busy_seconds(port), minor_faults(worker.pid)
        ids = queue(dep.port, [body(task, size, steps, seed=1000 + i) for i in range(jobs)])
        records = wait_all(dep, ids, timeout=60 + jobs * (60 if task == "sdxl" else 5))
        busy = busy_seconds(port) - before
        faults = minor_faults(worker.pid) - faults_before
    finally:
        dep.stop_worker(index)
    failed = [h for h in records if h["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0]}")
    wall = max(float(h["finished_at"]) for h in records) - min(float(h["started_at"]) for h in records)
    timings = [json.loads(h["timings"]) for h in records]
    per_job = {key: statistics.fmean(t[key] for t in timings) for key in ("inference_s", "encode_s", "store_s")}
    return {"storage": storage, "pending": pending, "jobs": jobs, "wall_s": wall, "busy_s": busy,
            "duty": busy / wall, "jobs_per_s": jobs / wall, **per_job,
            "waited_s": wall / jobs - busy / jobs, "faults_per_job": faults / jobs}


def run(task: str, jobs: int, rounds: int, storages: list[str], put_delay_ms: float, size: int, steps: int,
        models_file: Path | None = None, torch_threads: int = 1, warmup: int = 3, modes: tuple[int, ...] = (2, 0),
        out=print) -> dict:
    """`modes`: the FRESCO_WORKER_PENDING_OUTPUTS of each phase (2: the finishing stage on, 0: off)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's line per request

    results: dict[tuple[str, int], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        s3 = None
        if "s3" in storages:
            from tests.deploy.s3server import S3Server  # boto3 and moto: only where S3 is measured

            s3 = S3Server(put_delay_s=put_delay_ms / 1000)
            stack.callback(s3.stop)
        deployments = {storage: stack.enter_context(deployment(task, storage, s3, models_file)) for storage in storages}
        for r in range(rounds):
            for storage in storages:
                order = modes if r % 2 == 0 else modes[::-1]
                for pending in order:
                    row = phase(deployments[storage], task, jobs, pending, storage, size, steps, torch_threads,
                                warmup)
                    results.setdefault((storage, pending), []).append(row)
                    out(f"  round {r + 1} {storage:5} overlap {'on ' if pending else 'off'}: "
                        f"duty {row['duty']:.1%}, {row['jobs_per_s']:.2f} jobs/s")
    median = {key: sorted(rows, key=lambda row: row["jobs_per_s"])[len(rows) // 2] for key, rows in results.items()}
    out("")
    threads = f"torch on {torch_threads} thread{'s' * (torch_threads > 1)}" if torch_threads else "torch's threads"
    name = {"turbo": "Turbo", "sdxl": "SDXL"}[task]
    out(f"{jobs} {'tiny ' if models_file is None else ''}{name} {size}² {steps}-step jobs queued at once, one worker, "
        f"{threads}"
        f"{f', S3 uploads +{put_delay_ms:g} ms' if 's3' in storages else ''}")
    out("| storage | overlap | duty | jobs/s | pipeline ms/job | encode ms | store ms | device idle ms/job | "
        "page faults/job |")
    out("|---|---|---|---|---|---|---|---|---|")
    for (storage, pending), row in sorted(median.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        out(f"| {storage} | {'on' if pending else 'off'} | {row['duty']:.1%} | {row['jobs_per_s']:.2f} | "
            f"{row['inference_s'] * 1000:.1f} | {row['encode_s'] * 1000:.1f} | {row['store_s'] * 1000:.1f} | "
            f"{row['waited_s'] * 1000:.1f} | {row['faults_per_job']:.0f} |")
    ratios = {}
    for storage in storages if set(modes) == {2, 0} else ():
        on, off = median[(storage, 2)], median[(storage, 0)]
        ratios[storage] = on["jobs_per_s"] / off["jobs_per_s"]
        out(f"{storage}: jobs/s on/off {ratios[storage]:.2f}x; duty on {on['duty']:.1%} (goal ≥ {GOAL_DUTY:.0%})")
    if "s3" in ratios:
        out(f"S3 speed-up goal ≥ {GOAL_S3_SPEEDUP:.2f}x: {'met' if ratios['s3'] >= GOAL_S3_SPEEDUP else 'NOT met'}")
    return {"phases": {f"{s}-{'on' if p else 'off'}": rows for (s, p), rows in results.items()}, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(WORKLOADS), default="turbo")
    parser.add_argument("--jobs", type=int, default=None, help="default: 200 Turbo jobs, 12 SDXL")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--storage", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    parser.add_argument("--put-delay-ms", type=float, default=50.0)
    parser.add_argument("--size", type=int, default=None, help="default: 512 (Turbo), 1024 (SDXL)")
    parser.add_argument("--steps", type=int, default=None, help="default: 1 (Turbo), 30 (SDXL)")
    parser.add_argument("--models-file", type=Path, help="a models file's Turbo instead of the tiny profile's")
    parser.add_argument("--torch-threads", type=int, default=1, help="the worker's torch threads (0: torch's own)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workload = WORKLOADS[args.task]
    args.jobs = args.jobs or (200 if args.task == "turbo" else 12)
    args.size, args.steps = args.size or workload["size"], args.steps or workload["steps"]
    figures = run(args.task, args.jobs, args.rounds, args.storage, args.put_delay_ms, args.size, args.steps,
                  args.models_file, args.torch_threads)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
