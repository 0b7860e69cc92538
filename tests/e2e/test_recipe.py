"""Result files fetched over HTTP from a real stack carry their recipe: a Turbo PNG (text chunks), an
img2img WebP (EXIF UserComment and XMP), an SVD MP4 (its comment and description tags)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tests.conftest import png_data_url
from tests.e2e.test_tasks import fetch, run
from tests.workers.test_recipe import ffmetadata, parse_infotext, piexif_user_comment, user_comment, xmp_recipe


def test_a_turbo_png_carries_parameters_and_fresco(client):
    job = run(client, {"task": "turbo", "prompt": "a red fox", "seed": 77, "num_images": 2, "width": 256,
                       "height": 256})
    for i, item in enumerate(job["result"]["images"]):
        data, _ = fetch(client, item["url"])
        img = Image.open(io.BytesIO(data))
        recipe = json.loads(img.text["fresco"])
        assert recipe["seed"] == 77 + i == item["seed"] and recipe["task"] == "turbo"
        assert recipe["model"]["name"] == "tiny-turbo" == job["model"] and recipe["model"]["source"] == "tiny"
        assert recipe["params"]["steps"] == job["params"]["steps"] and recipe["params"]["seed"] == 77
        assert recipe["versions"]["fresco"] and recipe["versions"]["diffusers"] and recipe["versions"]["torch"]
        prompt, negative, entries = parse_infotext(img.text["parameters"])
        assert prompt == "a red fox" and negative == ""
        assert entries["Seed"] == str(77 + i) and entries["Model"] == "tiny-turbo" and entries["Size"] == "256x256"


@pytest.mark.parametrize("model, entries", [
    (None, {"Sampler": "Euler", "CFG scale": "5"}),  # tiny-sdxl
    ("tiny-sd3", {"Sampler": "Euler", "Schedule type": "Simple", "CFG scale": "3.5"}),
    ("tiny-flux", {"Sampler": "Euler", "Schedule type": "Simple", "CFG scale": "1", "Distilled CFG Scale": "3.5"}),
])
def test_an_img2img_webp_carries_it_in_exif_and_xmp(client, model, entries):
    body = {"task": "img2img", "prompt": "a watercolor", "negative_prompt": "text", "seed": 5,
            "image": png_data_url(128, 96), "steps": 4, "strength": 0.5, "output_format": "webp"}
    job = run(client, {**body, "model": model} if model else body)
    data, ctype = fetch(client, job["result"]["images"][0]["url"])
    img = Image.open(io.BytesIO(data))
    assert ctype == "image/webp"
    recipe = xmp_recipe(img.info["xmp"])
    assert recipe["seed"] == 5 and recipe["model"]["name"] == job["model"] and recipe["task"] == "img2img"
    assert recipe["params"]["image"] == {"name": "input.png", "width": 128, "height": 96}  # never the bytes
    prompt, negative, written = parse_infotext(piexif_user_comment(user_comment(img.info["exif"])[1]))
    assert (prompt, negative) == ("a watercolor", "text")
    assert written["Seed"] == "5" and written["Denoising strength"] == "0.5" and written["Model"] == job["model"]
    assert {k: written.get(k) for k in entries} == entries


def test_an_svd_mp4_carries_it_in_its_tags(client, tmp_path):
    job = run(client, {"task": "svd", "image": png_data_url(256, 192), "width": 128, "height": 64, "num_frames": 3,
                       "fps": 7, "steps": 2, "decode_chunk_size": 3, "seed": 12})
    data, ctype = fetch(client, job["result"]["video"]["url"])
    assert ctype == "video/mp4"
    tags = ffmetadata(data, tmp_path)
    recipe = json.loads(tags["comment"])
    assert recipe["task"] == "svd" and recipe["seed"] == 12 and recipe["model"]["name"] == job["model"]
    assert recipe["params"]["num_frames"] == 3
    _, _, entries = parse_infotext(tags["description"])
    assert entries["Seed"] == "12" and entries["Model"] == job["model"] and entries["Frames"] == "3"
