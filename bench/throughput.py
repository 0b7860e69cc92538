"""Request throughput: POST /generate (enqueue) and GET /jobs/{id} (status) rates, p50/p99, errors.

A load generator on this machine, over loopback, against a Fresco API with no worker consuming (so
the queue only grows; the queue cap is turned off, and Redis is emptied between phases so no job grows
old enough for the reaper's lost-job check), at each concurrency (connections, each sending its next
request as soon as the last is answered) and each number of API processes (`fresco api --processes`).

Load generators: `wrk` (C, one thread, Lua for the POST body and the job ids) when installed
(`apt-get install wrk`), or the built-in asyncio client (uvloop, raw HTTP/1.1 keep-alive, no HTTP
library in the way). `--client both` runs both on the same phase, to show which one is the bottleneck.

    .venv/bin/python bench/throughput.py [--processes 1 2] [--concurrency 1 16 64] [--duration 5]
                                         [--client auto|wrk|asyncio|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Deployment, percentile  # noqa: E402

TARGETS = {"enqueue": (1200, 2000), "status": (2500, 4000)}  # target, aim (requests/s)
POST_BODY = json.dumps({"task": "turbo", "prompt": "a red fox in the snow", "seed": 7}, separators=(",", ":"))
NO_CAP = json.dumps({"sdxl": 0, "turbo": 0, "img2img": 0, "svd": 0})

WRK_SCRIPT = r"""
local path = os.getenv("FRESCO_BENCH_IDS")
if path then
  ids = {}
  for line in io.lines(path) do ids[#ids + 1] = line end
  counter = 0
  request = function()
    counter = counter + 1
    return wrk.format("GET", "/jobs/" .. ids[(counter % #ids) + 1])
  end
else
  wrk.method = "POST"
  wrk.body = os.getenv("FRESCO_BENCH_BODY")
  wrk.headers["Content-Type"] = "application/json"
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'FRESCO {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# ---------------------------------------------------------------- the asyncio load generator


def _request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _connection(port: int, make_request, stop_at: float, latencies: list, counts: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    try:
        while clock() < stop_at:
            data = make_request()
            t0 = clock()
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(clock() - t0)
            if 200 <= status < 300:
                counts["ok"] += 1
            else:
                counts["non2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["errors"] += 1
    finally:
        writer.close()


async def _asyncio_load(port: int, concurrency: int, duration: float, kind: str, ids: list[str]) -> dict:
    counter = [0]
    if kind == "enqueue":
        post = _request_bytes("POST", "/generate", POST_BODY.encode())

        def make():
            return post
    else:
        gets = [_request_bytes("GET", f"/jobs/{i}") for i in ids]

        def make():
            counter[0] += 1
            return gets[counter[0] % len(gets)]
    latencies: list[float] = []
    counts = {"ok": 0, "non2xx": 0, "errors": 0}
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, make, start + duration, latencies, counts) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "rate": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "errors": counts["errors"], "non2xx": counts["non2xx"]}


def asyncio_load(port: int, concurrency: int, duration: float, kind: str, ids: list[str]) -> dict:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_asyncio_load(port, concurrency, duration, kind, ids))


def wrk_load(port: int, concurrency: int, duration: float, kind: str, ids: list[str]) -> dict:
    wrk = shutil.which("wrk")
    if not wrk:
        raise RuntimeError("wrk is not installed (apt-get install wrk); use --client asyncio")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "fresco.lua"
        script.write_text(WRK_SCRIPT)
        env = {**os.environ, "FRESCO_BENCH_BODY": POST_BODY}
        env.pop("FRESCO_BENCH_IDS", None)
        if kind == "status":
            (Path(tmp) / "ids").write_text("\n".join(ids) + "\n")
            env["FRESCO_BENCH_IDS"] = str(Path(tmp) / "ids")
        url = f"http://127.0.0.1:{port}" + ("/generate" if kind == "enqueue" else "/")
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                              "-s", str(script), url], env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FRESCO ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("FRESCO "):])
    return {"requests": r["requests"], "rate": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "errors": r["errors"], "non2xx": r["non2xx"]}


# ---------------------------------------------------------------- phases


def make_jobs(port: int, n: int) -> list[str]:
    """`n` queued jobs to read back in the status phase."""
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ids = []
        req = _request_bytes("POST", "/generate", POST_BODY.encode())
        for _ in range(n):
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))[15:])
            ids.append(json.loads(await reader.readexactly(length))["id"])
        writer.close()
        return ids
    return asyncio.run(go())


def run(processes: list[int], concurrency: list[int], duration: float, clients: list[str], out=print,
        status_jobs: int = 500, api_env: dict | None = None) -> list[dict]:
    rows = []
    for p in processes:
        env = {"FRESCO_QUEUE_CAP": NO_CAP, **(api_env or {})}
        with Deployment(workers=0, api_processes=p, api_env=env) as dep:
            dep.wait_ready()
            r = dep.redis()
            for kind in ("enqueue", "status"):
                for c in concurrency:
                    for client in clients:
                        r.flushdb()
                        ids = make_jobs(dep.port, status_jobs) if kind == "status" else []
                        load = wrk_load if client == "wrk" else asyncio_load
                        load(dep.port, c, min(1.0, duration), kind, ids)  # warm-up: connections, caches
                        result = load(dep.port, c, duration, kind, ids)
                        row = {"processes": p, "kind": kind, "concurrency": c, "client": client, **result}
                        rows.append(row)
                        target, aim = TARGETS[kind]
                        mark = "aim met" if result["rate"] >= aim else ("target met" if result["rate"] >= target
                                                                          else "below target")
                        out(f"{p:>5} {kind:8} {c:>5} {client:8} {result['rate']:9.0f}/s {result['p50_ms']:8.2f} "
                            f"{result['p99_ms']:8.2f} {result['errors']:>6} {result['non2xx']:>6}   {mark}")
            r.flushdb()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--client", choices=["auto", "wrk", "asyncio", "both"], default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    clients = {"auto": ["wrk" if shutil.which("wrk") else "asyncio"], "both": ["wrk", "asyncio"]}.get(
        args.client, [args.client])
    print(f"targets: enqueue {TARGETS['enqueue'][0]}/s (aim {TARGETS['enqueue'][1]}), "
          f"status {TARGETS['status'][0]}/s (aim {TARGETS['status'][1]}); {os.cpu_count()} CPUs, {args.duration:g} s "
          f"per phase")
    print(f"{'procs':>5} {'phase':8} {'conc':>5} {'client':8} {'rate':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'non2xx':>6}")
    rows = run(args.processes, args.concurrency, args.duration, clients)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
