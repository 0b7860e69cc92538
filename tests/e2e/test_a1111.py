"""AUTOMATIC1111's API (`/sdapi/v1`) through a real stack (API keys on, a worker): with the real `webuiapi`
client (inpainting with a mask, the hires fix and Extras' upscale included), and with the request
sequences Open WebUI, SillyTavern and LibreChat send, reproduced from their sources (each test names the
file and version). Every client gets its own API key, as each would in a
deployment, so each has its own remembered checkpoint and its own progress."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import httpx
import pytest
import webuiapi
from PIL import Image

from tests.e2e import inpainting
from tests.e2e.conftest import KEYS
INFOTEXT_PARAMS = re.compile(r"^Steps: \d+, Sampler: [^,]+, Schedule type: \w+, CFG scale: [\d.]+, Seed: \d+, "
                             r"Size: \d+x\d+, Model hash: [0-9a-f]{10}, Model: [\w-]+")


@pytest.fixture(scope="module")
def stack(keyed_stack):
    """The e2e keyed stack (tests/e2e/conftest.py): keys on, one per client."""
    return keyed_stack


def basic(name: str, user: str = "user") -> dict:
    """`Authorization: Basic base64(user:key)`, as Open WebUI and SillyTavern build it."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{KEYS[name]}".encode()).decode()}


def image_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def titles(stack) -> dict[str, str]:
    models = httpx.get(stack.url + "/sdapi/v1/sd-models", headers=basic("alice")).json()
    return {m["model_name"]: m["title"] for m in models}


def test_webuiapi_txt2img_with_all_its_default_fields(stack):
    """webuiapi sends every A1111 field at its own defaults (hr_upscaler "Latent", eta 1.0, ...): none of
    them is a warning. 3 × 2 images on tiny-sd (at most 4 a job) are two jobs with consecutive seeds."""
    api = webuiapi.WebUIApi(host="127.0.0.1", port=stack.port, username="me", password=KEYS["webuiapi"], steps=2)
    r = api.txt2img(prompt="a lighthouse at dusk", negative_prompt="fog", seed=42, width=256, height=256,
                    batch_size=3, n_iter=2, cfg_scale=6.5)
    assert len(r.images) == 6 and all(im.size == (256, 256) for im in r.images)
    assert len({im.tobytes() for im in r.images}) == 6
    info = r.info
    assert info["all_seeds"] == list(range(42, 48)) and info["seed"] == 42
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (256, 256, 2, 6.5)
    assert (info["sampler_name"], info["sd_model_name"], info["batch_size"], info["n_iter"]) == \
        ("Euler a", "tiny-sd", 3, 2)
    assert info["warnings"] == [] and re.fullmatch(r"\d{14}", info["job_timestamp"])
    prompt, negative, params = info["infotexts"][1].split("\n")
    assert (prompt, negative) == ("a lighthouse at dusk", "Negative prompt: fog")
    assert INFOTEXT_PARAMS.match(params) and "Seed: 43, Size: 256x256" in params and "CFG scale: 6.5" in params
    assert r.parameters["prompt"] == "a lighthouse at dusk" and r.parameters["seed"] == 42
    assert r.parameters["sampler_name"] == "Euler a" and r.parameters["enable_hr"] is False


