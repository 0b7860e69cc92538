"""SD 3.5 and FLUX.1 (kinds `sd3`, `flux`) on the API side, without a worker: each model's defaults (its
variant's: read from its transformer config or its source's name, or the models file's), the rules of their
requests (flow-matching schedulers only, no guidance on schnell, `max_sequence_length`, no ControlNets or
embeddings), and what the compatible APIs make of them (OpenAI names, A1111's samplers and cfg_scale), and
their recipes' A1111 entries. (Jobs that run: tests/e2e/test_families.py and the compatible APIs' e2e tests.)"""

from __future__ import annotations

import json

import pytest

from service.api.compat.a1111.translate import plan
from service.api.compat.models import model_named
from service.catalog import Catalog, ModelSpec, tiny_catalog
from service.recipe import native_infotext
from tests.conftest import png_data_url
from tests.service.api.test_validation import assert_rejected, post
from tests.workers.test_recipe import parse_infotext

CATALOG = tiny_catalog()
# model -> (steps, guidance_scale, max_sequence_length, scheduler) when a request gives none
DEFAULTS = {"tiny-sd3": (28, 3.5, 256, "flow_euler"), "tiny-flux": (28, 3.5, 512, "flow_euler"),
            "tiny-flux-schnell": (4, 0.0, 256, "flow_euler")}
IMAGE = png_data_url(64, 64)
WHITE = png_data_url(64, 64, (255, 255, 255))  # a mask: repaint it all
TASKS = {"txt2img": {}, "img2img": {"image": IMAGE}, "inpaint": {"image": IMAGE, "mask": WHITE}}


def body(task="txt2img", **fields):
    return {"task": task, "prompt": "a cat", **TASKS[task], **fields}


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("model", list(DEFAULTS))
def test_each_model_runs_with_its_own_defaults(api, task, model):
    r = post(api, body(task, model=model))
    assert r.status_code == 202, r.text
    p = r.json()["params"]
    assert (p["steps"], p["guidance_scale"], p["max_sequence_length"], p["scheduler"]) == DEFAULTS[model]
    given = post(api, body(task, model=model, steps=6, max_sequence_length=77, negative_prompt="blur")).json()
    assert (given["params"]["steps"], given["params"]["max_sequence_length"]) == (6, 77)


def test_sd_and_sdxl_keep_their_defaults_and_carry_no_t5_length(api):
    for task in TASKS:
        p = post(api, body(task, model="tiny-sd")).json()["params"]
        assert (p["steps"], p["scheduler"]) == (30, "euler") and "max_sequence_length" not in p


@pytest.mark.parametrize("model, fields, field, words", [
    ("tiny-flux", {"scheduler": "euler"}, "scheduler", "flow_euler"),
    ("tiny-flux", {"scheduler": "flow_heun"}, "scheduler", "['flow_euler']"),
    ("tiny-sd", {"scheduler": "flow_euler"}, "scheduler", "dpmpp_2m"),
    ("tiny-flux-schnell", {"guidance_scale": 3.5}, "guidance_scale", "without guidance"),
    ("tiny-sd3", {"max_sequence_length": 513}, "max_sequence_length", "512"),
    ("tiny-sd", {"max_sequence_length": 77}, "max_sequence_length", "T5"),
    ("tiny-flux", {"control": [{"model": "tiny-canny", "image": IMAGE}]}, "control", "no ControlNets"),
    ("tiny-flux", {"loras": [{"name": "tiny-style"}]}, "loras[0].name", "does not fit"),
    ("tiny-sd3", {"width": 264}, "width", "multiple of 16"),
    ("tiny-flux", {"height": 1000}, "height", "multiple of 16"),
])
def test_what_these_models_cannot_take_is_422_naming_the_field(api, model, fields, field, words):
    r = post(api, body(model=model, **fields))
    assert_rejected(r, field)
    assert words in json.dumps(r.json())


def test_sdxls_own_task_refuses_a_flow_scheduler(api):
    assert_rejected(post(api, {"task": "sdxl", "prompt": "x", "scheduler": "flow_euler"}), "scheduler")


def test_an_input_image_is_floored_to_multiples_of_16_and_hires_too(api):
    p = post(api, body("img2img", model="tiny-flux", image=png_data_url(333, 250))).json()["params"]
    assert (p["width"], p["height"]) == (320, 240)
    p = post(api, body(model="tiny-sd3", width=256, height=256, hires={"scale": 1.3})).json()["params"]
    assert (p["hires"]["width"], p["hires"]["height"]) == (320, 320)  # 332.8 floored to 16s


