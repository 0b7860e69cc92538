"""`txt2img` (defaults per model) and `control` in requests and in `GET /models`: each bad entry a 422
naming `control[i].field`, the resolved params carry every control setting, and a models file's
`controlnets:` section is checked when it loads."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.catalog import Catalog, ControlNetSpec, ModelSpec, tiny_catalog
from tests.conftest import png_data_url
from tests.service.api.test_validation import SECRET, assert_rejected, post


def control(**fields):
    return {"model": "tiny-sd-canny", "image": png_data_url(64, 48), **fields}


def txt2img(**fields):
    return {"task": "txt2img", "prompt": "a cat", **fields}


def test_txt2img_defaults_come_from_the_model(api):
    sd = post(api, txt2img())
    assert sd.status_code == 202, sd.text
    assert sd.json()["model"] == "tiny-sd"
    p = sd.json()["params"]
    assert (p["width"], p["height"], p["guidance_scale"], p["steps"], p["scheduler"]) == (512, 512, 7.5, 30, "euler")
    p = post(api, txt2img(model="tiny-sdxl")).json()["params"]
    assert (p["width"], p["height"], p["guidance_scale"]) == (1024, 1024, 5.0)
    p = post(api, txt2img(model="tiny-pai", prompt="一只猫", width=640, guidance_scale=3.0)).json()["params"]
    assert (p["width"], p["height"], p["guidance_scale"]) == (640, 512, 3.0)


@pytest.mark.parametrize("body, field", [
    (txt2img(model="tiny-turbo"), "model"),  # Turbo has its own task
    (txt2img(model="tiny-svd"), "model"),
    (txt2img(width=250), "width"),
    (txt2img(width=2056), "width"),
    (txt2img(guidance_scale=21), "guidance_scale"),
    (txt2img(steps=0), "steps"),
    (txt2img(refiner=True), "refiner"),
])
def test_bad_txt2img_rejected(api, body, field):
    assert_rejected(post(api, body), field)


def test_img2img_takes_sd_models_with_their_guidance(api):
    body = {"task": "img2img", "prompt": "x", "image": png_data_url(64, 64)}
    assert post(api, {**body, "model": "tiny-sd"}).json()["params"]["guidance_scale"] == 7.5
    assert post(api, body).json()["params"]["guidance_scale"] == 5.0  # tiny-sdxl, as in v1
    assert post(api, {**body, "model": "tiny-turbo"}).json()["params"]["guidance_scale"] == 0.0
    assert_rejected(post(api, {**body, "model": "tiny-turbo", "guidance_scale": 2.0}), "guidance_scale")


@pytest.mark.parametrize("entries, field", [
    ([control(model=SECRET)], "control[0].model"),
    ([control(model="tiny-canny")], "control[0].model"),  # an SDXL ControlNet, the model is SD
    ([control(scale=2.5)], "control[0].scale"),
    ([control(scale=-0.1)], "control[0].scale"),
    ([control(start=0.6, end=0.5)], "control[0].end"),
    ([control(start=1.0)], "control[0].start"),
    ([control(end=0.0)], "control[0].end"),
    ([control(preprocess="depth")], "control[0].preprocess"),
    ([control(image="not base64 " + SECRET)], "control[0].image"),
    ([control(image="data:image/gif;base64,R0lGOD")], "control[0].image"),
    ([control(), {"model": "tiny-sd-depth"}], "control[1].image"),
    ([control(weight=1)], "control[0].weight"),
    ([control()] * 3, "control"),
    (control(), "control"),
])
def test_bad_control_rejected(api, entries, field):
    assert_rejected(post(api, txt2img(control=entries)), field)


def test_control_not_on_turbo_or_svd(api):
    assert_rejected(post(api, {"task": "turbo", "prompt": "x", "control": [control()]}), "control")
    assert_rejected(post(api, {"task": "svd", "image": png_data_url(64, 64), "control": [control()]}), "control")


def test_control_resolved_with_defaults_per_kind(api):
    r = post(api, txt2img(control=[control(), control(model="tiny-sd-depth", scale=0.5, start=0.1, end=0.9)]))
    assert r.status_code == 202, r.text
    entries = r.json()["params"]["control"]
    assert entries == [
        {"model": "tiny-sd-canny", "kind": "canny", "scale": 1.0, "start": 0.0, "end": 1.0, "preprocess": "canny",
         "image": {"name": "control-0.png", "width": 64, "height": 48}},
        {"model": "tiny-sd-depth", "kind": "depth", "scale": 0.5, "start": 0.1, "end": 0.9, "preprocess": "none",
         "image": {"name": "control-1.png", "width": 64, "height": 48}}]
    sdxl = post(api, {"task": "sdxl", "prompt": "x", "control": [control(model="tiny-canny", preprocess="none")]})
    assert sdxl.json()["params"]["control"][0]["preprocess"] == "none"
    img2img = post(api, {"task": "img2img", "prompt": "x", "image": png_data_url(64, 64), "model": "tiny-turbo",
                         "control": [control(model="tiny-canny")]})
    assert img2img.status_code == 202, img2img.text


def test_models_lists_controlnets_and_defaults_per_model(api):
    tasks = api.get("/models").json()["tasks"]
    assert tasks["txt2img"]["default_model"] == "tiny-sd"
    models = {m["name"]: m for m in tasks["txt2img"]["models"]}
    assert set(models) == {"tiny-sdxl", "tiny-sd", "tiny-pai", "tiny-sd3", "tiny-flux", "tiny-flux-schnell"}
    assert models["tiny-sd"]["defaults"] == {"width": 512, "height": 512, "guidance_scale": 7.5, "steps": 30}
    assert models["tiny-sdxl"]["defaults"] == {"width": 1024, "height": 1024, "guidance_scale": 5.0, "steps": 30}
    assert models["tiny-pai"]["family"] == "sd"
    assert [c["name"] for c in models["tiny-sd"]["controlnets"]] == ["tiny-sd-canny", "tiny-sd-depth"]
    assert models["tiny-sd"]["controlnets"][1] == {"name": "tiny-sd-depth", "kind": "depth", "preprocess": "none",
                                                   "description": models["tiny-sd"]["controlnets"][1]["description"]}
    assert [c["name"] for c in models["tiny-sdxl"]["controlnets"]] == ["tiny-canny"]
    for task in ("sdxl", "img2img", "txt2img"):
        assert tasks[task]["limits"]["max_controls"] == 2 and tasks[task]["preprocessors"] == ["none", "canny"]
        assert "control" in tasks[task]["parameters"]
    assert "controlnets" not in tasks["turbo"]["models"][0] and "max_controls" not in tasks["svd"]["limits"]
    assert {m["name"] for m in tasks["img2img"]["models"]} == {"tiny-sdxl", "tiny-turbo", "tiny-sd", "tiny-pai",
                                                                "tiny-sd3", "tiny-flux", "tiny-flux-schnell"}


def test_a_controlnet_must_fit_a_known_base():
    with pytest.raises(ValueError, match="no model, kind or family"):
        Catalog(models={"m": {"kind": "sd", "source": "tiny"}},
                controlnets={"c": {"kind": "canny", "source": "x", "base": "sd4"}})
    with pytest.raises(ValueError, match="for sd and sdxl models"):
        Catalog(models={"v": {"kind": "svd", "source": "tiny"}},
                controlnets={"c": {"kind": "canny", "source": "x", "base": "v"}})
    with pytest.raises(ValueError):
        ControlNetSpec(name="c", kind="sketchy", source="x", base=["sd"])


def test_model_specs_of_the_new_kinds():
    with pytest.raises(ValueError, match="needs `config`"):
        ModelSpec(name="f", kind="sdxl", source="/models/finetune.safetensors")
    with pytest.raises(ValueError, match="trust_pickle"):
        ModelSpec(name="f", kind="sd", source="/models/finetune.ckpt", config="/models/sd15")
    spec = ModelSpec(name="f", kind="sd", source="/models/finetune.ckpt", config="/models/sd15", trust_pickle=True)
    assert spec.single_file and spec.size == (512, 512)
    assert ModelSpec(name="v", kind="sd", source="x/y", size=768).defaults() == \
        {"width": 768, "height": 768, "guidance_scale": 7.5, "steps": 30}
    assert ModelSpec(name="o", kind="sdxl", source="tiny", cpu_offload=True).memory == "balanced"
    assert not ModelSpec(name="d", kind="sd", source="a/dir").single_file
    with pytest.raises(ValueError, match="tiny sources"):
        ModelSpec(name="t", kind="sdxl", source="tiny:pai")


def test_control_and_txt2img_with_a_models_file_controlnet(app_settings):
    catalog = tiny_catalog()
    catalog.controlnets["by-name"] = ControlNetSpec(name="by-name", kind="depth", source="tiny", base=["tiny-pai"])
    from service.api.app import create_app

    with TestClient(create_app(app_settings, catalog=catalog)) as api:
        ok = post(api, txt2img(model="tiny-pai", control=[control(model="by-name")]))
        assert ok.status_code == 202, ok.text
        r = post(api, txt2img(control=[control(model="by-name")]))
        assert_rejected(r, "control[0].model")
        assert "tiny-pai" in r.json()["error"]["fields"][0]["message"]


def test_memory_minimal_takes_no_adapters_and_no_compile(app_settings):
    with pytest.raises(ValueError, match="memory: minimal"):
        ModelSpec(name="m", kind="sdxl", source="tiny", memory="minimal", compile=True)
    catalog = tiny_catalog()
    catalog.models["tiny-sdxl"] = catalog.models["tiny-sdxl"].model_copy(update={"memory": "minimal"})
    assert catalog.adapters_for("tiny-sdxl") == [] and catalog.adapters_for("tiny-turbo") != []
    from service.api.app import create_app

    with TestClient(create_app(app_settings, catalog=catalog)) as api:
        r = post(api, {"task": "sdxl", "prompt": "x", "loras": [{"name": "tiny-style"}]})
        assert_rejected(r, "loras")
        assert "memory: minimal" in r.text
        assert post(api, {"task": "sdxl", "prompt": "x", "control": [control(model="tiny-canny")]}).status_code == 202


def test_the_readme_models_file_examples_are_valid():
    """README's "Real models" section shows each kind, ControlNets and adapters: it must stay loadable."""
    import re

    import yaml

    from tests.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text[text.index("## Real models"):], re.S)
    data = {}
    for block in blocks:
        data.update(yaml.safe_load(block))
    catalog = Catalog.model_validate(data)
    assert {spec.kind for spec in catalog.models.values()} == {"sd", "sdxl", "turbo", "svd", "upscaler", "sd3",
                                                               "flux"}
    assert catalog.spec("flux-schnell").defaults()["steps"] == 4  # its variant's
    assert catalog.spec("sd3.5-large").defaults()["steps"] == 30  # its entry's
    assert catalog.spec("realesrgan-x2").scale == 2 and catalog.spec("4x-ultrasharp").scale == 4
    assert any(spec.single_file for spec in catalog.models.values())
    assert any(spec.trust_pickle for spec in catalog.models.values()) and catalog.controlnets and catalog.adapters
