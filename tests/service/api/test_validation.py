"""Each rule of the contract's request table: a 422 naming the field, never echoing the value."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.conftest import png_data_url

SECRET = "zq-unique-sentinel"  # put into rejected values; must never come back


def post(api, body, **kw):
    return api.post("/generate", content=json.dumps(body) if not isinstance(body, (bytes, str)) else body,
                    headers={"content-type": "application/json", **kw.pop("headers", {})}, **kw)


def assert_rejected(r, field, status=422):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["code"] == "validation_error"
    fields = [f["field"] for f in body["error"]["fields"]]
    assert field in fields, body
    assert SECRET not in r.text


def b64(img: Image.Image, fmt="PNG", **save) -> str:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


IMG = png_data_url()

CASES = [
    # common
    ({"task": "sdxl", "prompt": "x", "extra_field": SECRET}, "extra_field"),
    ({"task": "sdxl", "prompt": "x", "\ud800" + SECRET: 1}, "body"),
    ({"task": "sdxl", "prompt": "x", "bad name " + SECRET: 1}, "(unnamed field)"),
    ({"task": "paint", "prompt": SECRET}, "task"),
    ({"prompt": "x"}, "task"),
    ({"task": "sdxl", "prompt": "x", "model": SECRET}, "model"),
    ({"task": "sdxl", "prompt": "x", "seed": -1}, "seed"),
    ({"task": "sdxl", "prompt": "x", "seed": 2**32}, "seed"),
    ({"task": "sdxl", "prompt": "x", "seed": "42"}, "seed"),
    ({"task": "sdxl", "prompt": "x", "output_format": "mp4"}, "output_format"),
    ({"task": "svd", "image": IMG, "output_format": "png"}, "output_format"),
    # prompt
    ({"task": "sdxl"}, "prompt"),
    ({"task": "sdxl", "prompt": ""}, "prompt"),
    ({"task": "sdxl", "prompt": "x" * 2001}, "prompt"),
    ({"task": "sdxl", "prompt": "a\x00b" + SECRET}, "prompt"),
    ({"task": "sdxl", "prompt": 5}, "prompt"),
    ({"task": "sdxl", "prompt": "x", "negative_prompt": "\x00" + SECRET}, "negative_prompt"),
    # sdxl
    ({"task": "sdxl", "prompt": "x", "width": 1001}, "width"),
    ({"task": "sdxl", "prompt": "x", "height": 248}, "height"),
    ({"task": "sdxl", "prompt": "x", "width": 2056}, "width"),
    ({"task": "sdxl", "prompt": "x", "width": "1024"}, "width"),
    ({"task": "sdxl", "prompt": "x", "width": 1024.0}, "width"),
    ({"task": "sdxl", "prompt": "x", "width": True}, "width"),
    ({"task": "sdxl", "prompt": "x", "steps": 0}, "steps"),
    ({"task": "sdxl", "prompt": "x", "steps": 101}, "steps"),
    ({"task": "sdxl", "prompt": "x", "guidance_scale": 20.5}, "guidance_scale"),
    ({"task": "sdxl", "prompt": "x", "guidance_scale": -1}, "guidance_scale"),
    ({"task": "sdxl", "prompt": "x", "guidance_scale": "5"}, "guidance_scale"),
    ({"task": "sdxl", "prompt": "x", "num_images": 5}, "num_images"),
    ({"task": "sdxl", "prompt": "x", "refiner_switch": 1.0}, "refiner_switch"),
    ({"task": "sdxl", "prompt": "x", "refiner_switch": 0}, "refiner_switch"),
    ({"task": "sdxl", "prompt": "x", "refiner": "yes"}, "refiner"),
    ({"task": "sdxl", "prompt": "x", "scheduler": SECRET}, "scheduler"),
    # turbo
    ({"task": "turbo", "prompt": "x", "width": 1032}, "width"),
    ({"task": "turbo", "prompt": "x", "width": 250}, "width"),
    ({"task": "turbo", "prompt": "x", "steps": 5}, "steps"),
    ({"task": "turbo", "prompt": "x", "num_images": 9}, "num_images"),
    ({"task": "turbo", "prompt": "x", "guidance_scale": 1.0}, "guidance_scale"),
    ({"task": "turbo", "prompt": "x", "negative_prompt": "y"}, "negative_prompt"),
    # img2img
    ({"task": "img2img", "prompt": "x"}, "image"),
    ({"task": "img2img", "prompt": "x", "image": IMG, "strength": 0}, "strength"),
    ({"task": "img2img", "prompt": "x", "image": IMG, "strength": 1.01}, "strength"),
    ({"task": "img2img", "prompt": "x", "image": IMG, "strength": 0.1, "steps": 5}, "strength"),
    ({"task": "img2img", "prompt": "x", "image": IMG, "width": 100}, "width"),
    ({"task": "img2img", "prompt": "x", "image": "not base64 " + SECRET}, "image"),
    ({"task": "img2img", "prompt": "x", "image": base64.b64encode(b"GIF89a" + b"\0" * 20).decode()}, "image"),
    ({"task": "img2img", "prompt": "x", "image": "http://169.254.169.254/" + SECRET}, "image"),
    ({"task": "img2img", "prompt": "x", "image": "data:text/html;base64,PGI+"}, "image"),
    # svd
    ({"task": "svd", "image": IMG, "width": 1000}, "width"),
    ({"task": "svd", "image": IMG, "num_frames": 15}, "num_frames"),
    ({"task": "svd", "image": IMG, "num_frames": 0}, "num_frames"),
    ({"task": "svd", "image": IMG, "fps": 61}, "fps"),
    ({"task": "svd", "image": IMG, "motion_bucket_id": 256}, "motion_bucket_id"),
    ({"task": "svd", "image": IMG, "noise_aug_strength": 1.5}, "noise_aug_strength"),
    ({"task": "svd", "image": IMG, "min_guidance_scale": 4.0, "max_guidance_scale": 3.0}, "min_guidance_scale"),
    ({"task": "svd", "image": IMG, "decode_chunk_size": 0}, "decode_chunk_size"),
    ({"task": "svd", "image": IMG, "prompt": "x"}, "prompt"),
]


@pytest.mark.parametrize("body,field", CASES, ids=[f"{c[0].get('task')}-{c[1][:20]}" for c in CASES])
def test_rule_rejects_with_field_named(api, body, field):
    assert_rejected(post(api, body), field)


@pytest.mark.parametrize("raw,field", [
    (b'{"task":"sdxl","prompt":"x","guidance_scale":NaN}', "guidance_scale"),
    (b'{"task":"sdxl","prompt":"x","guidance_scale":Infinity}', "guidance_scale"),
    (b'{"task":"sdxl","prompt":"x","guidance_scale":1e999}', "guidance_scale"),
    (b'{"task":"sdxl","prompt":"x","width":1e3}', "width"),
    (b'{"task":"sdxl","prompt":"\\ud800"}', "prompt"),
])
def test_non_finite_numbers_and_lone_surrogates_are_422(api, raw, field):
    assert_rejected(post(api, raw), field)


def test_pixel_limit_counts_width_times_height(api_settings_small):
    r = post(api_settings_small, {"task": "sdxl", "prompt": "x", "width": 1024, "height": 1024})
    assert_rejected(r, "width")


@pytest.fixture
def api_settings_small(app_settings):
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    with TestClient(create_app(app_settings.model_copy(update={"max_pixels": 512 * 512}))) as c:
        yield c


def test_image_header_pixel_bomb_rejected_before_decoding(api):
    # A tiny PNG whose header declares 10000×10000: refused from the header.
    bomb = b64(Image.new("1", (10000, 10000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    assert_rejected(post(api, {"task": "img2img", "prompt": "x", "image": bomb}), "image")


def test_truncated_and_animated_images_rejected(api):
    full = base64.b64decode(b64(Image.effect_noise((300, 300), 50).convert("RGB"), "PNG"))
    truncated = base64.b64encode(full[: len(full) // 2]).decode()
    assert_rejected(post(api, {"task": "img2img", "prompt": "x", "image": truncated}), "image")
    frames = [Image.new("RGB", (300, 300), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    animated = base64.b64encode(buf.getvalue()).decode()
    assert_rejected(post(api, {"task": "svd", "image": animated}), "image")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_other_image_formats_rejected(api, fmt):
    assert_rejected(post(api, {"task": "img2img", "prompt": "x", "image": b64(Image.new("RGB", (64, 64)), fmt)}),
                    "image")


def test_image_too_many_bytes_rejected(api, app_settings):
    big = base64.b64encode(b"\x89PNG" + b"\0" * (app_settings.max_image_bytes + 10)).decode()
    assert_rejected(post(api, {"task": "img2img", "prompt": "x", "image": big}), "image")


def test_jpeg_webp_and_bare_base64_accepted(api):
    for fmt in ("JPEG", "WEBP"):
        r = post(api, {"task": "img2img", "prompt": "x", "image": png_data_url(fmt=fmt)})
        assert r.status_code == 202, r.text
    bare = b64(Image.new("RGB", (260, 300)))
    r = post(api, {"task": "img2img", "prompt": "x", "image": bare})
    assert r.status_code == 202
    assert (r.json()["params"]["width"], r.json()["params"]["height"]) == (256, 296)  # floored to multiples of 8


def test_several_failing_fields_all_named(api):
    r = post(api, {"task": "sdxl", "prompt": "", "width": 7, "steps": 0})
    fields = {f["field"] for f in r.json()["error"]["fields"]}
    assert {"prompt", "width", "steps"} <= fields


def test_body_not_json_or_not_utf8_is_400(api):
    for raw in (b"{not json", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000):
        r = post(api, raw)
        assert r.status_code in (400, 422), r.status_code
        assert r.json()["error"]["code"] in ("bad_request", "validation_error")
    assert post(api, b"{not json").status_code == 400


def test_body_not_an_object_is_422(api):
    assert_rejected(post(api, b"[1, 2]"), "body")


def test_wrong_content_type_is_415(api):
    r = api.post("/generate", content=b"task=sdxl", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415


def test_body_over_limit_is_413_even_when_chunked(api, app_settings):
    big = b'{"task":"sdxl","prompt":"' + b"x" * (app_settings.max_body_bytes + 1) + b'"}'
    r = post(api, big)
    assert r.status_code == 413

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = api.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_query_wait_out_of_range_is_422_and_unknown_job_404(api):
    assert api.get("/jobs/00000000-0000-4000-8000-000000000000").status_code == 404
    assert api.get("/jobs/..%2F..%2Fetc").status_code == 404
    r = api.get("/jobs/00000000-0000-4000-8000-000000000000", params={"wait": 61})
    assert r.status_code == 422


def test_valid_request_resolves_every_parameter(api):
    r = post(api, {"task": "sdxl", "prompt": "a lighthouse", "seed": 7})
    assert r.status_code == 202
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    params = r.json()["params"]
    assert params == {"seed": 7, "prompt": "a lighthouse", "negative_prompt": "", "width": 1024, "height": 1024,
                      "steps": 30, "guidance_scale": 5.0, "num_images": 1, "refiner": True, "refiner_switch": 0.8,
                      "scheduler": "euler", "loras": [], "control": [], "output_format": "png"}
    assert r.json()["status"] == "queued" and r.json()["queue_position"] is not None
    api.delete(f"/jobs/{r.json()['id']}")


def test_seed_drawn_when_absent_and_reported(api):
    r = post(api, {"task": "turbo", "prompt": "x"})
    assert 0 <= r.json()["params"]["seed"] < 2**32
    api.delete(f"/jobs/{r.json()['id']}")