def test_models_lists_each_models_defaults_and_schedulers(api):
    tasks = api.get("/models").json()["tasks"]
    models = {m["name"]: m for m in tasks["txt2img"]["models"]}
    assert models["tiny-flux-schnell"]["defaults"] == {"width": 1024, "height": 1024, "guidance_scale": 0.0,
                                                       "steps": 4, "max_sequence_length": 256}
    assert models["tiny-flux"]["schedulers"] == ["flow_euler"]
    assert models["tiny-sd3"]["schedulers"] == ["flow_euler", "flow_heun"]
    assert "flow_euler" not in models["tiny-sd"]["schedulers"]
    assert {m["name"]: m["schedulers"] for m in tasks["img2img"]["models"]}["tiny-turbo"] == []  # its own
    assert "flow_euler" in tasks["txt2img"]["schedulers"]


@pytest.mark.parametrize("kind, source, variant, steps, guidance, length", [
    ("flux", "black-forest-labs/FLUX.1-schnell", "schnell", 4, 0.0, 256),
    ("flux", "black-forest-labs/FLUX.1-dev", "dev", 28, 3.5, 512),
    ("flux", "someone/flux-finetune", "dev", 28, 3.5, 512),
    ("sd3", "stabilityai/stable-diffusion-3.5-large", "large", 28, 3.5, 256),
    ("sd3", "stabilityai/stable-diffusion-3.5-medium", "medium", 40, 4.5, 256),
    ("sd3", "stabilityai/stable-diffusion-3.5-large-turbo", "large-turbo", 4, 0.0, 256),
])
def test_the_variant_comes_from_the_sources_name(kind, source, variant, steps, guidance, length):
    spec = ModelSpec(name="m", kind=kind, source=source)
    d = spec.defaults()
    assert spec.variant_row.name == variant and spec.guidance == (guidance > 0)
    assert (d["steps"], d["guidance_scale"], d["max_sequence_length"]) == (steps, guidance, length)


@pytest.mark.parametrize("kind, config, variant", [
    ("flux", {"guidance_embeds": False}, "schnell"),
    ("flux", {"guidance_embeds": True}, "dev"),
    ("sd3", {"num_layers": 24}, "medium"),
    ("sd3", {"num_layers": 38}, "large"),
])
def test_a_local_directorys_transformer_config_says_the_variant(tmp_path, kind, config, variant):
    folder = tmp_path / "my-finetune-dev-large"  # a name that says otherwise: the config wins
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    assert ModelSpec(name="m", kind=kind, source=str(folder)).variant_row.name == variant


def test_the_models_file_overrides_the_defaults_and_its_checks(tmp_path):
    spec = ModelSpec(name="m", kind="flux", source="x/FLUX.1-dev", steps=20, guidance_scale=2.5,
                     max_sequence_length=256)
    assert {k: spec.defaults()[k] for k in ("steps", "guidance_scale", "max_sequence_length")} == \
        {"steps": 20, "guidance_scale": 2.5, "max_sequence_length": 256}
    assert ModelSpec(name="s", kind="sdxl", source="x/y", steps=25).defaults()["steps"] == 25
    assert "max_sequence_length" not in ModelSpec(name="m", kind="sd3", source="x/y", t5=False).defaults()
    for fields, words in [({"kind": "flux", "source": "x/FLUX.1-schnell", "guidance_scale": 1.0}, "guidance"),
                          ({"kind": "sd", "source": "x/y", "max_sequence_length": 77}, "T5"),
                          ({"kind": "sd3", "source": "x/y", "t5": False, "max_sequence_length": 77}, "T5"),
                          ({"kind": "svd", "source": "x/y", "steps": 10}, "steps"),
                          ({"kind": "flux", "source": "x/y", "steps": 101}, "steps")]:
        with pytest.raises(ValueError, match=words):
            ModelSpec(name="m", **fields)
    with pytest.raises(ValueError, match="no textual-inversion"):
        Catalog(models={"f": {"kind": "flux", "source": "tiny"}},
                adapters={"e": {"kind": "embedding", "source": "x", "base": "f", "token": "<e>"},
                          "e2": {"kind": "embedding", "source": "x", "base": "sd3", "token": "<e2>"}})


