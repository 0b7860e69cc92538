"""The `upscale` task in requests and in the models file: a 422 naming `scale` for an output past the pixel
limit, `model` for an unknown upscaler (or a model that is none), `tile` under 64; a valid job's params
carry the resolved factor (the upscaler's own unless given) and the output size. The models file's
`upscalers:` section refuses a pickle without `trust_pickle`; GET /models lists the upscalers with their
factor. The worker side: tests/workers/test_upscale.py."""

from __future__ import annotations

import pytest

from service.catalog import load_catalog
from tests.conftest import png_data_url
from tests.service.api.test_validation import SECRET, assert_rejected, post

IMAGE = png_data_url(96, 64)


def upscale(**fields):
    return {"task": "upscale", "image": IMAGE, **fields}


@pytest.mark.parametrize("body, field", [
    (upscale(image=png_data_url(1100, 1000), scale=2.0), "scale"),  # 2200×2000: past the 2048² limit
    (upscale(image=png_data_url(1100, 1000)), "scale"),  # tiny-esrgan's own factor, 2
    (upscale(model="nope-" + SECRET), "model"),
    (upscale(model="tiny-sd"), "model"),  # a diffusion model, not an upscaler
    (upscale(tile=10), "tile"),
    (upscale(tile=63), "tile"),
    (upscale(tile=4096), "tile"),
    (upscale(scale=0.5), "scale"),
    (upscale(scale=4.5), "scale"),
    (upscale(scale="2"), "scale"),
    ({"task": "upscale"}, "image"),
    (upscale(prompt="a cat"), "prompt"),
])
def test_bad_upscale_rejected(api, body, field):
    assert_rejected(post(api, body), field)


def test_upscale_params_carry_the_factor_and_the_output_size(api):
    r = post(api, upscale())
    assert r.status_code == 202, r.text
    p = r.json()["params"]
    assert r.json()["model"] == "tiny-esrgan"  # the task's default: a real upscaler before lanczos
    assert (p["scale"], p["width"], p["height"], p["tile"]) == (2.0, 192, 128, 512)
    p = post(api, upscale(model="lanczos", scale=1.5, tile=0)).json()["params"]
    assert (p["scale"], p["width"], p["height"], p["tile"]) == (1.5, 144, 96, 0)
    p = post(api, upscale(model="lanczos", image=png_data_url(97, 63), scale=1.5)).json()["params"]
    assert (p["width"], p["height"]) == (146, 94)  # rounded: 145.5 → 146, 94.5 → 94 (half to even)
    r = post(api, upscale(image=png_data_url(1024, 1024), scale=2.0))  # 2048²: the limit exactly
    assert r.status_code == 202, r.text


def test_get_models_lists_the_upscalers_with_their_factor(api):
    info = api.get("/models").json()["tasks"]["upscale"]
    models = {m["name"]: m for m in info["models"]}
    assert {"tiny-esrgan", "lanczos"} <= set(models)
    assert models["tiny-esrgan"]["scale"] == 2 and models["lanczos"]["scale"] == 2
    assert models["tiny-esrgan"]["kind"] == models["lanczos"]["kind"] == "upscaler"
    assert info["default_model"] == "tiny-esrgan"
    assert {"image", "scale", "tile", "output_format"} <= set(info["parameters"])
    for task, entry in api.get("/models").json()["tasks"].items():  # upscalers serve only `upscale`
        if task != "upscale":
            assert not {"tiny-esrgan", "lanczos"} & {m["name"] for m in entry["models"]}, task


MODELS = "models:\n  base: {kind: sdxl, source: ./base}\n"


def test_models_file_upscalers(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(MODELS + "upscalers:\n"
                             "  4x-ultrasharp: {source: ./up/4x-UltraSharp.safetensors}\n"
                             "  2x-old: {source: ./up/2x-old.pth, scale: 2, trust_pickle: true}\n")
    catalog = load_catalog(path)
    assert catalog.models_for("upscale") == ["4x-ultrasharp", "2x-old", "lanczos"]
    assert catalog.spec("4x-ultrasharp").source == str((tmp_path / "up" / "4x-UltraSharp.safetensors").resolve())
    assert (catalog.spec("4x-ultrasharp").scale, catalog.spec("2x-old").scale) == (4, 2)
    assert catalog.default_for("upscale") == "4x-ultrasharp"


@pytest.mark.parametrize("entry, words", [
    ("{source: up/4x.pth}", r"4x.pth is a pickle.*`trust_pickle: true`.*fresco convert 4x.pth 4x.safetensors"),
    ("{source: up/4x.bin, scale: 4}", "trust_pickle"),
    ("{source: up/4x.onnx}", "a .safetensors file"),
    ("{source: up/4x.safetensors, scale: 9}", "scale"),
    ("{source: up/4x.safetensors, sauce: 1}", "sauce"),
])
def test_models_file_upscaler_errors(tmp_path, entry, words):
    path = tmp_path / "models.yaml"
    path.write_text(MODELS + f"upscalers:\n  bad: {entry}\n")
    with pytest.raises(ValueError, match=words):
        load_catalog(path)
