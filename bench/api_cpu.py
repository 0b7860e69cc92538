"""The API's own CPU time per request: `GET /jobs/{id}` and `POST /generate` through the ASGI app in
one process, with no client, no network and no worker (an embedded Redis answers). CPU time, not wall
time, so the figure holds on a busy machine far better than the throughput bench's rates do.

    python bench/api_cpu.py                      # this checkout
    python bench/api_cpu.py --against /tmp/orig  # and another checkout of Fresco, alternated, with ratios

`--against` runs the same measurement in a fresh process of each tree, in turns (A B A B ...), so
that drift of the machine hits both alike; e.g. the commit before a change, checked out with
`git worktree add /tmp/orig <commit>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def _call(app, path: str, method: str = "GET", body: bytes = b"") -> int:
    """One request straight into the ASGI app; its status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("bench", 80)}
    received = False

    async def receive():
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    status = []

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


def measure(n: int = 1000, rounds: int = 7) -> dict:
    """This process's tree: CPU µs per request of each route."""
    sys.path.insert(0, os.getcwd())
    try:
        from service.api.app import create_app
    except ImportError:  # a checkout from before service/api/
        from service.app import create_app
    from service.settings import Settings

    async def main() -> dict:
        settings = Settings(data_dir=tempfile.mkdtemp(prefix="fresco-api-cpu-"), reaper_interval_s=0,
                            queue_cap={"turbo": 0})
        app = create_app(settings)
        body = json.dumps({"task": "turbo", "prompt": "a red fox in the snow", "seed": 7}).encode()
        async with app.router.lifespan_context(app):
            for _ in range(300):  # warm up; and a queued job to read back
                assert await _call(app, "/generate", "POST", body) == 202
            job_id = (await app.state.ctx.redis.keys("fresco:job:*"))[0].decode().rsplit(":", 1)[-1]
            path = f"/jobs/{job_id}"
            assert await _call(app, path) == 200
            results = {}
            for route, method, target, payload, count in (("GET /jobs/{id}", "GET", path, b"", n),
                                                         ("POST /generate", "POST", "/generate", body, n // 2)):
                samples = []
                for _ in range(rounds):
                    c0 = time.process_time()
                    for _ in range(count):
                        await _call(app, target, method, payload)
                    samples.append((time.process_time() - c0) / count * 1e6)
                results[route] = statistics.median(samples)
        return results

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout of Fresco to measure alternately")
    parser.add_argument("--turns", type=int, default=3, help="fresh processes per tree (with --against)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.requests)))
        return 0
    trees = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.turns if args.against else 1):
        for name, tree in trees.items():
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--requests",
                                  str(args.requests)], cwd=tree, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {name: {route: [round(r[route], 1) for r in rs] for route in rs[0]} for name, rs in runs.items()}
    print("CPU µs per request (one value per fresh process):")
    for route in summary["this"]:
        line = f"  {route:16} this: {summary['this'][route]}"
        if args.against:
            this, other = statistics.median(summary["this"][route]), statistics.median(summary["against"][route])
            line += f"   against: {summary['against'][route]}   ratio this/against: {this / other:.3f}"
        print(line)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
