"""service/recipe.py: the one infotext builder (the A1111 adapter's answers and the workers' files), its
sampler names mapped back from Fresco's schedulers, what a recipe's JSON leaves out, and that the module
needs neither torch nor the API to import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service.api.compat.a1111.checkpoints import checkpoint
from service.api.compat.a1111.samplers import choose, choose_for
from service.catalog import tiny_catalog
from service.families import KINDS, SCHEDULERS
from service.recipe import Recipe, a1111_infotext, a1111_sampler, clean_params, model_hash, native_infotext
from tests.conftest import ROOT


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_each_scheduler_has_the_a1111_names_that_run_it(scheduler):
    sampler, schedule = a1111_sampler(scheduler)
    for kind in (k for k in KINDS.values() if scheduler in k.schedulers):
        assert choose_for(kind, sampler, schedule).scheduler == scheduler
        assert choose_for(kind, sampler, schedule).warnings == ()
    if scheduler.startswith("flow_"):
        assert schedule == "Simple"  # Forge's names: "Euler" with the schedule type "Simple"
    else:
        assert choose(sampler, schedule) == choose_for(KINDS["sdxl"], sampler, schedule)


def test_turbo_and_unknown_schedulers():
    assert a1111_sampler("turbo") == ("Euler a", "Automatic")
    assert a1111_sampler("no-such") is None


def test_the_builder_writes_a1111s_layout_and_quoting():
    text = a1111_infotext("a cat, sitting", "dog", steps=20, sampler="Euler a", schedule="Automatic", cfg_scale=7.0,
                          seed=5, width=512, height=512, model_hash="0123456789", model="tiny-sd",
                          extra={"Lora hashes": "a: 1, b: 2"}, version="fresco 1")
    assert text == ("a cat, sitting\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, "
                    "CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 0123456789, Model: tiny-sd, "
                    'Lora hashes: "a: 1, b: 2", Version: fresco 1')


def test_a_native_img2img_job_with_control_and_a_refiner_less_model():
    params = {"prompt": "a fox", "negative_prompt": "", "strength": 0.6, "steps": 30, "guidance_scale": 5.0,
              "scheduler": "euler", "width": 256, "height": 192, "seed": 3, "num_images": 1, "output_format": "webp",
              "control": [{"model": "tiny-sd-canny", "kind": "canny", "scale": 0.8, "start": 0.0, "end": 0.9,
                           "preprocess": "canny", "image": {"name": "control-0.png", "width": 9, "height": 9}}]}
    text = native_infotext("img2img", {"name": "tiny-sd", "kind": "sd", "source": "tiny"}, params, 3)
    assert text.startswith("a fox\nSteps: 30, Sampler: Euler, Schedule type: Automatic, CFG scale: 5, Seed: 3, ")
    assert "Denoising strength: 0.6" in text and "Negative prompt" not in text
    assert ('ControlNet 0: "Module: canny, Model: tiny-sd-canny, Weight: 0.8, Guidance Start: 0, '
            'Guidance End: 0.9"') in text


def test_inpaint_hires_and_upscale_jobs_write_a1111s_entries():
    model = {"name": "tiny-sd", "kind": "sd", "source": "tiny"}
    base = {"prompt": "a door", "steps": 20, "guidance_scale": 7.5, "scheduler": "euler", "width": 64, "height": 64}
    text = native_infotext("inpaint", model, {**base, "strength": 0.75, "mask_blur": 4, "fill": "noise",
                                              "mask_padding": 32, "invert_mask": True}, 3)
    assert ("Denoising strength: 0.75, Mask blur: 4, Masked content: latent noise, Inpaint area: Only masked, "
            "Masked area padding: 32, Mask mode: Inpaint not masked") in text
    whole = native_infotext("inpaint", model, {**base, "strength": 1.0, "mask_blur": 0, "fill": "original",
                                               "mask_padding": None, "invert_mask": False}, 3)
    assert "Masked content: original" in whole and "Inpaint area" not in whole and "Mask mode" not in whole
    hires = native_infotext("txt2img", model, {**base, "hires": {"scale": 2.0, "upscaler": "latent", "strength": 0.5,
                                                                "steps": None}}, 3)
    assert "Size: 64x64" in hires and "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent" in hires
    up = native_infotext("upscale", {"name": "tiny-esrgan", "kind": "upscaler", "source": "tiny"},
                         {"scale": 2.0, "width": 128, "height": 128}, 0)
    assert "Seed" not in up and "Postprocess upscale by: 2, Postprocess upscaler: tiny-esrgan" in up


def test_the_model_hash_is_the_checkpoint_listings_or_the_files_own():
    catalog = tiny_catalog()
    assert model_hash({"name": "tiny-pai", "source": "tiny:pai"}) == checkpoint(catalog, "tiny-pai").hash
    assert model_hash({"name": "x", "source": "/m/x.safetensors", "digest": "sha256:" + "0f" * 32}) == "0f0f0f0f0f"


def test_the_json_leaves_out_bytes_webhooks_and_url_secrets():
    params = {"prompt": "x", "seed": 4, "webhook": "https://hook.example/?token=t", "blob": b"\x89PNG",
              "image": {"name": "input.png", "width": 8, "height": 8, "url": "https://h/results/j/input.png?sig=s"},
              "loras": [{"url": "https://user:pw@cdn.example:8443/a.safetensors?X-Amz-Signature=s", "scale": 1.0}]}
    out = clean_params(params)
    assert "webhook" not in out and "blob" not in out
    assert out["image"] == {"name": "input.png", "width": 8, "height": 8}
    assert out["loras"][0]["url"] == "https://cdn.example:8443/a.safetensors"
    assert params["loras"][0]["url"].endswith("=s")  # the job's own params are left as they are
    data = json.loads(Recipe("turbo", {"name": "m", "kind": "turbo", "source": "tiny"}, params).json(2))
    assert data["seed"] == 6 and "token" not in json.dumps(data) and "sig=" not in json.dumps(data)


def test_the_module_imports_without_torch_or_the_api():
    code = ("import sys, service.recipe as r; r.versions(); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'fastapi', 'starlette') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
