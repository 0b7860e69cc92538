"""`inpaint` in requests: a 422 naming `mask` for a mask of another aspect ratio, one with nothing to repaint
(after `invert_mask`), none without `expand`, or one that is no image; `expand` past the pixel limit; a
valid request's params (the output size includes `expand`); `GET /models` marks the inpainting checkpoint
and makes it the task's default. The worker side: tests/workers/test_inpaint.py."""

from __future__ import annotations

import base64

import pytest
from PIL import Image

from tests.conftest import png_data_url
from tests.service.api.test_validation import SECRET, assert_rejected, b64, post

IMG = png_data_url(128, 96)


def mask(size=(128, 96), box=(32, 32, 64, 64), mode="L") -> str:
    m = Image.new(mode, size, 0)
    m.paste(255 if mode == "L" else (255,) * len(mode), box)
    return b64(m)


def inpaint(**fields):
    return {"task": "inpaint", "prompt": "a cat", "image": IMG, "mask": mask(), **fields}


@pytest.mark.parametrize("body, field", [
    (inpaint(mask=mask((128, 128))), "mask"),  # another aspect ratio
    (inpaint(mask=b64(Image.new("L", (128, 96), 0))), "mask"),  # all black: nothing to repaint
    (inpaint(mask=b64(Image.new("L", (64, 48), 255)), invert_mask=True), "mask"),  # all white, inverted
    (inpaint(mask=b64(Image.new("RGBA", (128, 96), (0, 0, 0, 255)))), "mask"),  # opaque black: nothing either
    (inpaint(mask=None), "mask"),  # no mask and no expand
    (inpaint(mask=base64.b64encode(b"not an image " + SECRET.encode()).decode()), "mask"),
    (inpaint(expand={"left": 1024, "right": 1024, "top": 1024, "bottom": 1024}), "expand"),  # 2176×2144 > 2048²
    (inpaint(expand={"left": 12}), "expand.left"),  # not a multiple of 8
    (inpaint(expand={"left": 1032}), "expand.left"),
    (inpaint(fill="latent"), "fill"),
    (inpaint(mask_blur=65), "mask_blur"),
    (inpaint(model="tiny-turbo"), "model"),  # Turbo has no inpainting
])
def test_bad_inpaint_rejected(api, body, field):
    assert_rejected(post(api, body), field)


def test_an_inpainting_checkpoint_serves_only_inpaint(api):
    assert_rejected(post(api, {"task": "txt2img", "prompt": "x", "model": "tiny-sd-inpaint"}), "model")
    assert_rejected(post(api, {"task": "img2img", "prompt": "x", "image": IMG, "model": "tiny-sd-inpaint"}), "model")


def test_a_valid_request_resolves_the_output_size_with_expand(api):
    r = post(api, inpaint(expand={"left": 16, "right": 8, "top": 0, "bottom": 24}, mask_padding=32))
    assert r.status_code == 202, r.text
    p = r.json()["params"]
    assert r.json()["model"] == "tiny-sd-inpaint"
    assert (p["width"], p["height"]) == (128 + 24, 96 + 24)
    assert p["expand"] == {"left": 16, "right": 8, "top": 0, "bottom": 24}
    assert (p["mask_padding"], p["mask_blur"], p["fill"], p["invert_mask"], p["strength"]) == (32, 4, "original",
                                                                                              False, 1.0)
    assert p["mask"]["width"] == 128 and p["image"]["height"] == 96
    assert p["mask"]["url"].endswith("/mask.png") and api.get(p["mask"]["url"]).status_code == 200  # stored, shown
    assert p["guidance_scale"] == 7.5 and p["scheduler"]
    # no mask: only the new area is repainted
    r = post(api, inpaint(mask=None, expand={"right": 64}, model="tiny-sdxl"))
    assert r.status_code == 202, r.text
    assert (r.json()["params"]["width"], r.json()["params"]["height"]) == (192, 96)
    assert r.json()["params"]["guidance_scale"] == 5.0
    # no expand: the input's size, `expand` null; an RGBA mask whose alpha varies is read from it
    rgba = Image.new("RGBA", (256, 192), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (10, 10, 40, 40))
    r = post(api, inpaint(mask=b64(rgba), model="tiny-sd"))
    assert r.status_code == 202, r.text
    assert (r.json()["params"]["width"], r.json()["params"]["height"], r.json()["params"]["expand"]) == (128, 96,
                                                                                                         None)
    # an RGBA mask whose alpha does not vary is read by its colours: opaque white repaints everything
    r = post(api, inpaint(mask=b64(Image.new("RGBA", (128, 96), (255, 255, 255, 255)))))
    assert r.status_code == 202, r.text


def test_models_marks_the_inpainting_checkpoint_the_default(api):
    task = api.get("/models").json()["tasks"]["inpaint"]
    assert task["default_model"] == "tiny-sd-inpaint"
    models = {m["name"]: m for m in task["models"]}
    assert set(models) == {"tiny-sdxl", "tiny-sd", "tiny-pai", "tiny-sd-inpaint", "tiny-sd3", "tiny-flux",
                           "tiny-flux-schnell"}
    assert models["tiny-sd-inpaint"]["inpainting"] is True
    assert models["tiny-sd"]["inpainting"] is False
    for name in ("mask", "mask_blur", "mask_padding", "invert_mask", "fill", "expand", "control", "loras"):
        assert name in task["parameters"], name
    assert task["parameters"]["fill"]["enum"] == ["original", "fill", "noise", "nothing"]
    txt2img = {m["name"] for m in api.get("/models").json()["tasks"]["txt2img"]["models"]}
    assert "tiny-sd-inpaint" not in txt2img


def test_a_fully_transparent_mask_repaints_everything(api):
    """OpenAI's reading: alpha 0 everywhere is "edit it all", whatever the invisible colours; an opaque mask
    (constant alpha 255) is read as luminance."""
    from service.masks import read_mask

    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert read_mask(clear).getextrema() == (255, 255) and read_mask(clear, invert=True).getextrema() == (0, 0)
    assert read_mask(Image.new("LA", (8, 8), (0, 0))).getextrema() == (255, 255)
    assert read_mask(Image.new("RGBA", (8, 8), (255, 255, 255, 255))).getextrema() == (255, 255)
    assert read_mask(Image.new("RGBA", (8, 8), (0, 0, 0, 255))).getextrema() == (0, 0)
    r = post(api, inpaint(mask=b64(Image.new("RGBA", (128, 96), (0, 0, 0, 0)))))
    assert r.status_code == 202, r.text
