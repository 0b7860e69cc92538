"""The AUTOMATIC1111 adapter without a worker: how its requests translate to native ones (samplers,
checkpoints, `<lora:…>` tags, batches and seeds, ignored features), its 422s naming A1111's fields, its
lists, per-key options, and HTTP Basic auth on `/sdapi/v1`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.api.auth import digest
from service.api.compat.a1111 import answer, extras, progress
from service.api.compat.a1111.checkpoints import checkpoint, find
from service.api.compat.a1111.fields import unsupported
from service.api.compat.a1111.prompt_loras import take_loras
from service.api.compat.a1111.samplers import choose
from service.api.compat.a1111.state import Run
from service.api.compat.a1111.translate import CHECKPOINT_FIELD, MAX_IMAGES, plan
from service.api.errors import ValidationFailed
from service.catalog import tiny_catalog
from tests.conftest import free_port, png_data_url
from tests.service.api.test_validation import SECRET

CATALOG = tiny_catalog()
# webuiapi 0.9.17's txt2img payload at its defaults (webuiapi.py WebUIApi.txt2img).
WEBUIAPI_DEFAULTS = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "x", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512,
    "height": 512, "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
    "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "scheduler": "automatic",
    "sampler_index": "Euler a", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {},
}


@pytest.mark.parametrize("sampler, schedule, scheduler, warned", [
    (None, None, "euler", False),  # A1111's default sampler_index: "Euler"
    ("Euler a", "automatic", "euler_a", False),
    ("k_euler_a", None, "euler_a", False),
    ("DPM++ 2M", None, "dpmpp_2m_karras", False),  # A1111 1.9+: DPM++ 2M's automatic schedule is Karras
    ("DPM++ 2M", "Uniform", "dpmpp_2m", False),
    ("DPM++ 2M Karras", None, "dpmpp_2m_karras", False),  # the pre-1.9 name LibreChat sends
    ("dpm++ 2m", "karras", "dpmpp_2m_karras", False),
    ("DDIM", "Automatic", "ddim", False),
    ("UniPC", None, "unipc", False),
    ("Heun", None, "heun", False),
    ("DPM++ SDE Karras", None, "dpmpp_2m_karras", True),  # the nearest, never a 422
    ("DPM++ 2S a", None, "euler_a", True),  # ancestral: the nearest is Euler a
    ("DPM++ 2M SDE", None, "dpmpp_2m_karras", True),
    ("LMS", "normal", "euler", True),
    ("Restart", None, "euler", True),
    ("Euler", "Karras", "euler", True),  # Fresco has no Karras Euler
    ("Euler a", "bogus " + SECRET, "euler_a", True),
])
def test_sampler_and_schedule_map_to_a_fresco_scheduler(sampler, schedule, scheduler, warned):
    choice = choose(sampler, schedule)
    assert choice.scheduler == scheduler and bool(choice.warnings) == warned


def test_checkpoint_names_clients_send():
    sdxl = checkpoint(CATALOG, "tiny-sdxl")
    assert sdxl.title == f"tiny-sdxl [{sdxl.hash}]" and len(sdxl.hash) == 10 and sdxl.sha256.startswith(sdxl.hash)
    for name in (sdxl.title, "tiny-sdxl", "TINY-SDXL", "tiny-sdxl [0123456789]", "tiny-sdxl.safetensors",
                 "/models/tiny-sdxl.ckpt", sdxl.hash, sdxl.sha256):
        assert find(CATALOG, name) == "tiny-sdxl", name
    assert find(CATALOG, "tiny:pai") == "tiny-pai"  # a file name only one model has
    for name in ("tiny", "tiny-svd", "", None, 5, SECRET):  # every tiny model's file is "tiny"; svd makes videos
        assert find(CATALOG, name) is None


def test_lora_tags_leave_the_prompt_and_become_native_loras():
    taken = take_loras(CATALOG, "tiny-sdxl", "a cat <lora:tiny-style:0.8>, <LoRA:Tiny-Sketch> <lyco:tiny-style:1>"
                                             " <lora:nope:1> <lora:tiny-cat:1> <hypernet:h:1>")
    assert taken.prompt == "a cat ,"
    assert taken.loras == [{"name": "tiny-style", "scale": 0.8}, {"name": "tiny-sketch", "scale": None}]
    assert len(taken.warnings) == 4  # named twice; not on this server; an embedding; hypernetworks
    on_sd = take_loras(CATALOG, "tiny-sd", "x <lora:tiny-style:1>")  # tiny-style is for SDXL models
    assert on_sd.loras == [] and "does not fit model tiny-sd" in on_sd.warnings[0]
    off = take_loras(CATALOG, "tiny-sdxl", "x <lora:tiny-style:1>", apply=False)  # disable_extra_networks
    assert (off.prompt, off.loras, off.warnings) == ("x", [], [])
    for tag in ("<lora:tiny-style:2.5>", "<lora:tiny-style:abc>", "<lora:tiny-style:nan>"):
        with pytest.raises(ValidationFailed) as err:
            take_loras(CATALOG, "tiny-sdxl", f"x {tag}")
        assert err.value.fields[0]["field"] == "prompt"


def test_images_split_into_jobs_of_the_tasks_limit_with_consecutive_seeds():
    p = plan(CATALOG, "txt2img", {"prompt": "x", "seed": 2**32 - 2, "batch_size": 3, "n_iter": 3,
                                  "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}, None)
    assert (p.task, p.model) == ("sdxl", "tiny-sdxl")
    assert [(b["num_images"], b["seed"]) for b in p.bodies] == [(4, 2**32 - 2), (4, 2), (1, 6)]  # wraps at 2^32
    assert p.seeds == [2**32 - 2, 2**32 - 1, 0, 1, 2, 3, 4, 5, 6]
    assert p.bodies[0] == {"task": "sdxl", "model": "tiny-sdxl", "prompt": "x", "negative_prompt": "", "steps": 50,
                           "guidance_scale": 7.0, "scheduler": "euler", "loras": [], "seed": 2**32 - 2,
                           "num_images": 4}
    random = plan(CATALOG, "txt2img", {"prompt": "x", "batch_size": 2, "n_iter": 3}, None)
    assert random.task == "txt2img" and len(random.bodies) == 2  # tiny-sd: the default, up to 4 a job
    assert random.seeds == [(random.seeds[0] + i) % 2**32 for i in range(6)]  # drawn once, then consecutive
    with pytest.raises(ValidationFailed):
        plan(CATALOG, "txt2img", {"prompt": "x", "batch_size": MAX_IMAGES, "n_iter": 2}, None)


def test_turbo_runs_its_own_sampler_without_guidance_or_negative_prompt():
    p = plan(CATALOG, "txt2img", {"prompt": "x", "negative_prompt": "y", "steps": 20, "cfg_scale": 7,
                                  "sampler_name": "DDIM"}, "tiny-turbo")
    assert p.bodies == [{"task": "turbo", "model": "tiny-turbo", "prompt": "x", "steps": 4, "loras": [],
                         "seed": p.seeds[0], "num_images": 1}]
    assert (p.sampler_name, p.cfg_scale, p.steps, len(p.warnings)) == ("Euler a", 0.0, 4, 4)
    assert plan(CATALOG, "txt2img", {"prompt": "x"}, "tiny-turbo").steps == 1  # no steps asked: Turbo's own


def test_img2img_and_what_parameters_echo():
    body = {"prompt": "", "init_images": ["data:image/png;base64,AAAA"], "width": 256, "auth": "user:" + SECRET,
            "url": "http://x", "steps": "8", "cfg_scale": "5.5", "send_images": False}
    p = plan(CATALOG, "img2img", body, None)
    assert p.bodies[0]["task"] == "img2img" and p.bodies[0]["image"] == "data:image/png;base64,AAAA"
    assert (p.bodies[0]["strength"], p.bodies[0]["steps"], p.bodies[0]["guidance_scale"]) == (0.75, 8, 5.5)
    assert p.bodies[0]["prompt"] == " " and "height" not in p.bodies[0]  # A1111 allows an empty prompt
    assert p.parameters["init_images"] is None and "auth" not in p.parameters and "url" not in p.parameters
    assert p.parameters["steps"] == "8" and p.send_images is False  # echoed as sent, as A1111 does


def test_only_features_turned_on_are_warned_about():
    assert unsupported(WEBUIAPI_DEFAULTS, img2img=False) == []
    assert unsupported({**WEBUIAPI_DEFAULTS, "enable_hr": True}, img2img=False) == []  # the hires fix runs
    on = {**WEBUIAPI_DEFAULTS, "enable_hr": True, "restore_faces": True, "alwayson_scripts": {"ADetailer": {}},
          "styles": ["anime"], "subseed_strength": 0.3, "override_settings": {"CLIP_stop_at_last_layers": 2},
          "hr_checkpoint_name": "other", "hr_sampler_name": "Use same sampler", "hr_prompt": "another"}
    assert len(unsupported(on, img2img=False)) == 7  # hr_checkpoint_name and hr_prompt; the same sampler is fine
    img = unsupported({"mask": "AAAA", "resize_mode": 1, "init_images": ["a", "b"]}, img2img=True)
    assert len(img) == 2  # the mask is inpainting


MASK = png_data_url(64, 64, (255, 255, 255))


def inpaint_body(**fields) -> dict:
    return {"prompt": "x", "init_images": [png_data_url(64, 64)], "mask": MASK, **fields}


def test_img2img_with_a_mask_runs_inpaint():
    p = plan(CATALOG, "img2img", inpaint_body(steps=4), None)
    body = p.bodies[0]
    assert (p.task, p.model, body["task"]) == ("inpaint", "tiny-sd-inpaint", "inpaint")
    assert body["model"] == "tiny-sd-inpaint"
    # A1111's API defaults: inpainting_fill 0 (fill), "only masked" with padding 0, mask blur 4 (mask_blur_x)
    assert (body["mask"], body["fill"], body["mask_padding"], body["invert_mask"], body["strength"]) == (
        MASK, "fill", 0, False, 0.75)
    assert "mask_blur" not in body and "width" not in body and p.warnings == []
    params = {"width": 64, "height": 64, "mask_blur": 4, "fill": "fill", "mask_padding": 0, "invert_mask": False}
    record = {"id": "j", "status": "succeeded", "params": json.dumps(params), "warnings": "[]"}
    info = json.loads(answer.build(p, CATALOG, [record], [[b"png"]], "20260101120000", "fresco 1")["info"])
    assert info["extra_generation_params"] == {"Mask blur": 4, "Masked content": "fill", "Inpaint area": "Only masked",
                                               "Masked area padding": 0}
    assert "Denoising strength: 0.75, Mask blur: 4, Masked content: fill, " in info["infotexts"][0]
    assert info["is_using_inpainting_conditioning"] is True
    for fill, native in enumerate(("fill", "original", "noise", "nothing")):
        assert plan(CATALOG, "img2img", inpaint_body(inpainting_fill=fill), None).bodies[0]["fill"] == native
    p = plan(CATALOG, "img2img", inpaint_body(inpaint_full_res=False, inpaint_full_res_padding=32, mask_blur_x=8,
                                              inpainting_mask_invert=1, width=512, height=512), None)
    body = p.bodies[0]
    assert ("mask_padding" not in body, body["mask_blur"], body["invert_mask"]) == (True, 8, True)
    assert p.warnings == ["inpainting keeps the input image's size (64×64); width and height were ignored"]
    assert plan(CATALOG, "img2img", inpaint_body(mask_blur=2, mask_blur_x=8), None).bodies[0]["mask_blur"] == 2
    # The key's checkpoint when it inpaints (as A1111), else the task's default; a named inpainting checkpoint
    assert plan(CATALOG, "img2img", inpaint_body(), "tiny-sdxl").model == "tiny-sdxl"
    turbo = plan(CATALOG, "img2img", inpaint_body(), "tiny-turbo")
    assert turbo.model == "tiny-sd-inpaint" and "cannot inpaint" in turbo.warnings[0]
    named = {"override_settings": {"sd_model_checkpoint": "tiny-sd-inpaint"}}
    assert plan(CATALOG, "img2img", inpaint_body(**named), "tiny-sdxl").model == "tiny-sd-inpaint"
    assert plan(CATALOG, "img2img", inpaint_body(mask=""), None).task == "img2img"  # an empty mask: no mask
    with pytest.raises(ValidationFailed) as err:
        plan(CATALOG, "img2img", inpaint_body(override_settings={"sd_model_checkpoint": "tiny-turbo"}), None)
    assert err.value.fields[0]["field"] == CHECKPOINT_FIELD


@pytest.mark.parametrize("sent, native, warned", [
    (None, "latent", False), ("Latent", "latent", False), ("latent", "latent", False),
    ("Latent (nearest)", "latent", True), ("Latent (bicubic antialiased)", "latent", True),
    ("None", "lanczos", False), ("Lanczos", "lanczos", False), ("tiny-esrgan", "tiny-esrgan", False),
    ("TINY-ESRGAN", "tiny-esrgan", False),
])
def test_hr_upscaler_names(sent, native, warned):
    p = plan(CATALOG, "txt2img", {"prompt": "x", "enable_hr": True, "hr_upscaler": sent}, None)
    assert p.bodies[0]["hires"]["upscaler"] == native and bool(p.warnings) == warned


def test_txt2img_with_enable_hr_runs_hires():
    body = {"prompt": "x", "width": 256, "height": 192, "steps": 6, "enable_hr": True, "hr_scale": 1.5,
            "hr_upscaler": "Lanczos", "denoising_strength": 0.4, "hr_second_pass_steps": 3}
    p = plan(CATALOG, "txt2img", body, None)
    assert p.bodies[0]["hires"] == {"scale": 1.5, "upscaler": "lanczos", "strength": 0.4, "steps": 3}
    assert p.denoising_strength == 0.4 and p.warnings == []
    assert "hires" not in plan(CATALOG, "txt2img", {**body, "enable_hr": False}, None).bodies[0]
    default = plan(CATALOG, "txt2img", {"prompt": "x", "enable_hr": True, "hr_second_pass_steps": 0}, None)
    assert default.bodies[0]["hires"] == {"scale": 2.0, "upscaler": "latent", "strength": 0.7}  # steps: the job's
    # hr_resize_x / hr_resize_y give the target size: the scale follows; another aspect ratio fits within it
    resized = {"prompt": "x", "width": 256, "height": 192, "enable_hr": True, "hr_scale": 3}
    assert plan(CATALOG, "txt2img", {**resized, "hr_resize_x": 512}, None).bodies[0]["hires"]["scale"] == 2.0
    assert plan(CATALOG, "txt2img", {**resized, "hr_resize_y": 288}, None).bodies[0]["hires"]["scale"] == 1.5
    uneven = plan(CATALOG, "txt2img", {**resized, "hr_resize_x": 512, "hr_resize_y": 512}, None)
    assert uneven.bodies[0]["hires"]["scale"] == 2.0 and "not 256×192 scaled evenly" in uneven.warnings[0]
    assert uneven.names == {"hires.scale": "hr_resize_x"}
    sdxl = plan(CATALOG, "txt2img", {"prompt": "x", "enable_hr": True}, "tiny-sdxl")  # sdxl runs hires too
    assert sdxl.task == "sdxl" and sdxl.bodies[0]["hires"]["scale"] == 2.0
    turbo = plan(CATALOG, "txt2img", {"prompt": "x", "enable_hr": True}, "tiny-turbo")
    assert "hires" not in turbo.bodies[0] and any("hires fix is not available" in w for w in turbo.warnings)


def test_the_hires_answer_carries_a1111s_hires_entries():
    p = plan(CATALOG, "txt2img", {"prompt": "x", "seed": 5, "steps": 4, "width": 256, "height": 256,
                                  "enable_hr": True, "hr_upscaler": "Lanczos", "denoising_strength": 0.5}, None)
    params = {"width": 256, "height": 256, "hires": {"scale": 2.0, "upscaler": "lanczos", "strength": 0.5,
                                                     "steps": 4, "width": 512, "height": 512}}
    record = {"id": "j", "status": "succeeded", "params": json.dumps(params), "warnings": "[]"}
    info = json.loads(answer.build(p, CATALOG, [record], [[b"png"]], "20260101120000", "fresco 1")["info"])
    assert "Size: 256x256, Model hash: " in info["infotexts"][0]  # A1111's Size: the first pass's
    assert "Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos, Version: " in \
        info["infotexts"][0]
    assert info["extra_generation_params"] == {"Hires upscale": "2", "Hires steps": 4, "Hires upscaler": "Lanczos"}
    assert info["denoising_strength"] == 0.5


def test_extras_translate_to_upscale():
    image = png_data_url(64, 48)
    p = extras.plan(CATALOG, {"image": image, "upscaler_1": "tiny-esrgan", "upscaling_resize": 3})
    assert p.body == {"task": "upscale", "model": "tiny-esrgan", "image": image, "scale": 3.0, "output_format": "png"}
    assert extras.plan(CATALOG, {"image": image, "upscaler_1": "Lanczos"}).body["model"] == "lanczos"
    assert extras.plan(CATALOG, {"image": image}).body is None  # upscaler_1 "None" (the default): no upscale
    to_size = extras.plan(CATALOG, {"image": image, "upscaler_1": "lanczos", "resize_mode": 1,
                                    "upscaling_resize_w": 128, "upscaling_resize_h": 96})
    assert to_size.body["scale"] == 2.0 and to_size.warnings == []
    uneven = extras.plan(CATALOG, {"image": image, "upscaler_1": "lanczos", "resize_mode": 1,
                                   "upscaling_resize_w": 128, "upscaling_resize_h": 128, "gfpgan_visibility": 0.5})
    assert uneven.body["scale"] == 2.0 and len(uneven.warnings) == 2  # fits within; face restoration ignored
    assert "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in extras.html_info(uneven, 2.0)


def test_infotext_in_a1111s_format():
    p = plan(CATALOG, "txt2img", {"prompt": "a cat, sitting", "negative_prompt": "dog", "seed": 5, "steps": 20,
                                  "sampler_name": "Euler a"}, None)
    text = answer.infotext(p, 5, 512, 512, "tiny-sd", "0123456789", {"Lora hashes": "a: 1, b: 2"}, "fresco 1")
    assert text == ("a cat, sitting\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, "
                    "CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 0123456789, Model: tiny-sd, "
                    'Lora hashes: "a: 1, b: 2", Version: fresco 1')  # a value with ",", ":" or a newline: quoted


def _record(status, fraction=0.0, step=0, total=0, started=None):
    return {"status": status, "progress": json.dumps({"stage": "base", "step": step, "total_steps": total,
                                                      "fraction": fraction}),
            "started_at": repr(started) if started else ""}


def test_progress_of_a_run():
    run = Run("r", None, 2, time.time(), "20260101120000", ["a", "b"])
    queued = progress.report(run, [_record("queued"), _record("queued")])
    assert queued["progress"] == 0 and queued["state"]["job"] == "queued" and queued["state"]["job_count"] == 2
    now = time.time()
    second = progress.report(run, [_record("succeeded", 1.0, started=now - 10), _record("running", 0.5, 5, 10)])
    assert second["progress"] == 0.75 and 3 <= second["eta_relative"] <= 4
    assert second["state"] == {"skipped": False, "interrupted": False, "stopping_generation": False,
                               "job": "Batch 2 out of 2", "job_count": 2, "job_timestamp": "20260101120000",
                               "job_no": 1, "sampling_step": 5, "sampling_steps": 10}
    running = [_record("running", 0.1), None]
    assert progress.current_job(run, running) == "a" and progress.current_job(run, [None, None]) is None
    assert progress.report(run, running, "data:image/webp;base64,UklG")["current_image"] == "UklG"
    assert progress.report(run, running)["current_image"] is None
    assert progress.idle()["state"]["job_count"] == 0


def test_runs_in_redis_interrupt_and_end(module_server):
    """An interrupt flags the key's oldest run and returns its jobs; a job the run adds afterwards learns it
    was interrupted (to cancel itself); an ended run leaves nothing behind; other keys are not touched."""
    from service.api.compat.a1111 import state
    from service.jobs import keys
    from service.redis import async_client

    async def scenario():
        redis = async_client(module_server.url)
        try:
            first = await state.begin(redis, "alice", 2, 60)
            second = await state.begin(redis, "alice", 1, 60)
            other = await state.begin(redis, "bob", 1, 60)
            assert not await state.add_job(redis, first, "job-1")
            assert (await state.current(redis, "alice")).jobs == ["job-1"]
            stopped = await state.interrupt(redis, "alice")
            assert (stopped.id, stopped.jobs, stopped.interrupted) == (first.id, ["job-1"], True)
            assert await state.add_job(redis, first, "job-2")  # submitted after the interrupt: cancel it
            assert not await state.add_job(redis, other, "job-3")
            await state.end(redis, first)
            assert (await state.current(redis, "alice")).id == second.id
            for run in (second, other):
                await state.end(redis, run)
            assert await state.current(redis, "alice") is None and await state.interrupt(redis, "bob") is None
            left = [keys.a1111_run(r.id) for r in (first, second, other)] + [keys.a1111_runs("alice"),
                                                                              keys.a1111_runs("bob")]
            assert not await redis.exists(*left)
        finally:
            await redis.aclose()

    asyncio.run(scenario())


# ---------------------------------------------------------------- over HTTP, without a worker


def sdapi(api, method, path, **kw):
    return api.request(method, "/sdapi/v1/" + path, **kw)


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "cfg_scale": 25}, "cfg_scale"),
    ({"prompt": "x", "width": 1001}, "width"),
    ({"prompt": "x", "height": 4096}, "height"),
    ({"prompt": "x", "steps": 500}, "steps"),
    ({"prompt": "x", "steps": SECRET}, "steps"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "x", "seed": 2**40}, "seed"),
    ({"prompt": "x", "n_iter": 0}, "n_iter"),
    ({"prompt": "x", "batch_size": 9, "n_iter": 2}, "batch_size"),
    ({"prompt": "x", "override_settings": {"sd_model_checkpoint": SECRET}}, CHECKPOINT_FIELD),
    ({"prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny-svd"}}, CHECKPOINT_FIELD),
    ({"prompt": "x <lora:tiny-style:7>", "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}, "prompt"),
    ([1, 2], "body"),
])
def test_txt2img_422_names_the_a1111_field(api, body, field):
    r = sdapi(api, "POST", "txt2img", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert set(data) == {"error", "request_id", "detail"} and data["error"]["code"] == "validation_error"
    assert [f["field"] for f in data["error"]["fields"]] == [field] and field in data["detail"]
    assert SECRET not in r.text


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x"}, "init_images"),
    ({"prompt": "x", "init_images": []}, "init_images"),
    ({"prompt": "x", "init_images": ["not an image " + SECRET]}, "init_images[0]"),
    ({"prompt": "x", "init_images": [png_data_url(64, 64)], "denoising_strength": 0}, "denoising_strength"),
    ({"prompt": "x", "init_images": [png_data_url(64, 64)], "denoising_strength": 0.1, "steps": 5},
     "denoising_strength"),  # int(steps × strength) is 0: no step would run
])
def test_img2img_422_names_the_a1111_field(api, body, field):
    r = sdapi(api, "POST", "img2img", json=body)
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["error"]["fields"]] == [field] and SECRET not in r.text


@pytest.mark.parametrize("body, field", [
    (inpaint_body(inpainting_fill=4), "inpainting_fill"),
    (inpaint_body(mask="not an image " + SECRET), "mask"),
    (inpaint_body(mask=png_data_url(64, 32)), "mask"),  # another aspect ratio
    (inpaint_body(mask=png_data_url(64, 64, (0, 0, 0))), "mask"),  # all black: nothing to repaint
    (inpaint_body(mask_blur=65), "mask_blur"),
    (inpaint_body(inpaint_full_res_padding=-1), "inpaint_full_res_padding"),
    (inpaint_body(override_settings={"sd_model_checkpoint": "tiny-turbo"}), CHECKPOINT_FIELD),
])
def test_img2img_inpainting_422_names_the_a1111_field(api, body, field):
    r = sdapi(api, "POST", "img2img", json=body)
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["error"]["fields"]] == [field] and SECRET not in r.text


@pytest.mark.parametrize("body, field", [
    ({"hr_upscaler": "R-ESRGAN 4x+ " + SECRET}, "hr_upscaler"),
    ({"hr_scale": 5}, "hr_scale"),
    ({"hr_scale": "big"}, "hr_scale"),
    ({"hr_resize_x": 4096}, "hr_resize_x"),  # a scale of 16
    ({"hr_scale": 4, "width": 1024, "height": 1024}, "hr_scale"),  # 4096² is past the pixel limit
    ({"denoising_strength": 0}, "denoising_strength"),
    ({"hr_second_pass_steps": 500}, "hr_second_pass_steps"),
])
def test_txt2img_hires_422_names_the_a1111_field(api, body, field):
    r = sdapi(api, "POST", "txt2img", json={"prompt": "x", "width": 256, "height": 256, "enable_hr": True, **body})
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["error"]["fields"]] == [field] and SECRET not in r.text


@pytest.mark.parametrize("body, field", [
    ({"upscaler_1": "R-ESRGAN 4x+ " + SECRET}, "upscaler_1"),
    ({"upscaler_1": "Latent"}, "upscaler_1"),  # latent modes are the hires fix's
    ({"upscaler_1": "Lanczos", "upscaling_resize": 5}, "upscaling_resize"),
    ({"upscaler_1": "Lanczos", "image": "not an image " + SECRET}, "image"),
    ({"upscaler_1": "Lanczos", "image": None}, "image"),
    ({"upscaler_1": "Lanczos", "resize_mode": 2}, "resize_mode"),
])
def test_extras_422_names_the_a1111_field(api, body, field):
    r = sdapi(api, "POST", "extra-single-image", json={"image": png_data_url(64, 64), **body})
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["error"]["fields"]] == [field] and SECRET not in r.text


def test_extras_with_no_upscaler_answer_the_image_as_it_is(api):
    """upscaler_1 "None" (A1111's and webuiapi's default) runs no job: the image comes back, as a PNG."""
    r = sdapi(api, "POST", "extra-single-image", json={"image": png_data_url(40, 30, fmt="JPEG"),
                                                       "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"html_info", "image"} and "Postprocess upscaler: None" in data["html_info"]
    image = Image.open(io.BytesIO(base64.b64decode(data["image"])))
    assert (image.format, image.size) == ("PNG", (40, 30))


def test_lists_clients_read(api):
    models = sdapi(api, "GET", "sd-models").json()
    assert [m["model_name"] for m in models] == ["tiny-sdxl", "tiny-turbo", "tiny-sd", "tiny-pai", "tiny-sd3",
                                                 "tiny-flux", "tiny-flux-schnell"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert [s["name"] for s in sdapi(api, "GET", "samplers").json()] == ["DPM++ 2M", "Euler a", "Euler", "Heun",
                                                                          "DDIM", "UniPC"]
    assert [s["label"] for s in sdapi(api, "GET", "schedulers").json()] == ["Automatic", "Uniform", "Karras",
                                                                             "Simple"]  # SD 3.5 and FLUX.1's
    assert [x["name"] for x in sdapi(api, "GET", "loras").json()] == ["tiny-style", "tiny-sketch", "tiny-sd3-style",
                                                                       "tiny-flux-style"]
    assert all(x["alias"] == x["name"] for x in sdapi(api, "GET", "loras").json())
    listed = sdapi(api, "GET", "upscalers").json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "tiny-esrgan"]
    assert set(listed[2]) == {"name", "model_name", "model_path", "model_url", "scale"} and listed[2]["scale"] == 2
    assert sdapi(api, "GET", "latent-upscale-modes").json() == [{"name": "Latent"}]
    assert sdapi(api, "GET", "sd-vae").json() == []
    assert sdapi(api, "GET", "scripts").json() == {"txt2img": [], "img2img": []}
    idle = sdapi(api, "GET", "progress").json()
    assert (idle["progress"], idle["state"]["job_count"], idle["current_image"]) == (0.0, 0, None)
    assert sdapi(api, "POST", "interrupt").json() == {}


def test_options_remember_one_checkpoint_when_keys_are_off(api, app_settings):
    from service.jobs import keys
    from service.redis import sync_client

    try:
        for name in ("tiny-sdxl.safetensors", checkpoint(CATALOG, "tiny-sdxl").title):
            assert sdapi(api, "POST", "options", json={"sd_model_checkpoint": name, "sd_vae": "x"}).json() is None
            assert sdapi(api, "GET", "options").json()["sd_model_checkpoint"] == checkpoint(CATALOG, "tiny-sdxl").title
        r = sdapi(api, "POST", "options", json={"sd_model_checkpoint": SECRET})
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "sd_model_checkpoint"
        assert SECRET not in r.text
        assert sdapi(api, "POST", "options", json=["x"]).status_code == 422
        assert sdapi(api, "POST", "options", content=b"{not json").status_code == 400
    finally:  # the shared slot lives in the session's Redis: leave it as it was
        sync_client(app_settings.redis_url).delete(keys.a1111_options(None))


ALICE, BOB = "alice-a1111-key", "bob-a1111-key"


@pytest.fixture
def keyed(app_settings):
    settings = app_settings.model_copy(update={"api_keys": {"alice": digest(ALICE), "bob": digest(BOB)},
                                               "rate_limit_per_minute": 0})
    with TestClient(create_app(settings)) as c:
        yield c


def basic(credentials: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_basic_auth_on_sdapi_only(keyed):
    for headers in ({}, basic(f"alice:{BOB}x"), basic("alice"), {"Authorization": "Basic !!"}):
        r = keyed.get("/sdapi/v1/sd-models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="fresco"', headers
        assert r.json()["error"]["code"] == "unauthorized" and r.json()["detail"]
    assert "Basic" in keyed.get("/sdapi/v1/options").json()["detail"]  # how to send the key
    for headers in (basic(f"anyone:{ALICE}"), basic(f":{ALICE}"), basic(ALICE), {"Authorization": f"Bearer {ALICE}"}):
        assert keyed.get("/sdapi/v1/sd-models", headers=headers).status_code == 200, headers
    r = keyed.post("/generate", json={"task": "turbo", "prompt": "x"}, headers=basic(f"u:{ALICE}"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")  # native routes: Bearer


def test_each_key_has_its_own_options(keyed):
    alice, bob = basic(f"u:{ALICE}"), {"Authorization": f"Bearer {BOB}"}
    assert keyed.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-turbo"}, headers=alice).is_success
    assert keyed.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-pai"}, headers=bob).is_success
    assert keyed.get("/sdapi/v1/options", headers=alice).json()["sd_model_checkpoint"].startswith("tiny-turbo [")
    assert keyed.get("/sdapi/v1/options", headers=bob).json()["sd_model_checkpoint"].startswith("tiny-pai [")


def test_redis_unreachable_is_503_with_detail(app_settings):
    """Errors the app's own handlers answer (Redis gone) keep A1111's `detail` too."""
    settings = app_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(settings)) as c:
        for method, path, body in (("GET", "/sdapi/v1/progress", None), ("POST", "/sdapi/v1/txt2img", {"prompt": "x"}),
                                   ("GET", "/sdapi/v1/options", None)):
            r = c.request(method, path, json=body)
            assert r.status_code == 503 and r.headers["retry-after"], (path, r.text)
            assert r.json()["detail"] == r.json()["error"]["message"]
