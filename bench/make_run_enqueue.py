"""The enqueue rate of `make run` (`fresco up`: an embedded Redis, the API, one worker, the tiny profile)
under `hey -c 32`, for this checkout and, with `--against`, another one, side by side in turns.

    .venv/bin/python bench/make_run_enqueue.py --against /tmp/orig [--turns 3] [--requests 3000]

Each turn starts one tree's `fresco up` as `make run` does, in a fresh data directory, with that tree's
own code (its directory first on the import path, so a worktree of another commit runs as itself with
this environment's packages), waits for /readyz, sends `--requests` POST /generate bodies (the tiny Turbo
job of the README's tour) from `hey` with `--concurrency` connections, reads hey's requests/s, and stops
it. The worker runs the jobs meanwhile, as it does under `make run`. The trees alternate (A B A B ...), so
that the machine's drift hits both alike; the summary gives each tree's median and the ratio.
`hey` is Debian's package (`apt-get install hey`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import free_port, wait_until_ok  # noqa: E402

BODY = {"task": "turbo", "prompt": "a red fox in the snow", "seed": 7}


def turn(tree: Path, requests: int, concurrency: int) -> dict:
    """One `fresco up` of `tree`, loaded by hey: requests/s and the answers' statuses."""
    data = Path(tempfile.mkdtemp(prefix="fresco-enqueue-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESCO_")}
    env.update(FRESCO_DATA_DIR=str(data), FRESCO_PORT=str(port), FRESCO_WORKER_METRICS_PORT=str(free_port()),
               FRESCO_LOG_LEVEL="WARNING", PYTHONPATH=str(tree))
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up"], cwd=tree, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        if wait_until_ok(base + "/readyz", [up], 120) != "ok":
            raise RuntimeError(f"fresco up of {tree} did not become ready")
        httpx.post(base + "/generate", json=BODY, timeout=30).raise_for_status()  # one to warm the path
        body = data / "body.json"
        body.write_text(json.dumps(BODY))
        out = subprocess.run(["hey", "-n", str(requests), "-c", str(concurrency), "-m", "POST",
                              "-T", "application/json", "-D", str(body), base + "/generate"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        shutil.rmtree(data, ignore_errors=True)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    statuses = {code: int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return {"rate": rate, "statuses": statuses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout of Fresco, measured alternately")
    parser.add_argument("--turns", type=int, default=3, help="`fresco up` runs per tree")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line too")
    args = parser.parse_args(argv)
    if not shutil.which("hey"):
        print("bench/make_run_enqueue.py needs `hey` (apt-get install hey)", file=sys.stderr)
        return 2
    trees = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    rates: dict[str, list[float]] = {name: [] for name in trees}
    print(f"reproduce: .venv/bin/python bench/make_run_enqueue.py {' '.join(argv or sys.argv[1:])}")
    for i in range(args.turns):
        for name, tree in (trees.items() if i % 2 == 0 else reversed(trees.items())):
            started = time.monotonic()
            result = turn(tree, args.requests, args.concurrency)
            rates[name].append(result["rate"])
            print(f"turn {i + 1} {name:8s} {result['rate']:8.1f} requests/s  statuses {result['statuses']}  "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            if set(result["statuses"]) != {"202"}:
                print("  some answers were not 202: the rate is not only enqueues", flush=True)
    summary = {name: {"rates": values, "median": statistics.median(values)} for name, values in rates.items()}
    line = "  ".join(f"{name}: median {s['median']:.1f} requests/s" for name, s in summary.items())
    if args.against:
        summary["ratio"] = summary["this"]["median"] / summary["against"]["median"]
        line += f"   ratio this/against: {summary['ratio']:.3f}"
    print(line)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
