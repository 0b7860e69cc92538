"""The OpenAI Images routes without a worker: every error in OpenAI's shape, naming OpenAI's parameter;
what is accepted and ignored; n split over jobs; the wait's limit; an edit's mask (OpenAI's convention) that
runs inpaint. (Jobs that run: tests/e2e/test_openai.py.)"""

from __future__ import annotations

import base64
import contextlib
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.api.auth import digest
from service.api.compat.openai_images import mask
from service.api.compat.openai_images.routes import Plan, bodies
from service.jobs import heartbeats
from service.redis import sync_client
from tests.conftest import free_port, png_data_url

GEN, EDIT = "/v1/images/generations", "/v1/images/edits"
KEY = "sk-openai-test-key"


def png(width=64, height=64) -> bytes:
    return base64.b64decode(png_data_url(width, height).split(",", 1)[1])


def openai_error(r, status: int, param: str | None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error") or status == 429
    return error


@pytest.fixture
def app(app_settings):
    settings = app_settings.model_copy(update={"openai_model_aliases": {"dall-e-2": "tiny-turbo"}})
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("size", ["big", "512", "512x", "1000x1001", "2048x2048", "128x128", "-512x512"])
def test_an_unsupported_size_is_400_naming_size_and_saying_what_works(app, size):
    r = app.post(GEN, json={"model": "dall-e-2", "prompt": "x", "size": size})
    message = openai_error(r, 400, "size")["message"]
    assert "256 to 1024" in message and "multiple of 8" in message and "512x512" in message
    assert "big" not in message and "1001" not in message  # the rejected value is never echoed


def test_native_validation_is_400_with_the_openai_parameter(app):
    assert openai_error(app.post(GEN, json={"model": "tiny-sdxl"}), 400, "prompt")["code"] == "invalid_value"
    openai_error(app.post(GEN, json={"prompt": "x", "output_format": "gif"}), 400, "output_format")
    openai_error(app.post(GEN, json={"prompt": "x", "n": 11}), 400, "n")
    openai_error(app.post(GEN, json={"prompt": "x", "n": "2"}), 400, "n")  # JSON numbers are strict
    openai_error(app.post(GEN, json={"prompt": "x", "steps": 0}), 400, "steps")
    openai_error(app.post(GEN, json={"prompt": "x", "response_format": "file"}), 400, "response_format")
    openai_error(app.post(GEN, json={"prompt": "x", "prompt_strength": 1}), 400, "prompt_strength")
    error = openai_error(app.post(GEN, json={"prompt": "x", "model": "dall-e-3"}), 400, "model")
    assert "tiny-sd" in error["message"] and "dall-e-2" in error["message"] and "tiny-svd" not in error["message"]


def test_stream_markup_and_several_images_are_refused_clearly(app):
    assert "not supported" in openai_error(app.post(GEN, json={"prompt": "x", "stream": True}), 400, "stream")[
        "message"]
    image = ("a.png", png(), "image/png")
    r = app.post(EDIT, data={"prompt": "x"}, files={"image": image, "markup": ("m.png", png(), "image/png")})
    assert "not supported" in openai_error(r, 400, "markup")["message"]
    r = app.post(EDIT, data={"prompt": "x"}, files=[("image[]", image), ("image[]", image)])
    assert "one image" in openai_error(r, 400, "image")["message"]
    openai_error(app.post(EDIT, data={"prompt": "x", "model": "tiny-turbo"}, files={"other": image}), 400, "image")
    r = app.post(EDIT, data={"prompt": "x"}, files={"image": ("a.png", b"not an image", "image/png")})
    openai_error(r, 400, "image")
    openai_error(app.post(EDIT, data={"prompt": "x", "model": "tiny-svd"}, files={"image": image}), 400, "model")


def rgba_mask(size=(64, 64), box=(16, 16, 48, 48), fmt="PNG", mode="RGBA") -> bytes:
    """OpenAI's mask: opaque, with `box` fully transparent (the area to edit)."""
    m = Image.new(mode, size, (0, 0, 0, 255) if mode == "RGBA" else (0, 0, 0))
    if box is not None:
        m.paste((0, 0, 0, 0) if mode == "RGBA" else (255, 255, 255), box)
    out = io.BytesIO()
    m.save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("mask, words", [
    (rgba_mask((64, 32)), "the image's size (the image is 64×64, the mask 64×32)"),
    (rgba_mask((128, 128), (32, 32, 96, 96)), "the image's size"),  # OpenAI wants the same size, not the ratio
    (rgba_mask(mode="RGB"), "alpha channel"),  # no alpha: which pixels are transparent?
    (rgba_mask(fmt="WEBP"), "PNG with an alpha channel"),
    (rgba_mask(box=None), "no transparent pixels: nothing to edit"),
    (b"not an image", "is not a readable image"),
])
def test_a_mask_openai_would_refuse_is_400_naming_mask(app, mask, words):
    r = app.post(EDIT, data={"prompt": "x"}, files={"image": ("a.png", png(), "image/png"),
                                                    "mask": ("m.png", mask, "image/png")})
    assert words in openai_error(r, 400, "mask")["message"]


def test_an_openai_mask_becomes_inpaints_mask():
    """Transparent = edit becomes white = repaint; alpha 0 everywhere edits the whole image."""
    settings = type("S", (), {"max_image_bytes": 2**20, "max_pixels": 2048**2})()
    image = png_data_url(64, 64)
    native = Image.open(io.BytesIO(base64.b64decode(mask.native_mask(image, base64.b64encode(rgba_mask()).decode(),
                                                                        settings).split(",", 1)[1])))
    assert native.mode == "L" and native.getpixel((20, 20)) == 255 and native.getpixel((4, 4)) == 0
    everything = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    out = io.BytesIO()
    everything.save(out, "PNG")
    whole = mask.native_mask(image, base64.b64encode(out.getvalue()).decode(), settings)
    assert Image.open(io.BytesIO(base64.b64decode(whole.split(",", 1)[1]))).getextrema() == (255, 255)


@pytest.mark.parametrize("model, runs_on", [
    (None, "tiny-sd-inpaint"),  # the inpaint task's default: the inpainting checkpoint
    ("tiny-sdxl", "tiny-sdxl"),  # a model that inpaints runs it
    ("dall-e-2", "tiny-sd-inpaint"),  # an alias of Turbo, which cannot: the default
])
def test_an_edit_with_a_mask_runs_inpaint(app_settings, module_server, model, runs_on):
    """Validated as a native inpaint job and submitted; with no live worker, the 503 names the task and model."""
    settings = app_settings.model_copy(update={"redis_url": module_server.url,
                                               "openai_model_aliases": {"dall-e-2": "tiny-turbo"}})
    form = {"prompt": "a red door", **({"model": model} if model else {}), "size": "1024x1024"}  # size: ignored
    with TestClient(create_app(settings)) as c:
        r = c.post(EDIT, data=form, files={"image": ("a.png", png(), "image/png"),
                                           "mask": ("m.png", rgba_mask(), "image/png")})
    assert f"no live worker serves {runs_on} for inpaint" in openai_error(r, 503, None)["message"]


def test_ignored_openai_parameters_are_accepted(app):
    """They pass the adapter: the answer is about the size, not about them."""
    ignored = {"quality": "hd", "style": "vivid", "user": "u1", "background": "auto", "moderation": "low",
               "output_compression": 80, "partial_images": 0, "stream": False, "safety_identifier": "s"}
    openai_error(app.post(GEN, json={"prompt": "x", "size": "1x1", **ignored}), 400, "size")
    form = {"prompt": "x", "size": "1x1", "n": "2", "quality": "auto", "input_fidelity": "high", "stream": "false"}
    openai_error(app.post(EDIT, data=form, files={"image": ("a.png", png(), "image/png")}), 400, "size")


def test_body_limit_content_type_and_malformed_bodies(app, app_settings):
    big = b"x" * (app_settings.max_body_bytes + 1)
    assert openai_error(app.post(GEN, content=big, headers={"content-type": "application/json"}), 413, None)[
        "code"] == "request_too_large"
    openai_error(app.post(EDIT, files={"image": ("a.png", big, "image/png")}), 413, None)
    openai_error(app.post(GEN, content=b"prompt=x", headers={"content-type": "text/plain"}), 415, None)
    openai_error(app.post(EDIT, json={"prompt": "x"}), 415, None)
    openai_error(app.post(GEN, content=b"{", headers={"content-type": "application/json"}), 400, None)
    openai_error(app.post(GEN, json=["x"]), 400, None)
    r = app.post(EDIT, content=b"--b\r\nbroken", headers={"content-type": "multipart/form-data"})
    openai_error(r, 400, None)


def test_api_keys_401_and_rate_limit_429(app_settings):
    settings = app_settings.model_copy(update={"api_keys": {"alice": digest(KEY)}, "rate_limit_per_minute": 2})
    with TestClient(create_app(settings)) as c:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
            r = c.post(GEN, json={"prompt": "x"}, headers=headers)
            assert openai_error(r, 401, None)["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"].startswith("Bearer")
        name = f"rate-{time.monotonic_ns()}"  # a fresh key, so earlier runs do not count
        c.app.state.ctx.auth.keys[name] = digest(name)
        codes = [c.post(GEN, json={"prompt": "x", "size": "1x1"}, headers={"Authorization": f"Bearer {name}"})
                 for _ in range(3)]
        assert [r.status_code for r in codes] == [400, 400, 429]
        assert openai_error(codes[2], 429, None)["code"] == "rate_limit_exceeded"
        assert int(codes[2].headers["retry-after"]) >= 1


def test_with_keys_off_any_bearer_is_accepted(app):
    r = app.post(GEN, json={"prompt": "x", "size": "1x1"}, headers={"Authorization": "Bearer anything"})
    openai_error(r, 400, "size")


@contextlib.contextmanager
def busy_worker(redis_url: str, *pairs: str):
    """A live worker's heartbeat serving `pairs` ("task/model") on a Redis no real worker drains: a
    worker that is busy elsewhere, so submitted jobs stay queued."""
    r = sync_client(redis_url)
    name = f"busy-{time.monotonic_ns()}"
    heartbeats.beat(r, name, {"serves": list(pairs)}, ttl=60)
    try:
        yield
    finally:
        heartbeats.forget(r, name)
        r.close()


def test_with_no_live_worker_for_the_model_the_answer_is_503_at_once(app_settings, module_server):
    settings = app_settings.model_copy(update={"redis_url": module_server.url})
    with TestClient(create_app(settings)) as c:
        started = time.monotonic()
        r = c.post(GEN, json={"prompt": "x", "model": "tiny-turbo"})
        assert openai_error(r, 503, None)["code"] == "service_unavailable" and int(r.headers["retry-after"]) > 0
        assert "no live worker" in r.json()["error"]["message"] and time.monotonic() - started < 5


def test_a_wait_past_the_limit_is_504_without_retry_and_cancels_the_job(app_settings, module_server):
    settings = app_settings.model_copy(update={"redis_url": module_server.url, "compat_wait_s": 1})
    with busy_worker(module_server.url, "turbo/tiny-turbo"), TestClient(create_app(settings)) as c:
        r = c.post(GEN, json={"prompt": "the worker is busy elsewhere", "model": "tiny-turbo"})
        error = openai_error(r, 504, None)
        assert error["code"] == "timeout" and r.headers["x-should-retry"] == "false"
        assert "1 s" in error["message"]


def test_n_beyond_one_job_splits_into_jobs_with_following_seeds():
    plan = Plan("tiny-sd", "txt2img", {"prompt": "x", "model": "tiny-sd"})
    jobs = bodies(plan, 10, seed=100)
    assert [(b["num_images"], b["seed"]) for b in jobs] == [(4, 100), (4, 104), (2, 108)]
    assert all(b["task"] == "txt2img" and b["prompt"] == "x" for b in jobs)
    assert "seed" not in bodies(plan, 3, seed=None)[0]  # one job: the native path draws the seed
    drawn = bodies(plan, 5, seed=None)
    assert drawn[1]["seed"] == (drawn[0]["seed"] + 4) % 2**32
    assert [b["seed"] for b in bodies(plan, 6, seed=2**32 - 2)] == [2**32 - 2, 2]  # wraps, as the worker's seeds
    turbo = bodies(Plan("tiny-turbo", "turbo", {"prompt": "x", "negative_prompt": "y"}), 8, seed=None)
    assert len(turbo) == 1 and "negative_prompt" not in turbo[0]  # fitted to the task's fields


def test_routes_are_in_the_openapi_document(app):
    paths = app.get("/openapi.json").json()["paths"]
    edit = paths[EDIT]["post"]
    assert "multipart/form-data" in edit["requestBody"]["content"]
    assert {"200", "400", "401", "500", "504"} <= set(edit["responses"])
    assert "application/json" in paths[GEN]["post"]["requestBody"]["content"]


def test_a_full_queue_is_503_with_retry_after(app_settings, module_server):
    """An own Redis: no other test's worker drains this queue."""
    settings = app_settings.model_copy(update={"redis_url": module_server.url, "queue_cap": {
        **app_settings.queue_cap, "turbo": 1}})
    with busy_worker(module_server.url, "turbo/tiny-turbo"), TestClient(create_app(settings)) as c:
        assert c.post("/generate", json={"task": "turbo", "prompt": "x"}).status_code == 202
        r = c.post(GEN, json={"prompt": "x", "model": "tiny-turbo"})
        assert openai_error(r, 503, None)["code"] == "service_unavailable" and int(r.headers["retry-after"]) > 0


def test_redis_unreachable_is_503_in_openais_shape(app_settings):
    settings = app_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(settings)) as c:
        r = c.post(GEN, json={"prompt": "x", "model": "tiny-turbo"})
        assert openai_error(r, 503, None)["code"] == "service_unavailable" and r.headers["retry-after"]
