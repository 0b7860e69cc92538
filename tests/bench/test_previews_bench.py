"""bench/previews.py at tiny scale, through its command line: each variant runs, a watched job publishes
the previews its cadence says and an unwatched one none, and the cost line is printed. Not the 3% goal:
that is for BENCHMARKS.md, and this machine is noisy."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_previews_bench_tiny():
    r = subprocess.run([sys.executable, "bench/previews.py", "--rounds", "1", "--size", "256", "--steps", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {m.group(1).strip(): int(m.group(2))
            for m in re.finditer(r"^(off|every 2 steps \(default\)|every step)\s+(\d+)\s", r.stdout, re.M)}
    # 4 steps (3 base + 1 refiner): every 2nd from the first step, or every one; none when unwatched
    assert rows == {"off": 0, "every 2 steps (default)": 2, "every step": 4}, r.stdout
    assert re.search(r"previews at the default cadence cost [-\d.]+% of the job's \d+ ms inference", r.stdout)