def test_webuiapi_on_flux_gets_its_guidance_not_cfg(stack):
    """A1111's cfg_scale 7 on FLUX.1 dev runs its own guidance (a warning says so), Forge's distilled_cfg_scale
    sets it; the sampler runs as Euler with the schedule Simple, and the infotext is Forge's."""
    api = webuiapi.WebUIApi(host="127.0.0.1", port=stack.port, username="me", password=KEYS["webuiapi"], steps=2)
    flux = titles(stack)["tiny-flux"]
    r = api.txt2img(prompt="a fox", seed=3, width=256, height=256, cfg_scale=7, sampler_name="DPM++ 2M",
                    override_settings={"sd_model_checkpoint": flux})
    info = r.info
    assert (info["sd_model_name"], info["cfg_scale"], info["sampler_name"], info["scheduler"]) == \
        ("tiny-flux", 1, "Euler", "Simple")
    assert any("distilled guidance" in w for w in info["warnings"])
    assert "Distilled CFG Scale: 3.5" in info["infotexts"][0] and "CFG scale: 1," in info["infotexts"][0]
    forge = httpx.post(stack.url + "/sdapi/v1/txt2img", headers=basic("webuiapi"), timeout=120, json={
        "prompt": "a fox", "seed": 3, "width": 256, "height": 256, "steps": 2, "cfg_scale": 1,
        "distilled_cfg_scale": 2, "sampler_name": "Euler", "scheduler": "Simple",
        "override_settings": {"sd_model_checkpoint": flux}}).json()  # as Forge's own API takes it
    info = json.loads(forge["info"])
    assert info["warnings"] == [] and "Distilled CFG Scale: 2" in info["infotexts"][0]
    assert image_of(forge["images"][0]).tobytes() != r.images[0].tobytes()  # another guidance: another image


def test_webuiapi_img2img_with_a_pil_image(stack):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=stack.port, username="me", password=KEYS["webuiapi"])
    source = Image.new("RGB", (320, 256), (200, 60, 20))
    r = api.img2img(images=[source], prompt="a red barn", denoising_strength=0.5, steps=4, width=256, height=256,
                    seed=3)
    assert [im.size for im in r.images] == [(256, 256)]
    assert r.info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in r.info["infotexts"][0]
    assert r.parameters["init_images"] is None  # A1111 echoes them only with include_init_images


def test_webuiapi_img2img_with_a_mask_inpaints(stack):
    """A mask makes img2img inpaint (on the checkpoint named, tiny-sd): the input's size, and its pixels
    exactly where the blurred mask is 0."""
    api = webuiapi.WebUIApi(host="127.0.0.1", port=stack.port, username="me", password=KEYS["webuiapi"])
    image = inpainting.source()
    mask = Image.new("L", image.size, 0)
    mask.paste(255, inpainting.BOX)
    r = api.img2img(images=[image], mask_image=mask, prompt="a red door", steps=2, seed=3, denoising_strength=1,
                    inpainting_fill=1, inpaint_full_res=False, mask_blur=4, width=128, height=96,
                    override_settings={"sd_model_checkpoint": "tiny-sd"})
    assert r.info["sd_model_name"] == "tiny-sd" and r.info["warnings"] == []
    assert "Mask blur: 4" in r.info["infotexts"][0] and "Denoising strength: 1" in r.info["infotexts"][0]
    assert r.images[0].size == image.size
    inpainting.assert_repainted_only_inside(r.images[0], image)


def test_webuiapi_hires_fix_and_extras_upscale(stack):
    """enable_hr runs hires (the image at width × height × hr_scale; A1111's hires entries in the infotext);
    extra_single_image runs upscale."""
    api = webuiapi.WebUIApi(host="127.0.0.1", port=stack.port, username="me", password=KEYS["webuiapi"])
    r = api.txt2img(prompt="a lighthouse", enable_hr=True, hr_scale=1.5, hr_upscaler=webuiapi.HiResUpscaler.Lanczos,
                    denoising_strength=0.5, steps=2, width=256, height=256, seed=5,
                    override_settings={"sd_model_checkpoint": "tiny-sd"})
    assert r.images[0].size == (384, 384) and (r.info["width"], r.info["height"]) == (256, 256)  # A1111's: 1st pass
    assert r.info["warnings"] == [] and r.info["denoising_strength"] == 0.5
    assert "Size: 256x256" in r.info["infotexts"][0]
    assert "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Lanczos" in \
        r.info["infotexts"][0]
    source = Image.new("RGB", (64, 48), (200, 60, 20))
    up = api.extra_single_image(image=source, upscaler_1="Lanczos", upscaling_resize=2)
    assert up.images[0].size == (128, 96) and "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in up.info
    assert api.extra_single_image(image=source).images[0].size == (64, 48)  # upscaler_1 "None": as it is
    with pytest.raises(RuntimeError) as refused:  # webuiapi raises on any status but 200
        api.extra_single_image(image=source, upscaler_1=webuiapi.Upscaler.ESRGAN_4x)
    assert refused.value.args[0] == 422 and "upscaler_1" in refused.value.args[1]


