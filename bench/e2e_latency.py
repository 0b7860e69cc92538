"""End-to-end latency next to the worker's own inference time, per task, on the tiny profile.

Starts `fresco up` (embedded Redis, API, one worker) in a temporary data dir, measures the time to
`/readyz` 200, then sends N jobs per task at the contract's default parameters, one at a time, with
`Prefer: wait`. Prints medians of the client-measured latency, the worker's `inference_s`, their
difference (what the service adds: HTTP, Redis, queue pick-up, encode, store), and the worker's RSS.

    .venv/bin/python bench/e2e_latency.py [--jobs 10] [--port 8077]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image


def image_b64(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(up_pid: int) -> int:
    for pid in children_of(up_pid):
        if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise RuntimeError("no worker process found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--port", type=int, default=8077)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="fresco-bench-")
    env = {**os.environ, "FRESCO_DATA_DIR": data, "FRESCO_PORT": str(args.port), "FRESCO_LOG_LEVEL": "WARNING",
           "FRESCO_WORKER_METRICS_PORT": "0"}
    base = f"http://127.0.0.1:{args.port}"
    started = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 120:
                raise RuntimeError("not ready after 120 s")
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        pid = worker_pid(up.pid)
        rss_start = rss_mb(pid)
        img = image_b64(1024, 576)
        bodies = {
            "turbo": {"task": "turbo", "prompt": "a red fox in the snow"},
            "sdxl": {"task": "sdxl", "prompt": "a lighthouse at dusk"},
            "img2img": {"task": "img2img", "prompt": "a watercolor", "image": image_b64(1024, 1024)},
            "svd": {"task": "svd", "image": img},
        }
        print(f"fresco up -> /readyz 200: {ready_s:.2f} s   (worker RSS after start: {rss_start:.0f} MB)")
        print(f"{'task':8} {'jobs':>4} {'end-to-end p50':>15} {'inference p50':>14} {'added p50':>10}  params")
        with httpx.Client(base_url=base, timeout=300) as client:
            for task, body in bodies.items():
                e2e, inference, added = [], [], []
                for _ in range(args.jobs):
                    t0 = time.perf_counter()
                    r = client.post("/generate", json=body, headers={"Prefer": "wait=60"})
                    elapsed = time.perf_counter() - t0
                    job = r.json()
                    assert job["status"] == "succeeded", job
                    e2e.append(elapsed)
                    inference.append(job["timings"]["inference_s"])
                    added.append(elapsed - job["timings"]["inference_s"])
                p = job["params"]
                shape = f"{p['width']}x{p['height']}, {p['steps']} steps" + (
                    f", {p['num_frames']} frames" if task == "svd" else "")
                print(f"{task:8} {args.jobs:4d} {statistics.median(e2e) * 1000:12.0f} ms "
                      f"{statistics.median(inference) * 1000:11.0f} ms {statistics.median(added) * 1000:7.0f} ms  {shape}")
        print(f"worker RSS: {rss_start:.0f} MB after start, {rss_mb(pid):.0f} MB after {4 * args.jobs} jobs")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
