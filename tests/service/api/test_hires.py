"""`hires` on txt2img and sdxl in requests: a 422 naming `hires.<field>` for a final size past the pixel
limit, an unknown upscaler, a pass with no step to run; a valid one's params carry the resolved settings and
the final size (sides × scale, floored to multiples of 8). The worker side: tests/workers/test_hires.py."""

from __future__ import annotations

import pytest

from tests.service.api.test_validation import SECRET, assert_rejected, post


def txt2img(**fields):
    return {"task": "txt2img", "prompt": "a cat", "model": "tiny-sd", **fields}


@pytest.mark.parametrize("body, field", [
    (txt2img(width=768, hires={"scale": 4.0}), "hires.scale"),  # 3072×2048: past the 2048² limit
    ({"task": "sdxl", "prompt": "x", "hires": {"scale": 2.5}}, "hires.scale"),  # 2560² from SDXL's 1024²
    (txt2img(hires={"upscaler": "nope-" + SECRET}), "hires.upscaler"),
    (txt2img(hires={"upscaler": "tiny-sd"}), "hires.upscaler"),  # a model, not an upscaler
    (txt2img(hires={"scale": 4.5}), "hires.scale"),
    (txt2img(hires={"scale": 0.5}), "hires.scale"),
    (txt2img(hires={"strength": 0.0}), "hires.strength"),
    (txt2img(hires={"strength": 1.5}), "hires.strength"),
    (txt2img(steps=1, hires={"strength": 0.5}), "hires.strength"),  # int(1 × 0.5) = 0 steps
    (txt2img(hires={"steps": 0}), "hires.steps"),
    (txt2img(hires={"scale": 2.0, "denoise": 0.3}), "hires.denoise"),
    ({"task": "img2img", "prompt": "x", "image": "data:,", "hires": {}}, "hires"),  # only txt2img and sdxl
])
def test_bad_hires_rejected(api, body, field):
    assert_rejected(post(api, body), field)


def test_hires_params_carry_the_final_size(api):
    r = post(api, txt2img(width=520, height=384, steps=20, hires={"scale": 1.5, "upscaler": "lanczos"}))
    assert r.status_code == 202, r.text
    p = r.json()["params"]
    assert (p["width"], p["height"]) == (520, 384)  # the first pass's size
    # 780 floored to 776; the pass's steps default to the job's
    assert p["hires"] == {"scale": 1.5, "upscaler": "lanczos", "strength": 0.5, "steps": 20, "width": 776,
                          "height": 576}
    r = post(api, {"task": "sdxl", "prompt": "x", "width": 512, "height": 512,
                   "hires": {"scale": 2.0, "upscaler": "tiny-esrgan", "strength": 0.3, "steps": 10}})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["hires"] == {"scale": 2.0, "upscaler": "tiny-esrgan", "strength": 0.3, "steps": 10,
                                           "width": 1024, "height": 1024}
    r = post(api, txt2img(width=512, height=512, hires={"scale": 4.0}))  # 2048²: the limit exactly
    assert r.json()["params"]["hires"]["upscaler"] == "latent"
    assert "hires" not in post(api, txt2img()).json()["params"]
