"""Fair share against first come, first served, side by side in one run: one API key floods the queue while
three others send a job now and then, the way an interactive user does beside a batch job.

Each phase starts a deployment with one worker (tiny Turbo; each denoising step held `--step-delay` seconds,
so a job's length is the same whatever the machine does meanwhile) and API keys `flood`, `k1`..`k3`, with
FRESCO_FAIR_SHARE on, then off. The flood key queues `--flood` jobs at once; each light key then sends
`--light` jobs, one at a time at random moments over the time the flood takes to run. When every job has
ended, per key: its jobs' wait (queued to started) p50 and p95, in seconds and in job lengths (the median
run time of a job); Jain's index over the keys' throughput while the light keys were sending, each key's
jobs started over its max-min fair share of them (1: every key got its fair share; 1/n: one key got it
all); and the total throughput (jobs a second from the first submit to the last end).
Goals: the light keys' p95 wait at most a few job lengths with fair share on; throughput within 3% of
first come, first served.

    .venv/bin/python bench/fairness.py [--flood 200] [--light 10] [--step-delay 0.1] [--steps 2] [--seed 1]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Deployment, percentile, turbo_body  # noqa: E402
from service.api.auth import digest  # noqa: E402

LIGHT_KEYS = ("k1", "k2", "k3")
KEYS = {name: f"fresco-bench-{name}" for name in ("flood", *LIGHT_KEYS)}
GOAL_P95_JOB_LENGTHS, GOAL_THROUGHPUT = 4.0, 0.97
TERMINAL = ("succeeded", "failed", "canceled")


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def jain(values: list[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n sum x^2); 1 when all are equal."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 1.0


def max_min_shares(demands: dict[str, int], capacity: int) -> dict[str, float]:
    """The max-min fair split of `capacity` jobs among keys that asked for `demands` (water-filling)."""
    shares, left, open_ = {}, float(capacity), dict(demands)
    while open_:
        each = left / len(open_)
        small = {k: d for k, d in open_.items() if d <= each}
        if not small:
            shares.update({k: each for k in open_})
            break
        for k, d in small.items():
            shares[k] = float(d)
            left -= d
            del open_[k]
    return shares


async def phase(fair: bool, args) -> dict:
    api_keys = json.dumps({name: digest(key) for name, key in KEYS.items()})
    env = {"FRESCO_API_KEYS": api_keys, "FRESCO_RATE_LIMIT_PER_MINUTE": "0", "FRESCO_FAIR_SHARE": str(fair).lower(),
           "FRESCO_STEP_DELAY_S": str(args.step_delay)}
    import httpx

    with Deployment(env=env, tasks="turbo") as stack:
        stack.wait_ready()
        clients = {name: httpx.AsyncClient(base_url=stack.url, timeout=60,
                                           headers={"Authorization": f"Bearer {key}"}) for name, key in KEYS.items()}
        body = turbo_body(args.size, args.steps)
        try:
            warm = [(await clients["k1"].post("/generate", json=body, headers={"Prefer": "wait=60"})).json()
                    for _ in range(3)]
            length = statistics.median(seconds(w["finished_at"]) - seconds(w["created_at"]) for w in warm)
            submitted: dict[str, list[tuple[str, float]]] = {name: [] for name in KEYS}

            async def send(name: str) -> None:
                r = await clients[name].post("/generate", json={**body, "seed": random.randrange(2**32)})
                r.raise_for_status()
                submitted[name].append((r.json()["id"], time.time()))

            t0 = time.time()
            for start in range(0, args.flood, 20):
                await asyncio.gather(*(send("flood") for _ in range(min(20, args.flood - start))))
            span = args.flood * length  # about how long the flood takes to run

            async def light(name: str) -> None:
                moments = sorted(random.uniform(0, span * 0.9) for _ in range(args.light))
                for at in moments:
                    await asyncio.sleep(max(0.0, t0 + at - time.time()))
                    await send(name)

            await asyncio.gather(*(light(name) for name in LIGHT_KEYS))
            window_end = time.time()
            views: dict[str, list[dict]] = {name: [] for name in KEYS}
            for name, jobs in submitted.items():
                for job_id, _ in jobs:
                    while True:
                        view = (await clients[name].get(f"/jobs/{job_id}", params={"wait": 30})).json()
                        if view["status"] in TERMINAL:
                            break
                    views[name].append(view)
        finally:
            for c in clients.values():
                await c.aclose()
    runs = [seconds(v["finished_at"]) - seconds(v["started_at"]) for vs in views.values() for v in vs]
    job_length = statistics.median(runs)
    rows = {}
    demands, started = {}, {}
    for name, vs in views.items():
        waits = [seconds(v["started_at"]) - seconds(v["created_at"]) for v in vs]
        demands[name] = sum(1 for _, at in submitted[name] if at <= window_end)
        started[name] = sum(1 for v in vs if seconds(v["started_at"]) <= window_end)
        rows[name] = {"jobs": len(vs), "succeeded": sum(v["status"] == "succeeded" for v in vs),
                      "wait_p50_s": percentile(waits, 50), "wait_p95_s": percentile(waits, 95),
                      "wait_p50_jobs": percentile(waits, 50) / job_length,
                      "wait_p95_jobs": percentile(waits, 95) / job_length}
    fair_shares = max_min_shares(demands, sum(started.values()))
    end = max(seconds(v["finished_at"]) for vs in views.values() for v in vs)
    return {"fair": fair, "keys": rows, "job_length_s": job_length, "window": {"demands": demands, "started": started},
            "jain": jain([started[k] / fair_shares[k] for k in KEYS if fair_shares[k] > 0]),
            "throughput": sum(len(vs) for vs in views.values()) / (end - t0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood", type=int, default=200, help="jobs the flood key queues at once")
    p.add_argument("--light", type=int, default=10, help="jobs each light key sends over the flood's run")
    p.add_argument("--step-delay", type=float, default=0.1, help="seconds each denoising step is held")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=("fair", "fifo"), help="run one phase (the suite's check)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    results = []
    for fair in (True, False):
        if args.only and args.only != ("fair" if fair else "fifo"):
            continue
        random.seed(args.seed)  # the same arrival moments in both phases
        results.append(asyncio.run(phase(fair, args)))
    print(f"{'mode':6} {'key':6} {'jobs':>5} {'ok':>5} {'wait p50':>10} {'wait p95':>10} {'p50 jobs':>9} "
          f"{'p95 jobs':>9}")
    for r in results:
        mode = "fair" if r["fair"] else "fifo"
        for name, row in r["keys"].items():
            print(f"{mode:6} {name:6} {row['jobs']:5d} {row['succeeded']:5d} {row['wait_p50_s']:9.2f}s "
                  f"{row['wait_p95_s']:9.2f}s {row['wait_p50_jobs']:9.1f} {row['wait_p95_jobs']:9.1f}")
    if len(results) == 1:
        print(json.dumps(results[0]))
        return 0
    fair, fifo = results
    light_p95 = max(fair["keys"][k]["wait_p95_jobs"] for k in LIGHT_KEYS)
    ratio = fair["throughput"] / fifo["throughput"]
    print(f"\njob length: fair {fair['job_length_s'] * 1000:.0f} ms, fifo {fifo['job_length_s'] * 1000:.0f} ms")
    print(f"Jain's index: fair {fair['jain']:.3f}, fifo {fifo['jain']:.3f}")
    print(f"throughput: fair {fair['throughput']:.2f} jobs/s, fifo {fifo['throughput']:.2f} jobs/s, "
          f"ratio fair/fifo {ratio:.3f} (goal ≥ {GOAL_THROUGHPUT})")
    print(f"light keys' p95 wait with fair share: {light_p95:.1f} job lengths (goal ≤ {GOAL_P95_JOB_LENGTHS})")
    summary = {"phases": results, "light_p95_jobs": light_p95, "throughput_ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps({"light_p95_jobs": light_p95, "throughput_ratio": ratio, "jain_fair": fair["jain"],
                      "jain_fifo": fifo["jain"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
