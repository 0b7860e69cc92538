"""Resident models: no job loads a model, and the worker's memory stays flat over many jobs.

One worker process serves `--jobs` tiny jobs one after another (Turbo 512², or with `--mix` every task
in turn: Turbo, SDXL base + refiner, img2img, SVD, at small sizes). The table gives the worker's RSS
(from /proc) after start, after the first job of each kind, and every `--every` jobs, and its
`fresco_model_loads_total` (from its /metrics) before the first job and after the last: the loads
must not move, and RSS must grow by less than 5% from the first job of each kind to the last job.

    .venv/bin/python bench/memory.py [--jobs 500] [--mix] [--every 100]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import Deployment, rss_bytes, turbo_body  # noqa: E402

TARGET_GROWTH = 0.05


def model_loads(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "fresco_model_loads":
            return {s.labels["model"]: s.value for s in family.samples if s.name.endswith("_total")}
    return {}


def _image(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.effect_noise((width, height), 50).convert("RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bodies(mix: bool) -> list[dict]:
    if not mix:
        return [turbo_body()]
    image = _image(256, 256)
    return [turbo_body(), {"task": "sdxl", "prompt": "a lighthouse", "width": 256, "height": 256, "steps": 4},
            {"task": "img2img", "prompt": "watercolor", "image": image, "steps": 4},
            {"task": "svd", "image": image, "width": 128, "height": 128, "num_frames": 4, "steps": 2}]


def measure(jobs: int, mix: bool, every: int, out=print) -> dict:
    tasks = "sdxl,turbo,img2img,svd" if mix else "turbo"
    with Deployment(tasks=tasks) as dep:
        dep.wait_ready()
        pid, port = dep.workers[0].pid, dep.worker_metrics_ports[0]
        loads_before = model_loads(port)
        rss = {0: rss_bytes(pid)}
        kinds = bodies(mix)
        started = time.monotonic()
        with httpx.Client(base_url=dep.url, timeout=120) as client:
            for i in range(1, jobs + 1):
                body = dict(kinds[(i - 1) % len(kinds)], seed=i)
                job = client.post("/generate", json=body, headers={"Prefer": "wait=60"}).json()
                if job.get("status") != "succeeded":
                    raise RuntimeError(f"job {i} did not succeed: {json.dumps(job)[:400]}")
                if i <= len(kinds) or i % every == 0 or i == jobs:
                    rss[i] = rss_bytes(pid)
        loads_after = model_loads(port)
    warm = len(kinds)  # every kind of job has run once: each one's working memory is allocated
    first, last = rss[warm], rss[jobs]
    growth = (last - first) / first
    out(f"{jobs} {'mixed (turbo, sdxl, img2img, svd)' if mix else 'Turbo 512x512'} jobs in "
        f"{time.monotonic() - started:.0f} s, one worker")
    out(f"{'after job':>10} {'RSS MiB':>9}")
    for i, value in rss.items():
        out(f"{i:>10} {value / 2**20:9.1f}")
    out(f"RSS growth from job {warm} to job {jobs}: {growth * 100:+.2f}%  (target < {TARGET_GROWTH * 100:.0f}%: "
        f"{'met' if growth < TARGET_GROWTH else 'NOT met'})")
    same = loads_before == loads_after and bool(loads_before)
    out(f"fresco_model_loads_total before the first job {loads_before}, after the last {loads_after}: "
        f"{'no model loaded by any job' if same else 'CHANGED'}")
    return {"jobs": jobs, "mix": mix, "rss": rss, "growth": growth, "loads_before": loads_before,
            "loads_after": loads_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--mix", action="store_true", help="every task in turn, not only Turbo")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.jobs, args.mix, args.every)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
