"""ControlNets on the worker: control pipelines built with `from_pipe` on the resident model (the same
module objects), canny maps made with OpenCV at the output size, control that changes the image and a
scale of 0 that does not, and control jobs through the job runner: images from storage, batches of
jobs with the same settings give each job the image it gets alone."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from service.catalog import tiny_catalog
from tests.workers.harness import image, job, make_runner, pop_and_run, same_pixels, submit
from workers.batching import Member
from workers.control import canny_map, control_image, control_key
from workers.progress import Progress

MODEL = "tiny-sd"


def picture(size=(96, 64)) -> Image.Image:
    return Image.effect_mandelbrot(size, (-2, -1.2, 1, 1.2), 60).convert("RGB")


def entry(model="tiny-sd-canny", kind="canny", preprocess="canny", scale=1.0, start=0.0, end=1.0, name="control-0.png"):
    return {"model": model, "kind": kind, "scale": scale, "start": start, "end": end, "preprocess": preprocess,
            "image": {"name": name, "width": 96, "height": 64}}


def params(seed=5, control=(), **extra):
    return {"prompt": "a house", "negative_prompt": "", "seed": seed, "num_images": 1, "steps": 2, "width": 128,
            "height": 128, "guidance_scale": 7.5, "scheduler": "euler", "loras": [], "control": list(control),
            "output_format": "png", **extra}


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("control-data"), "control-test-worker",
                       tiny_catalog(), worker_tasks=["txt2img", "img2img", "sdxl"], worker_models=[MODEL, "tiny-sdxl"],
                       worker_batch_size=4)


def run(runner, task, model, p, image=None, controls=()):
    """`p` run as a worker runs a job: its input images (`image`, the control images) decoded into it."""
    pipeline = runner.runtime.pipeline(task, model)
    pixels = {f"control[{i}].image": c for i, c in enumerate(controls)}
    if image is not None:
        p = {**p, "image": {"name": "input.png", "width": image.width, "height": image.height}}
        pixels["image"] = image
    member = Member("x", p, 0, 0, pixels=pixels)
    with torch.inference_mode():
        out = pipeline.run_batch([member.run_params()], Progress(lambda s: False, pipeline.plan(p)))
    return np.asarray(out[0].images[0], dtype=np.int16)


def test_control_pipelines_share_the_models_modules(runner):
    model = runner.runtime.models[MODEL]
    assert set(model.controls.nets) == {"tiny-sd-canny", "tiny-sd-depth"}
    for mode in ("txt2img", "img2img"):
        pipe = model.controls.pipeline(mode, ("tiny-sd-canny",))
        assert type(pipe).__name__ == ("StableDiffusionControlNetPipeline" if mode == "txt2img"
                                       else "StableDiffusionControlNetImg2ImgPipeline")
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert getattr(pipe, name) is getattr(model.pipe, name), name
        assert pipe.controlnet is model.controls.nets["tiny-sd-canny"]
    pair = model.controls.pipeline("txt2img", ("tiny-sd-canny", "tiny-sd-depth"))
    nets = model.controls.nets
    assert list(pair.controlnet.nets) == [nets["tiny-sd-canny"], nets["tiny-sd-depth"]]
    sdxl = runner.runtime.models["tiny-sdxl"]
    assert set(sdxl.controls.nets) == {"tiny-canny"}
    assert sdxl.controls.pipeline("txt2img", ("tiny-canny",)).unet is sdxl.pipe.unet
    # ControlNets are loaded once per family: tiny-pai (not loaded here) would share tiny-sd's.
    assert "tiny-turbo" not in runner.runtime.models


def test_canny_map_is_opencvs_at_the_output_size():
    img = picture()
    edges = np.asarray(canny_map(img))
    assert edges.shape == (64, 96, 3) and set(np.unique(edges)) <= {0, 255} and edges.any()
    assert (edges[..., 0] == cv2.Canny(np.asarray(img), 100, 200)).all()
    resized = control_image(img, "canny", (128, 128))
    assert resized.size == (128, 128)
    assert control_image(img, "none", (96, 64)).tobytes() == img.tobytes()


def test_control_changes_the_image_and_scale_zero_does_not(runner):
    plain = run(runner, "txt2img", MODEL, params())
    controlled = run(runner, "txt2img", MODEL, params(control=[entry()]), controls=[picture()])
    assert np.abs(controlled - plain).max() > 10
    other = run(runner, "txt2img", MODEL, params(control=[entry()]), controls=[Image.new("RGB", (96, 64))])
    assert np.abs(controlled - other).max() > 10  # the control image itself steers the image
    zero = run(runner, "txt2img", MODEL, params(control=[entry(scale=0.0)]), controls=[picture()])
    assert np.abs(zero - plain).max() <= 1  # the ControlNet's residuals times 0: the model's own image
    later = run(runner, "txt2img", MODEL, params(control=[entry(start=0.5)]), controls=[picture()])
    assert not (later == controlled).all()
    two = run(runner, "txt2img", MODEL, params(control=[entry(), entry("tiny-sd-depth", "depth", "none", 0.5)]),
              controls=[picture(), picture()])
    assert not (two == controlled).all()
    init = picture((128, 128))
    i2i = params(control=[entry()], strength=0.6)
    assert not (run(runner, "img2img", MODEL, i2i, init, [picture()]) ==
                run(runner, "img2img", MODEL, {**i2i, "control": []}, init)).all()


def test_sdxl_control_applies_to_the_base_stage(runner):
    p = params(control=[entry("tiny-canny")], guidance_scale=5.0, refiner=True, refiner_switch=0.5, steps=4,
               width=256, height=256)
    with_control = run(runner, "sdxl", "tiny-sdxl", p, controls=[picture()])
    without = run(runner, "sdxl", "tiny-sdxl", {**p, "control": []})
    assert with_control.shape == (256, 256, 3) and not (with_control == without).all()


def test_batch_keys_include_the_control_settings(runner):
    pipeline = runner.runtime.pipeline("txt2img", MODEL)
    a = params(control=[entry()])
    assert pipeline.batch_key(a) == pipeline.batch_key(params(seed=9, control=[entry(name="control-0.jpg")]))
    for other in (params(), params(control=[entry(scale=0.5)]), params(control=[entry(end=0.9)]),
                  params(control=[entry(preprocess="none")]), params(control=[entry("tiny-sd-depth")])):
        assert pipeline.batch_key(other) != pipeline.batch_key(a)
    assert control_key(a) == (("tiny-sd-canny", 1.0, 0.0, 1.0, "canny"),)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_control_jobs_read_their_images_from_storage_and_batch(runner, module_redis):
    """Three control jobs with the same settings but their own control images run as one batch; each
    gets the image it gets alone."""
    images = [picture(), picture((64, 64)), Image.new("RGB", (80, 80), (200, 30, 30))]
    jobs = []
    for i, img in enumerate(images):
        job_id = submit(module_redis, "txt2img", MODEL, params(seed=20 + i, control=[entry()]))
        runner.storage.put(job_id, "control-0.png", _png(img))
        jobs.append(job_id)
    pop_and_run(runner, module_redis, "txt2img", MODEL)  # the first takes the other two along
    for i, job_id in enumerate(jobs):
        assert job(module_redis, job_id)["status"] == "succeeded"
        assert job(module_redis, job_id)["params"]["control"] == [entry()]
        alone = run(runner, "txt2img", MODEL, params(seed=20 + i, control=[entry()]), controls=[images[i]])
        assert same_pixels(image(runner.storage, job_id), alone)


def test_start_up_builds_only_the_control_pipelines_the_served_tasks_use(tmp_path):
    """A worker serving `sdxl` (and Turbo for `turbo`) builds the SDXL base's txt2img control pipeline
    only, and gives Turbo, which it serves for no control task, no ControlNet at all."""
    from service.settings import Settings
    from workers.runtime import Runtime

    runtime = Runtime(Settings(worker_tasks="sdxl,turbo", data_dir=tmp_path), tiny_catalog()).load()
    assert set(runtime.models) == {"tiny-sdxl", "tiny-turbo"}
    assert set(runtime.models["tiny-sdxl"].controls.pipes) == {("txt2img", ("tiny-canny",))}
    assert runtime.models["tiny-turbo"].controls is None
