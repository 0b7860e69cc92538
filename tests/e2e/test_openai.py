"""The OpenAI Images API through a real stack (API keys on, aliases, a worker): with the real `openai` SDK
(an edit with a mask included: inpaint), and with the exact requests Open WebUI and LibreChat send, byte
for byte."""

from __future__ import annotations

import base64
import io
import json
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import png_data_url
from tests.e2e import inpainting
from tests.e2e.conftest import KEYS

KEY = KEYS["openai"]
PROMPT = "a lighthouse on a cliff at dusk"


@pytest.fixture(scope="module")
def openai_stack(keyed_stack):
    """The e2e keyed stack (tests/e2e/conftest.py): its key, the aliases, fault injection on."""
    return keyed_stack


@pytest.fixture
def sdk(openai_stack):
    with openai.OpenAI(base_url=openai_stack.url + "/v1", api_key=KEY, timeout=120) as client:
        yield client


def png_bytes(width=320, height=256) -> bytes:
    return base64.b64decode(png_data_url(width, height).split(",", 1)[1])


def image_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_generate_answers_signed_urls_anyone_holding_them_can_fetch(sdk):
    r = sdk.images.generate(model="tiny-turbo", prompt=PROMPT, size="256x256", quality="hd", style="vivid", user="u")
    assert len(r.data) == 1 and r.data[0].b64_json is None and r.data[0].revised_prompt == PROMPT
    assert r.size == "256x256" and r.output_format == "png" and r.created > 0
    url = urlsplit(r.data[0].url)
    assert url.path.endswith("/0.png") and set(parse_qs(url.query)) == {"expires", "signature"}
    fetched = httpx.get(r.data[0].url)  # no Authorization header: the signature is the credential
    assert fetched.headers["content-type"] == "image/png" and image_of(fetched.content).size == (256, 256)


def test_generate_b64_json_with_n_over_one_job(sdk):
    """tiny-sd (txt2img) makes at most 4 images a job: n=5 is two jobs, one answer."""
    r = sdk.images.generate(model="tiny-sd", prompt=PROMPT, n=5, size="256x320", response_format="b64_json",
                            extra_body={"steps": 2})
    assert len(r.data) == 5 and all(d.url is None for d in r.data)
    images = [image_of(base64.b64decode(d.b64_json)) for d in r.data]
    assert {(i.format, i.size) for i in images} == {("PNG", (256, 320))}


