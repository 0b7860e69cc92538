"""bench/train.py in its quick mode (64², a few steps of each part) for tiny SD, and bench/gpu.py's
training section on the tiny SDXL on the CPU: every part runs and reports its figures. Not the targets
(x1.10 per step, flat RSS): those are for BENCHMARKS.md, and this machine is noisy; only what does not
depend on timing is held to its value (a resumed run reproduces the uninterrupted one exactly)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from bench import gpu
from bench import train as train_bench


@pytest.mark.parametrize("family", ["sd"])  # SDXL's side runs the same code (BENCHMARKS.md §12 has both)
def test_train_bench_quick(family, tmp_path, capsys):
    out = tmp_path / "report.json"
    threads = torch.get_num_threads()
    assert train_bench.main(["--quick", "--family", family, "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # its one thread is set back
    text = capsys.readouterr().out
    (r,) = json.loads(out.read_text())
    assert r["family"] == family and r["resolution"] == 64 and r["rank"] == 16

    c = r["compare"]
    for side in ("fresco", "bare"):
        f = c[side]
        assert 0 < f["step_p50_s"] < 10 and 0 < f["cpu_p50_s"] and f["prepare_s"] > 0 and len(f["round_p50_s"]) == 1
        assert math.isfinite(f["first_loss"]) and math.isfinite(f["last_loss"])
    assert c["fresco"]["save_s"] > 0 and c["bare"]["save_s"] is None
    assert c["ratio"] > 0 and c["cpu_ratio"] > 0 and c["target"] == 1.10
    assert re.search(r"ratio fresco/bare per step  x\d+\.\d{3} wall .* target <= 1\.10: (met|NOT met)", text)
    assert re.search(r"^  bare diffusers \+ peft +[\d.]+ ms", text, re.M)
    assert re.search(r"^  Fresco trainer +[\d.]+ ms", text, re.M)

    m = r["memory"]
    assert m["steps"] == 10 and m["rss_from_step"] == 1 and list(m["rss"]) == [str(i) for i in range(1, 11)]
    assert m["peak_rss"] >= m["rss_last"] > 0 and len(m["losses"]) == 10 and abs(m["growth"]) < 0.5
    assert re.search(r"RSS at step 1 [\d.]+ MiB -> step 10 [\d.]+ MiB: [-+][\d.]+%", text)

    learnt = r["learns"]
    assert learnt["denoise_loss_before"] > 0 and learnt["denoise_loss_after"] > 0
    assert learnt["image_mean_abs_diff"] > 0  # the LoRA changes the output
    assert "fixed-seed image of 'a red circle', with vs without the LoRA" in text

    resumed = r["resume"]
    assert resumed["resumed_from"] == 2 and len(resumed["uninterrupted"]) == 4 and len(resumed["resumed"]) == 2
    assert resumed["loss_max_abs_diff"] == 0 and resumed["adapter_max_abs_diff"] == 0
    assert re.search(r"^ +4 +[\d.]+ +[\d.]+  \(resumed\)$", text, re.M)
    assert f"tiny {family:4} 64²: per step x" in text


def test_gpu_bench_trains_an_sdxl_lora_tiny(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert gpu.main(["--tiny", "--only", "train", "--train-steps", "3", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["workload"] == "train" and row["model"] == "sdxl" and row["size"] == "128x128"
    assert row["rank"] == 16 and row["batch_size"] == 1 and row["gradient_checkpointing"]
    assert row["steps"] == 3 and row["timed_steps"] == 1 and len(row["losses"]) == 3
    assert all(math.isfinite(v) for v in row["losses"])
    assert row["it_per_s"] > 0 and row["minutes_per_1000"] > 0 and row["prepare_s"] > 0
    assert row["peak_bytes"] is None and row["optimizer"] == "torch.optim.AdamW"  # the CPU: no peak to read
    text = capsys.readouterr().out
    assert re.search(r"it/s \(median step \d+ ms", text)
    assert "anchor: Replicate's SDXL trainer takes about 10 to 15 minutes for 1,000 steps on an L40S" in text