def test_webuiapi_models_options_samplers_and_interrupt(stack):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=stack.port, username="me", password=KEYS["webuiapi"], steps=2)
    assert api.util_get_model_names() == sorted(titles(stack).values())
    api.util_set_model("tiny-sdxl")  # the closest title, then POST /options
    assert api.util_get_current_model() == titles(stack)["tiny-sdxl"]
    assert api.txt2img(prompt="a boat", width=256, height=256).info["sd_model_name"] == "tiny-sdxl"
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC", "Heun"} == set(api.util_get_sampler_names())
    assert {"automatic", "karras"} <= set(api.util_get_scheduler_names())
    assert [lora["name"] for lora in api.get_loras()] == ["tiny-style", "tiny-sketch", "tiny-sd3-style",
                                                          "tiny-flux-style"]
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos"] and api.get_sd_vae() == []
    assert api.get_latent_upscale_modes() == [{"name": "Latent"}]
    assert api.interrupt() == {}  # nothing running: nothing to stop
    api.util_wait_for_ready(check_interval=0.1)
    api.util_set_model("tiny-sd")


def test_open_webui_sequence(stack):
    """open-webui backend/open_webui/routers/images.py (commit 02530d5), engine "automatic1111" with
    AUTOMATIC1111_API_AUTH "admin:<key>" and AUTOMATIC1111_PARAMS: get_models, set_image_model (which
    posts back the whole options object), image_generations."""
    headers = {"authorization": basic("openwebui", "admin")["Authorization"]}
    with httpx.Client(base_url=stack.url, timeout=120) as ow:
        listed = ow.get("/sdapi/v1/sd-models", headers=headers).json()
        models = [{"id": m["title"], "name": m["model_name"]} for m in listed]
        model = next(m["id"] for m in models if m["name"] == "tiny-sdxl")
        options = ow.get("/sdapi/v1/options", headers=headers).json()
        assert model != options["sd_model_checkpoint"]
        options["sd_model_checkpoint"] = model
        ow.post("/sdapi/v1/options", json=options, headers=headers).raise_for_status()
        assert ow.get("/sdapi/v1/options", headers=headers).json()["sd_model_checkpoint"] == model
        data = {"prompt": "a lighthouse", "batch_size": 2, "width": 256, "height": 256, "steps": 2,
                "negative_prompt": "blurry", **{"cfg_scale": 5, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}}
        res = ow.post("/sdapi/v1/txt2img", json=data, headers=headers).json()
    assert [image_of(b64).size for b64 in res["images"]] == [(256, 256)] * 2  # get_image_data: bare base64
    info = json.loads(res["info"])
    assert info["sd_model_name"] == "tiny-sdxl" and info["warnings"] == []
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5," in info["infotexts"][0]


def sillytavern_generate_body(stack, **settings) -> dict:
    """SillyTavern public/scripts/extensions/stable-diffusion/index.js generateAutoImage: the body it posts to
    its server's /api/sd/generate, which src/endpoints/stable-diffusion.js forwards to /sdapi/v1/txt2img as
    is, its own `url` and `auth` included (seed -1 is left out; `undefined` fields are dropped by JSON)."""
    return {"url": stack.url, "auth": f"user:{KEYS['sillytavern']}", "prompt": "best quality, a knight",
            "negative_prompt": "lowres, bad anatomy", "sampler_name": "Euler a", "scheduler": "automatic",
            "steps": 2, "cfg_scale": 7, "width": 256, "height": 256, "restore_faces": False, "enable_hr": False,
            "hr_upscaler": "Latent", "hr_scale": 2, "hr_additional_modules": [], "denoising_strength": 0.7,
            "hr_second_pass_steps": 0, "override_settings": {"CLIP_stop_at_last_layers": 1},
            "override_settings_restore_afterwards": True, "clip_skip": 1, "save_images": True, "send_images": True,
            "do_not_save_grid": False, "do_not_save_samples": False, **settings}


