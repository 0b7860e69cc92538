"""inpaint through HTTP, Redis, a real worker process and storage (the session's stack): a job on the task's
default model, the inpainting checkpoint, with an RGBA mask (transparent = repaint) and `expand`; the
stored PNG is the input's size plus `expand`, and the input's pixels exactly wherever the blurred mask is 0."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tests.e2e.inpainting import BLUR, BOX, assert_repainted_only_inside, source
from tests.e2e.test_tasks import run


def png_url(img: Image.Image) -> str:
    out = io.BytesIO()
    img.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_an_inpaint_job_keeps_the_input_outside_the_mask(client):
    image = source()
    mask = Image.new("RGBA", (256, 192), (255, 255, 255, 255))  # twice the size: resized to the image
    mask.paste((255, 255, 255, 0), tuple(2 * v for v in BOX))
    job = run(client, {"task": "inpaint", "prompt": "a red door", "image": png_url(image), "mask": png_url(mask),
                       "steps": 2, "seed": 5, "mask_blur": BLUR, "expand": {"right": 32}})
    assert job["model"] == "tiny-sd-inpaint" and job["progress"]["stage"] == "done"
    assert (job["params"]["width"], job["params"]["height"]) == (160, 96)
    r = client.get(job["result"]["images"][0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(r.content))
    assert out.size == (160, 96)
    assert_repainted_only_inside(out, image, (128, 0, 160, 96))  # and the new area, feathered into the image
    assert np.asarray(out.convert("RGB"))[:, 128:].mean() > 5  # the new area is painted
