"""inpaint through HTTP, Redis, a real worker process and storage (the session's stack): a job on the task's
default model, the inpainting checkpoint, with an RGBA mask (transparent = repaint) and `expand`; the
stored PNG is the input's size plus `expand`, and the input's pixels exactly wherever the blurred mask is 0."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tests.e2e.test_tasks import run

BLUR = 4
MARGIN = 3 * BLUR + 2  # beyond this distance from what is repainted, the blurred mask is 0


def png_url(img: Image.Image) -> str:
    out = io.BytesIO()
    img.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_an_inpaint_job_keeps_the_input_outside_the_mask(client):
    image = Image.effect_mandelbrot((128, 96), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    box = (48, 32, 80, 64)
    mask = Image.new("RGBA", (256, 192), (255, 255, 255, 255))  # twice the size: resized to the image
    mask.paste((255, 255, 255, 0), tuple(2 * v for v in box))
    job = run(client, {"task": "inpaint", "prompt": "a red door", "image": png_url(image), "mask": png_url(mask),
                       "steps": 2, "seed": 5, "mask_blur": BLUR, "expand": {"right": 32}})
    assert job["model"] == "tiny-sd-inpaint" and job["progress"]["stage"] == "done"
    assert (job["params"]["width"], job["params"]["height"]) == (160, 96)
    r = client.get(job["result"]["images"][0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
    src = np.asarray(image, dtype=np.int16)
    assert out.shape == (96, 160, 3)
    keep = np.ones((96, 128), bool)
    left, top, right, bottom = box
    keep[top - MARGIN:bottom + MARGIN, left - MARGIN:right + MARGIN] = False
    keep[:, 128 - MARGIN:] = False  # the new area's feathering into the image
    assert (out[:, :128][keep] == src[keep]).all()
    assert np.abs(out[top:bottom, left:right] - src[top:bottom, left:right]).mean() > 5
    assert out[:, 128:].mean() > 5  # the new area is painted