def test_sillytavern_sequence(stack):
    """SillyTavern src/endpoints/stable-diffusion.js (commit 02903fd): /ping, /samplers, /schedulers, /models,
    /upscalers, /vaes, /get-model, /set-model (then polls progress until idle), /generate (reads options
    first, to learn whether the server is Forge)."""
    auth = basic("sillytavern")
    with httpx.Client(base_url=stack.url, timeout=120, headers=auth) as st:
        assert st.get("/sdapi/v1/options").status_code == 200  # ping
        samplers = [x["name"] for x in st.get("/sdapi/v1/samplers").json()]
        schedulers = [x["name"] for x in st.get("/sdapi/v1/schedulers").json()]
        models = [{"value": x["title"], "text": x["title"]} for x in st.get("/sdapi/v1/sd-models").json()]
        upscalers = [x["name"] for x in st.get("/sdapi/v1/upscalers").json()]
        upscalers[1:1] = [x["name"] for x in st.get("/sdapi/v1/latent-upscale-modes").json()]
        vaes = st.get("/sdapi/v1/sd-vae").json()
        assert "Euler a" in samplers and "automatic" in schedulers and vaes == []
        assert upscalers == ["None", "Latent", "Lanczos"]
        assert st.get("/sdapi/v1/options").json()["sd_model_checkpoint"] in [m["value"] for m in models]
        st.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles(stack)["tiny-sd"]}).raise_for_status()
        for _ in range(10):
            state = st.get("/sdapi/v1/progress").json()
            if state["progress"] == 0.0 and state["state"]["job_count"] == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("progress never went idle")
        assert "forge_preset" not in st.get("/sdapi/v1/options").json()
        r = st.post("/sdapi/v1/txt2img", json=sillytavern_generate_body(stack))
    assert r.status_code == 200, r.text
    data = r.json()
    assert image_of(data["images"][0]).size == (256, 256)
    assert KEYS["sillytavern"] not in r.text and "auth" not in data["parameters"]  # never echoed back
    info = json.loads(data["info"])
    assert info["sd_model_name"] == "tiny-sd" and info["warnings"] == []


def test_librechat_sequence(stack):
    """LibreChat api/app/clients/tools/structured/StableDiffusion.js (commit 7cacd8a): one fixed payload to
    SD_WEBUI_URL (credentials in the URL: axios sends them as Basic auth), then JSON.parse(info)."""
    url = stack.url.replace("http://", f"http://librechat:{KEYS['librechat']}@")
    payload = {"prompt": "a photo of a man in black clothes", "negative_prompt": "cgi, 3d, render",
               "sampler_index": "DPM++ 2M Karras", "cfg_scale": 4.5, "steps": 22, "width": 1024, "height": 1024}
    data = httpx.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=300).json()
    image = base64.b64decode(data["images"][0].split(",", 1)[0])
    info = json.loads(data["info"])
    assert Image.open(io.BytesIO(image)).size == (info["width"], info["height"]) == (1024, 1024)
    generation_info = info["infotexts"][0].split("\n").pop()
    assert generation_info.startswith("Steps: 22, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, "
                                      f"Seed: {info['seed']}, Size: 1024x1024")


