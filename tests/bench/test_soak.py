"""The chaos soak (bench/soak.py), 90 seconds of it: `fresco up` on the small tiny profile with two workers, three
API keys sending every task, webhooks to a flaky receiver, cancels; a worker killed twice, the embedded
Redis once, the webhook dispatcher once. Every check passes: nothing lost, stuck, doubled or leaked. It runs
alone in its xdist group, handed out first (tests/scheduling.py), as its own process tree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(600)
def test_a_90_second_chaos_soak_loses_nothing():
    r = subprocess.run([sys.executable, "bench/soak.py", "--minutes", "1.5", "--profile", "small", "--workers", "2",
                        "--in-flight", "2", "--rate", "0.5", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=580)
    lines = r.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"no summary:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    summary = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    failed = [c["name"] for c in summary["checks"] if not c["ok"]]
    assert not failed, f"failed: {failed}\n{table}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary["lost"] == 0 and summary["stuck"] == 0
    # A load, not a trickle (--rate: 1.5 submits a second in all, so that the soak leaves the other tests
    # running beside it some of the machine; unthrottled it sent about 600 and took 1.4 cores for 2 minutes).
    assert summary["accepted"] >= 30, table
    kinds = {f["kind"] for f in summary["faults"]}
    assert kinds == {"worker", "redis", "dispatcher"}, summary["faults"]
    tasks = {kind.split("/")[0] for kind in summary["per_task"]}
    assert tasks >= {"txt2img", "sdxl", "turbo", "img2img", "inpaint", "upscale", "svd"}, summary["per_task"]
