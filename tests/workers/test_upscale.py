"""The `upscale` task on the worker (workers/upscalers.py, workers/pipelines/upscale.py): spandrel detects the
tiny ESRGAN from its weights; outputs have the input's size × scale (native or not); tiles blend into what
the whole image gives (up to the seams' rounding), in a tile's memory plus the canvas; `lanczos`; a
catalogue `scale` the weights contradict is refused; a `.pth` turned into safetensors by `fresco convert`
loads and upscales the same; spandrel imports without torchvision and leaves none behind; and one job
through a real API and worker (its output's size and recipe). The API side: tests/service/api/test_upscale.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from service.catalog import ModelSpec, tiny_catalog
from service.jobs.states import Stage
from tests.conftest import wait_status
from tests.stack import ROOT, Stack
from workers.progress import Progress
from workers.upscalers import load_upscaler, tiny_state_dict, upscaler_for


def upscaler_spec(**fields) -> ModelSpec:
    return ModelSpec(**{"name": "u", "kind": "upscaler", "source": "tiny", "device": "cpu", **fields})


@pytest.fixture(scope="module")
def tiny():
    return upscaler_for(tiny_catalog().spec("tiny-esrgan"))


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: smooth areas and detail, so seams and misaligned tiles would show."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noise = np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))


def test_spandrel_detects_the_tiny_esrgan_from_its_weights(tiny):
    from workers.spandrel_import import spandrel

    descriptor = spandrel().ModelLoader().load_from_state_dict(tiny_state_dict())
    assert descriptor.architecture.name == "ESRGAN" and descriptor.purpose == "SR"
    assert descriptor.scale == 2 == tiny_catalog().spec("tiny-esrgan").scale
    assert "unshuffle" in descriptor.tags  # Real-ESRGAN x2's layout: pixel-unshuffle in, 4x up
    assert tiny.scale == 2 and tiny.architecture == "ESRGAN" and tiny.dtype == torch.float32
    assert not any(p.requires_grad for p in tiny.descriptor.model.parameters()) and not tiny.descriptor.model.training


@pytest.mark.parametrize("scale, size", [(2.0, (146, 106)), (3.0, (219, 159)), (1.5, (110, 80)), (1.0, (73, 53))])
def test_output_is_the_input_size_times_scale(tiny, scale, size):
    out = tiny.upscale(photo(73, 53), scale, tile=0)
    assert out.size == size and out.mode == "RGB"


def test_the_output_looks_like_the_input_upscaled(tiny):
    image = photo(96, 64)
    out = tiny.upscale(image, 2.0, tile=0)
    lanczos = image.resize(out.size, Image.Resampling.LANCZOS)
    assert diff(out, lanczos).mean() < 25  # an enlarging filter plus noise, not noise
    assert diff(out, Image.new("RGB", out.size, (127, 127, 127))).mean() > 40


def test_tiles_blend_into_what_the_whole_image_gives(tiny):
    image = photo(200, 150)
    calls = []
    whole = tiny.upscale(image, 2.0, tile=0)
    tiled = tiny.upscale(image, 2.0, tile=64, on_tile=lambda: calls.append(1))
    assert len(calls) == tiny.tiles(200, 150, 64) == 4 * 3
    d = diff(whole, tiled)
    # Only the seams differ (a tile sees less context than the whole image); blending keeps them faint.
    assert d.max() <= 10 and d.mean() < 0.5, (d.max(), d.mean())
    # an image no larger than a tile is one tile: exactly the whole image's result
    small = photo(64, 48, seed=1)
    assert tiny.tiles(64, 48, 64) == 1
    assert (np.asarray(tiny.upscale(small, 2.0, tile=64)) == np.asarray(tiny.upscale(small, 2.0, tile=0))).all()
    # a non-native factor resizes the blended result
    assert tiny.upscale(image, 3.0, tile=64).size == (600, 450)


def test_tiles_start_on_the_models_grid():
    from workers.upscalers import overlap, tile_spans

    spans = tile_spans(1000, 256, align=4)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(start % 4 == 0 for start, _ in spans)
    size = spans[0][1]
    assert size <= 256 and all(b - a == size for a, b in spans[:-1]) and size <= spans[-1][1] - spans[-1][0] < size + 4
    assert all(prev_end - start >= overlap(256) - 3 for (_, prev_end), (start, _) in zip(spans, spans[1:]))
    # as few tiles as fit, shrunk to share about the overlap, not full tiles sharing whatever is left
    assert tile_spans(1024, 512) == [(0, 363), (330, 693), (661, 1024)]
    assert sum(b - a for a, b in tile_spans(1024, 512)) / 1024 < 1.07
    assert tile_spans(200, 0) == [(0, 200)] and tile_spans(200, 512) == [(0, 200)]


def test_tiled_memory_is_a_tiles_plus_the_canvas(tiny):
    """numpy's allocations (tracemalloc sees them): the uint8 canvas, the input, and one strip of float rows,
    not a float copy of the whole output (which alone would be 4 × the canvas)."""
    image = photo(384, 384)
    canvas = 768 * 768 * 3
    tiny.upscale(image.crop((0, 0, 64, 64)), 2.0, tile=64)  # lazy initialisation out of the way
    tracemalloc.start()
    try:
        tiny.upscale(image, 2.0, tile=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    strip, source = 128 * 768 * 3 * 4, 384 * 384 * 3  # measured: 3.8 MB, canvas + strip + input + 0.4 MB
    assert peak < canvas + 1.5 * strip + source, (peak, canvas, strip)
    assert peak < 2.5 * canvas


def test_lanczos_is_pillows_filter():
    lanczos = upscaler_for(tiny_catalog().spec("lanczos"))
    image = photo(50, 40)
    calls = []
    out = lanczos.upscale(image, 2.5, tile=16, on_tile=lambda: calls.append(1))
    assert out.size == (125, 100) and calls == [1] and lanczos.tiles(50, 40, 16) == 1 and lanczos.scale == 2
    assert (np.asarray(out) == np.asarray(image.resize((125, 100), Image.Resampling.LANCZOS))).all()


def test_a_scale_the_weights_contradict_is_refused_at_load():
    with pytest.raises(ValueError, match=r"upscale by 2, the models file says `scale: 4`"):
        load_upscaler(upscaler_spec(scale=4))
    with pytest.raises(ValueError, match="no file"):
        load_upscaler(upscaler_spec(source="/nonexistent/4x.safetensors"))


def test_a_pth_converted_by_fresco_convert_loads_and_upscales_the_same(tiny, tmp_path, capsys):
    from service.cli import main

    pth = tmp_path / "RealESRGAN_x2-tiny.pth"
    torch.save({"params_ema": tiny_state_dict()}, pth)  # BasicSR's wrapper, as Real-ESRGAN publishes them
    out = tmp_path / "RealESRGAN_x2-tiny.safetensors"
    assert main(["convert", str(pth), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "loads without trust_pickle" in printed and "ESRGAN x2" in printed and "scale: 2" in printed
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == set(tiny_state_dict())  # the state dict itself, unwrapped
    image = photo(80, 60)
    expected = np.asarray(tiny.upscale(image, 2.0, tile=0))
    converted = load_upscaler(upscaler_spec(name="converted", source=str(out), scale=2))
    assert (np.asarray(converted.upscale(image, 2.0, tile=0)) == expected).all()
    trusted = load_upscaler(upscaler_spec(name="trusted", source=str(pth), scale=2, trust_pickle=True))
    assert (np.asarray(trusted.upscale(image, 2.0, tile=0)) == expected).all()
    # a pickle that is not an upscaler's and not a checkpoint: refused with a message, nothing written
    bad = tmp_path / "bad.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(4, 3, 3, 3), "body.0.rdb1.conv1.weight":
                               torch.zeros(32, 4, 3, 3), "conv_body.weight": torch.zeros(4, 4, 3, 3),
                               "conv_last.weight": torch.zeros(3, 4, 3, 3)}}, bad)
    assert main(["convert", str(bad), str(tmp_path / "bad.safetensors")]) == 2
    assert "cannot load the converted file" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


def test_spandrel_imports_without_torchvision_and_leaves_none_behind():
    code = ("import sys, importlib.util\n"
            "from workers.spandrel_import import spandrel\n"
            "try:\n    import torchvision; real = True\nexcept Exception:\n    real = False\n"
            "sp = spandrel()\n"
            "from spandrel.architectures import RestoreFormer\n"
            "import torch\n"
            "x = RestoreFormer.tv_normalize(torch.ones(1, 3, 2, 2), [0.5] * 3, [0.25] * 3)\n"
            "print(real, 'torchvision' in sys.modules, importlib.util.find_spec('torchvision') is not None,\n"
            "      float(x.mean()), 'ESRGAN' in sp.MAIN_REGISTRY)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    real, seen, found, mean, registered = out.stdout.split()
    assert registered == "True" and float(mean) == 2.0  # (1 - 0.5) / 0.25
    if real == "False":  # no working torchvision here: nothing of the stand-ins stays visible
        assert seen == "False" and found == "False"


def test_the_pipeline_plans_and_reports_one_step_per_tile(tiny):
    from workers.pipelines.base import input_image
    from workers.pipelines.upscale import Upscale

    pipeline = Upscale(tiny_catalog().spec("tiny-esrgan"))
    assert pipeline.upscaler is tiny and pipeline.model is None and pipeline.use_adapters({}) == []
    params = {"image": input_image(photo(150, 100)), "scale": 2.0, "tile": 64, "width": 300, "height": 200}
    plan = pipeline.plan(params)
    assert plan == [(Stage.UPSCALE, 3 * 2)]
    states = []
    out = pipeline.run(params, Progress(lambda state: states.append(state) and False, plan))
    assert [image.size for image in out.images] == [(300, 200)]
    steps = [s["step"] for s in states if s["stage"] == "upscale"]
    assert steps[0] == 0 and steps[-1] == 5 and states[-1]["stage"] == "decode"  # the last tile: decode next
    fractions = [s["fraction"] for s in states]
    assert fractions == sorted(fractions)


def test_an_upscale_job_through_the_api_and_a_worker(tmp_path):
    """A real stack with only the tiny upscaler: the job's output has the input's size × 2, and its PNG carries
    the recipe (task, upscaler, factor) and A1111's "Postprocess" entries."""
    buf = io.BytesIO()
    photo(120, 72).save(buf, "PNG")
    import base64

    body = {"task": "upscale", "model": "tiny-esrgan", "image": "data:image/png;base64," +
            base64.b64encode(buf.getvalue()).decode(), "tile": 64}
    with Stack(data_dir=tmp_path / "stack", profile=("tiny-esrgan",)) as stack:
        stack.wait_ready(timeout=120)
        with stack.client() as client:
            r = client.post("/generate", json=body)
            assert r.status_code == 202, r.text
            assert r.json()["params"]["scale"] == 2.0
            job = wait_status(client, r.json()["id"], {"succeeded", "failed", "canceled"}, 90)
            assert job["status"] == "succeeded", job
            (item,) = job["result"]["images"]
            assert (item["width"], item["height"]) == (240, 144)
            data = client.get(item["url"]).content
    image = Image.open(io.BytesIO(data))
    assert image.size == (240, 144)
    recipe = json.loads(image.text["fresco"])
    assert recipe["task"] == "upscale" and recipe["model"]["name"] == "tiny-esrgan"
    assert recipe["model"]["scale"] == 2 and recipe["params"]["scale"] == 2.0
    assert "Postprocess upscale by: 2, Postprocess upscaler: tiny-esrgan" in image.text["parameters"]
