"""bench/edit.py at tiny scale, in this process, with --json: every comparison runs (inpaint against img2img,
`mask_padding` against the whole canvas, upscaling tiled against whole, the peak RSS of each in a fresh
process) and reports its figures. Not the goals (inpaint <= 1.25x img2img, padding faster, tiled RSS well
under whole): those are for BENCHMARKS.md, and this machine is noisy; only what does not depend on timing is
held to its value (the crop's working size, the tile counts, the seams' largest difference)."""

from __future__ import annotations

import json
import re

import torch

from bench import edit


def test_edit_bench_tiny(capsys):
    threads = torch.get_num_threads()
    argv = ["--size", "64", "--steps", "2", "--rounds", "1", "--large", "128", "--small", "16", "--up-size", "96",
            "--tile", "64", "--rss-size", "128", "--rss-tile", "64", "--json"]
    assert edit.main(argv) == 0
    assert torch.get_num_threads() == threads  # its one thread is set back
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("reproduce: .venv/bin/python bench/edit.py --size 64 --steps 2 --rounds 1 ")
    text, summary = "\n".join(lines), json.loads(lines[-1])
    assert re.search(r"^inpaint / img2img, tiny SD 64², 2 steps, .*: \d+ ms / \d+ ms = [\d.]+x  "
                     r"goal <= 1\.25: (met|NOT met)$", text, re.M)
    assert re.search(r"^mask_padding 32 / whole canvas, a 16² mask in 128², .* = [\d.]+x  goal < 1: (met|NOT met)  "
                     r"\(crop \d+x\d+ worked at 512x512", text, re.M)
    assert re.search(r"^upscale tiny-esrgan x2 \(ESRGAN\), 96² input: tiled \(64 px, 4 tiles, [\d.]+x the pixels\) "
                     r"[\d.]+ MP/s, whole [\d.]+ MP/s", text, re.M)
    assert re.search(r"^peak RSS growth upscaling 128² \(x2, output 256², .*\): tiled \(64 px, 9 tiles\) \d+ MiB", text,
                     re.M)

    assert (summary["threads"], summary["rounds"]) == (1, 1) and summary["seconds"] > 0
    inpaint = summary["inpaint"]
    for key in ("inpaint_ms", "img2img_ms", "inpaint_ratio", "padded_ms", "whole_ms", "padding_ratio"):
        assert inpaint[key] > 0, key
    # a 16² mask blurred by 4 px plus 32 px of padding: a square crop, worked at tiny SD's native 512²
    assert inpaint["worked_at"] == [512, 512] and inpaint["crop"][0] == inpaint["crop"][1] < 128

    upscale = summary["upscale"]
    assert upscale["tiles"] == 4 and upscale["work"] > 1 and upscale["tiled_mp_s"] > 0 and upscale["whole_mp_s"] > 0
    assert upscale["rate_ratio"] > 0 and 0 < upscale["max_diff"] <= 16  # only the seams differ, faintly

    rss = summary["rss"]
    assert rss["tiles"] == 9 and rss["canvas_mib"] == 256 * 256 * 3 / 2**20
    assert rss["tiled_rss_mib"] >= 0 and rss["whole_rss_mib"] > 0 and rss["tiled_s"] > 0 and rss["whole_s"] > 0