def test_lora_tag_in_the_prompt_on_tiny_sdxl(stack):
    """`<lora:tiny-style:0.8>` runs the LoRA (its hash is reported, the image changes); an unknown LoRA is
    skipped with a warning, as A1111 does; info and parameters keep the prompt as sent."""
    prompt = "a cat <lora:tiny-style:0.8> in the snow <lora:no-such-lora:1>"
    body = {"prompt": prompt, "seed": 9, "steps": 2, "width": 256, "height": 256,
            "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    with httpx.Client(base_url=stack.url, timeout=120, headers=basic("lora")) as c:
        data = c.post("/sdapi/v1/txt2img", json=body).json()
        plain = c.post("/sdapi/v1/txt2img", json={**body, "prompt": "a cat  in the snow"}).json()
    info = json.loads(data["info"])
    assert info["prompt"] == data["parameters"]["prompt"] == prompt
    assert re.fullmatch(r"tiny-style: [0-9a-f]{12}", info["extra_generation_params"]["Lora hashes"])
    assert 'Lora hashes: "tiny-style: ' in info["infotexts"][0] and info["infotexts"][0].startswith(prompt)
    assert ["LoRA 'no-such-lora' is not on this server; skipped"] == info["warnings"]
    assert "Lora hashes" not in json.loads(plain["info"])["extra_generation_params"]
    assert data["images"] != plain["images"]


def test_each_key_remembers_its_own_checkpoint(stack):
    """POST /options is per API key (Basic or Bearer): alice's model is not bob's."""
    names = titles(stack)
    bearer = {"Authorization": f"Bearer {KEYS['bob']}"}
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sdxl"}, headers=basic("alice")).is_success
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": names["tiny-turbo"]}, headers=bearer).is_success
        assert c.get("/sdapi/v1/options", headers=basic("alice")).json()["sd_model_checkpoint"] == names["tiny-sdxl"]
        assert c.get("/sdapi/v1/options", headers=bearer).json()["sd_model_checkpoint"] == names["tiny-turbo"]
        body = {"prompt": "a fox", "steps": 2, "width": 256, "height": 256, "sampler_name": "DDIM"}
        alice = json.loads(c.post("/sdapi/v1/txt2img", json=body, headers=basic("alice")).json()["info"])
        bob = json.loads(c.post("/sdapi/v1/txt2img", json=body, headers=bearer).json()["info"])
        assert (alice["sd_model_name"], alice["sampler_name"], alice["warnings"]) == ("tiny-sdxl", "DDIM", [])
        assert (bob["sd_model_name"], bob["sampler_name"], bob["cfg_scale"]) == ("tiny-turbo", "Euler a", 0.0)
        assert any("turbo models run their own sampler" in w for w in bob["warnings"])
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"u:wrong").decode()}):
            r = c.get("/sdapi/v1/sd-models", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
            assert r.json()["error"]["code"] == "unauthorized" and r.json()["detail"]


def test_progress_and_interrupt_answer_with_the_images_made_before_it(stack):
    """Two jobs of 4 images each; progress follows the key's call; /interrupt stops the second job mid-way
    and the waiting txt2img answers 200 with the first job's images, as A1111 answers an interrupted job."""
    auth = basic("interrupt")
    body = {"prompt": "a castle", "seed": 100, "steps": 100, "width": 512, "height": 512, "batch_size": 4,
            "n_iter": 2, "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    answer = {}
    call = threading.Thread(target=lambda: answer.update(
        r=httpx.post(stack.url + "/sdapi/v1/txt2img", json=body, headers=auth, timeout=300)))
    call.start()
    seen = []
    with httpx.Client(base_url=stack.url, timeout=30, headers=auth) as c:
        deadline = time.time() + 240
        while time.time() < deadline:
            p = c.get("/sdapi/v1/progress").json()
            seen.append(p)
            if p["state"]["job_no"] == 1 and p["state"]["sampling_step"] > 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the second job never ran: {seen[-3:]}")
        assert c.post("/sdapi/v1/interrupt").json() == {}
        call.join(120)
        assert c.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    running = seen[-1]
    assert running["state"]["job"] == "Batch 2 out of 2" and running["state"]["job_count"] == 2
    assert 0.5 <= running["progress"] < 1 and running["eta_relative"] >= 0
    # The client polled: the running job's live previews show as current_image (bare base64 WebP).
    assert any(p["current_image"] for p in seen)
    assert base64.b64decode(next(p["current_image"] for p in seen if p["current_image"]))[8:12] == b"WEBP"
    assert re.fullmatch(r"\d{14}", running["state"]["job_timestamp"])
    assert all(0 <= p["progress"] <= 1 for p in seen) and [p["progress"] for p in seen] == sorted(
        p["progress"] for p in seen)
    r = answer["r"]
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 4 and len(info["infotexts"]) == 4 and info["all_seeds"] == list(range(100, 108))
    assert "interrupted: 4 of 8 images were made" in info["warnings"]