@pytest.mark.parametrize("name, model", [
    ("flux.1-schnell", "tiny-flux-schnell"), ("FLUX-Schnell", "tiny-flux-schnell"), ("flux.1-dev", "tiny-flux"),
    ("flux-dev", "tiny-flux"), ("sd3.5-large", "tiny-sd3"), ("stable-diffusion-3.5-large", "tiny-sd3"),
    ("tiny-flux", "tiny-flux"), ("dall-e-3", "tiny-sdxl"), ("sd3.5-medium", "sd3.5-medium"),
])
def test_openai_names_reach_the_models(name, model):
    assert model_named(CATALOG, name, {"dall-e-3": "tiny-sdxl"}) == model


def test_an_openai_alias_of_a_flux_model_is_listed_when_the_name_is_wrong(app_settings):
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(app_settings)) as client:
        r = client.post("/v1/images/generations", json={"prompt": "x", "model": "flux.2-pro"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "flux.1-schnell" in r.json()["error"]["message"] and "tiny-flux" in r.json()["error"]["message"]


def a1111(mode="txt2img", model="tiny-flux", **fields):
    extra = {"init_images": [IMAGE]} if mode == "img2img" else {}
    return plan(CATALOG, mode, {"prompt": "x", "override_settings": {"sd_model_checkpoint": model}, **extra,
                                **fields}, None)


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_a1111s_cfg_scale_on_flux_runs_the_models_guidance(mode):
    p = a1111(mode, cfg_scale=7, sampler_name="Euler a", scheduler="Karras", steps=20)
    b = p.bodies[0]
    assert (b["guidance_scale"], b["scheduler"], b["steps"], p.cfg_scale) == (3.5, "flow_euler", 20, 1.0)
    assert (p.sampler_name, p.schedule) == ("Euler", "Simple")
    assert any("distilled guidance" in w for w in p.warnings)
    assert any("'Euler a' is not available on flux" in w for w in p.warnings)
    forge = a1111(mode, cfg_scale=1, distilled_cfg_scale=2.5, sampler_name="Euler", scheduler="Simple")
    assert forge.bodies[0]["guidance_scale"] == 2.5 and forge.warnings == []
    assert forge.bodies[0]["steps"] == 28  # no steps asked: the model's, not A1111's 50


def test_a1111_on_schnell_and_sd3():
    schnell = a1111(model="tiny-flux-schnell", cfg_scale=7)
    assert (schnell.bodies[0]["guidance_scale"], schnell.bodies[0]["steps"]) == (0.0, 4)
    assert any("runs without guidance" in w for w in schnell.warnings)
    sd3 = a1111(model="tiny-sd3", cfg_scale=5, sampler_name="Heun")
    assert (sd3.bodies[0]["guidance_scale"], sd3.bodies[0]["scheduler"], sd3.cfg_scale) == (5, "flow_heun", 5)
    assert a1111(model="tiny-sd3").bodies[0]["guidance_scale"] == 3.5  # none asked: the model's


def test_the_infotext_writes_forges_distilled_cfg_and_a1111_reads_it_back():
    model = {"name": "tiny-flux", "kind": "flux", "source": "tiny"}
    params = {"prompt": "a fox", "steps": 28, "guidance_scale": 3.5, "scheduler": "flow_euler", "width": 64,
              "height": 64, "max_sequence_length": 512}
    prompt, _, entries = parse_infotext(native_infotext("txt2img", model, params, 3))
    assert prompt == "a fox"
    assert (entries["Sampler"], entries["Schedule type"], entries["CFG scale"], entries["Distilled CFG Scale"]) == \
        ("Euler", "Simple", "1", "3.5")
    assert entries["Model"] == "tiny-flux" and "Max sequence length" not in entries  # dev's own 512
    _, _, short = parse_infotext(native_infotext("txt2img", model, {**params, "max_sequence_length": 128}, 3))
    assert short["Max sequence length"] == "128"
    sd3 = {"name": "tiny-sd3", "kind": "sd3", "source": "tiny"}
    _, _, entries = parse_infotext(native_infotext("img2img", sd3, {**params, "scheduler": "flow_heun",
                                                                     "max_sequence_length": 256}, 3))
    assert (entries["Sampler"], entries["CFG scale"]) == ("Heun", "3.5") and "Distilled CFG Scale" not in entries
    assert "Max sequence length" not in entries