@pytest.mark.parametrize("name, model", [("flux.1-schnell", "tiny-flux-schnell"), ("FLUX.1-dev", "tiny-flux")])
def test_flux_by_the_names_openai_clients_send(sdk, openai_stack, name, model):
    """A FLUX.1 model by its variant's usual names, with its own steps and guidance (dev's is small here)."""
    r = sdk.images.generate(model=name, prompt=PROMPT, size="256x256",
                            extra_body={"steps": 2} if model == "tiny-flux" else None)
    assert image_of(httpx.get(r.data[0].url).content).size == (256, 256)
    job_id = urlsplit(r.data[0].url).path.split("/")[-2]  # /results/<job>/0.png
    job = httpx.get(f"{openai_stack.url}/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert job["model"] == model
    assert (job["params"]["guidance_scale"], job["params"]["steps"]) == \
        ((0.0, 4) if model == "tiny-flux-schnell" else (3.5, 2))


def test_an_alias_model_and_n_and_a_long_prompt(sdk):
    long = PROMPT + ", " + "highly detailed " * 200  # over the native 2000 characters: cut, not refused
    r = sdk.images.generate(model="dall-e-2", prompt=long, n=2, size="256x256", output_format="webp")
    assert len(r.data) == 2 and len({d.url for d in r.data}) == 2 and r.output_format == "webp"
    assert r.data[0].revised_prompt == long[:2000]
    assert image_of(httpx.get(r.data[1].url).content).format == "WEBP"


def test_edit_keeps_the_input_size_unless_told(sdk, openai_stack):
    r = sdk.images.edit(image=("in.png", png_bytes(320, 256), "image/png"), prompt="make it snowy", model="tiny-sd",
                        response_format="b64_json", extra_body={"steps": 2})
    assert image_of(base64.b64decode(r.data[0].b64_json)).size == (320, 256)
    # The image as a data URL in a plain form field, and a size: the output is resized to it.
    form = {"image": png_data_url(320, 256), "prompt": "make it snowy", "model": "tiny-sd", "size": "256x256",
            "steps": "2", "strength": "0.5", "response_format": "b64_json"}
    r = httpx.post(openai_stack.url + "/v1/images/edits", files={k: (None, v) for k, v in form.items()},
                   headers=auth_headers(), timeout=120)
    assert r.status_code == 200, r.text
    assert image_of(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (256, 256)


def test_edit_with_a_mask_inpaints_only_its_transparent_pixels(sdk):
    """`mask` (OpenAI's convention: transparent = edit) runs inpaint: pixels the blurred mask leaves out are
    the input's exactly; those under it change."""
    image = inpainting.source()
    mask = Image.new("RGBA", image.size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), inpainting.BOX)
    files = {}
    for name, img in (("image", image), ("mask", mask)):
        out = io.BytesIO()
        img.save(out, "PNG")
        files[name] = (f"{name}.png", out.getvalue(), "image/png")
    r = sdk.images.edit(image=files["image"], mask=files["mask"], prompt="a red door", model="tiny-sd",
                        response_format="b64_json", extra_body={"steps": 2, "seed": 7})
    result = image_of(base64.b64decode(r.data[0].b64_json))
    assert result.size == image.size
    inpainting.assert_repainted_only_inside(result, image)


def test_sdk_errors_are_its_exception_types(sdk, openai_stack):
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.images.generate(model="tiny-turbo", prompt=PROMPT, size="1792x1024")
    assert bad.value.param == "size" and "256 to 1024" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.images.generate(model="midjourney", prompt=PROMPT)
    assert bad.value.param == "model" and "dall-e-2" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:  # OpenAI's rule: the mask has the image's size
        sdk.images.edit(image=("in.png", png_bytes(), "image/png"), mask=("m.png", png_bytes(64, 64), "image/png"),
                        prompt="x")
    assert bad.value.param == "mask" and "the image's size" in bad.value.message
    with openai.OpenAI(base_url=openai_stack.url + "/v1", api_key="sk-wrong") as wrong:
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.images.generate(prompt=PROMPT)
    assert denied.value.code == "invalid_api_key"


def test_a_failed_job_is_a_500_the_sdk_does_not_retry(sdk):
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.images.generate(model="tiny-turbo", prompt="fresco-fault:oom", size="256x256")
    assert failed.value.code == "gpu_oom" and "out of memory" in failed.value.message
    assert failed.value.response.headers["x-should-retry"] == "false"


# ---- the requests other clients send, as they send them


def auth_headers(**more) -> dict:
    return {"Authorization": f"Bearer {KEY}", **more}


def test_open_webui_generation(openai_stack):
    """backend/open_webui/routers/images.py, engine "openai": aiohttp `json=` (json.dumps), response_format
    b64_json unless the model matches ^gpt-image, the admin's IMAGES_OPENAI_API_PARAMS merged in, and
    `?api-version=` when one is configured. It reads `b64_json`, else fetches `url` with the same key."""
    requests = [
        ("/v1/images/generations", {"model": "dall-e-2", "prompt": PROMPT, "n": 1, "size": "512x512",
                                    "response_format": "b64_json"}),
        ("/v1/images/generations?api-version=2024-02-01", {"model": "gpt-image-1", "prompt": PROMPT, "n": 1,
                                                           "size": "auto", "steps": 2}),
    ]
    for path, data in requests:
        r = httpx.post(openai_stack.url + path, content=json.dumps(data).encode(), timeout=120,
                       headers=auth_headers(**{"Content-Type": "application/json"}))
        assert r.status_code == 200, r.text
        (item,) = r.json()["data"]
        assert "url" not in item and image_of(base64.b64decode(item["b64_json"])).size == (512, 512)


def test_open_webui_edit(openai_stack):
    """Its aiohttp FormData: each text field `text/plain; charset=utf-8` with a Content-Length, the image
    (from a data URL) as `image` named <uuid>.png; `model` is "" when the admin set no edit model."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (("model", ""), ("prompt", "make it snowy"), ("response_format", "b64_json")):
        raw = value.encode()
        parts.append(f'--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: form-data; '
                     f'name="{name}"\r\nContent-Length: {len(raw)}\r\n\r\n'.encode() + raw + b"\r\n")
    image = png_bytes(256, 256)
    parts.append(f'--{boundary}\r\nContent-Type: image/png\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{uuid.uuid4()}.png"\r\nContent-Length: {len(image)}\r\n\r\n'.encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    r = httpx.post(openai_stack.url + "/v1/images/edits", content=body, timeout=120,
                   headers=auth_headers(**{"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    assert r.status_code == 200, r.text
    assert image_of(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (256, 256)


def test_librechat_dalle3_tool(openai_stack):
    """api/app/clients/tools/structured/DALLE3.js: the node SDK's JSON (no spaces), n 1, quality and style;
    it downloads `data[0].url` without any header and names the file by the URL path's extension."""
    body = json.dumps({"model": "dall-e-3", "quality": "standard", "style": "vivid", "size": "1024x1024",
                       "prompt": PROMPT, "n": 1}, separators=(",", ":")).encode()
    r = httpx.post(openai_stack.url + "/v1/images/generations", content=body, timeout=120,
                   headers=auth_headers(**{"Content-Type": "application/json", "User-Agent": "OpenAI/JS 4.26.0"}))
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert urlsplit(url).path.endswith(".png")
    assert image_of(httpx.get(url).content).size == (1024, 1024)


def test_librechat_gpt_image_tools(openai_stack):
    """OpenAIImageTools.js: generation by the node SDK with background, output_format, quality and size
    "auto" and no response_format (it reads `b64_json`); the edit by form-data (no part content type for
    text fields, the file as `image[]`)."""
    body = json.dumps({"model": "gpt-image-1", "prompt": PROMPT, "n": 1, "background": "auto",
                       "output_format": "png", "quality": "auto", "size": "auto"}, separators=(",", ":")).encode()
    r = httpx.post(openai_stack.url + "/v1/images/generations", content=body, timeout=120,
                   headers=auth_headers(**{"Content-Type": "application/json"}))
    assert r.status_code == 200, r.text
    assert image_of(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (512, 512)

    boundary = "--------------------------" + uuid.uuid4().hex[:24]
    fields = (("model", "gpt-image-1"), ("prompt", "make it snowy"), ("quality", "auto"), ("size", "auto"))
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields]
    image = png_bytes(256, 256)
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image[]"; filename="img-1.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    r = httpx.post(openai_stack.url + "/v1/images/edits", content=body, timeout=120,
                   headers=auth_headers(**{"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    assert r.status_code == 200, r.text
    assert image_of(base64.b64decode(r.json()["data"][0]["b64_json"])).size == (256, 256)
