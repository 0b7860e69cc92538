"""bench/adapters.py at tiny scale, through its command line with --json: every figure is in the summary,
every cold job loaded one LoRA, and no more LoRAs than the residency were ever loaded. Not the timing
or memory goals: those are for BENCHMARKS.md, and this machine is noisy."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_adapters_bench_tiny():
    # One torch thread: the test must not depend on having both cores to itself (with two threads and
    # another busy process, each OpenMP region waits for the descheduled thread).
    argv = ["bench/adapters.py", "--rounds", "1", "--warmup", "1", "--cycle-loras", "4", "--residency", "2",
            "--cycle-jobs", "6", "--rss-from", "3", "--threads", "1", "--json"]
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("reproduce: .venv/bin/python bench/adapters.py ")
    summary = json.loads(lines[-1])
    for label in ("no LoRA", "resident LoRA", "cold LoRA", "resident / none", "cold load cost", "RSS growth",
                  "max resident LoRAs"):
        assert label in r.stdout, label

    assert (summary["rounds"], summary["cycle_jobs"], summary["residency"], summary["cycle_loras"]) == (1, 6, 2, 4)
    assert summary["torch_threads"] == 1
    for variant in ("none", "resident", "cold"):
        assert summary["wall_ms"][variant] > 0 and summary["inference_ms"][variant] > 0
        assert summary["wall_p95_ms"][variant] >= summary["wall_ms"][variant]
    for key in ("resident_ratio", "inference_ratio", "adapter_load_mean_ms", "rss_start_mib", "rss_end_after_gc_mib"):
        assert summary[key] > 0, key
    assert isinstance(summary["cold_load_ms"], float) and isinstance(summary["resident_cost_ms"], float)
    assert isinstance(summary["rss_growth_pct"], float)
    assert set(summary["rss_mib"]) == {"1", "3", "6"} and all(v > 0 for v in summary["rss_mib"].values())
    # Every job of the cycling worker evicted one LoRA and loaded one; the resident one never left.
    assert summary["cycle_loads_per_job"] == 1.0 and summary["cold_loads_per_job"] == 1.0
    assert summary["adapter_loads"] == summary["rounds"]  # one cold load a counted round
    assert summary["resident_worker_kept_its_lora"] is True
    # Never more LoRAs loaded than the residency, by the worker's count and by PEFT's.
    assert summary["max_resident"] == 2 and summary["max_peft_adapters"] == 2
    assert summary["goals"]["max_resident"] is True
    assert set(summary["goals"]) == {"resident_ratio", "rss_growth", "max_resident"}
