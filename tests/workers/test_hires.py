"""`hires` on the worker (workers/hires.py): txt2img and sdxl jobs made at width × height, upscaled (latents
bilinearly, or pixels with `lanczos` or an upscaler), refined by an img2img pass at the final size. The
output has the final size and is not the base image merely upscaled; a seed reproduces it, alone or batched;
the plan and the progress name the hires stage with int(steps × strength) steps, whose latents (what live
previews show) are the final size's; the SDXL task runs base, refiner, then hires; ControlNets steer only the
base stage; a job through the runner stores the final size and an infotext with A1111's hires entries."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.catalog import tiny_catalog
from service.jobs.states import Stage
from tests.workers.harness import image, job, make_runner, pop_and_run, same_pixels, submit
from tests.workers.test_recipe import parse_infotext
from workers.batching import Member
from workers.progress import Progress

SD, SDXL = "tiny-sd", "tiny-sdxl"
TRANSFORMERS = ["tiny-sd3", "tiny-flux"]  # flow matching; FLUX hands over packed latents (hires.unpacked)


def hires(**fields) -> dict:
    """`params["hires"]` as the API resolves it: 64² → 128² by default."""
    out = {"scale": 2.0, "upscaler": "latent", "strength": 0.5, "steps": 4, "width": 128, "height": 128}
    return {**out, **fields}


def params(seed=5, hires=None, model=SD, **extra) -> dict:
    """A job's params as the API resolves them for `model` (its scheduler, guidance and T5 tokens)."""
    defaults = tiny_catalog().spec(model).defaults()
    p = {"prompt": "a house", "negative_prompt": "", "seed": seed, "num_images": 1, "steps": 4, "width": 64,
         "height": 64, "guidance_scale": 7.5, "scheduler": tiny_catalog().spec(model).kind_row.scheduler,
         "loras": [], "control": [], "output_format": "png",
         **{k: defaults[k] for k in ("max_sequence_length",) if k in defaults}, **extra}
    if hires is not None:
        p["hires"] = hires
    return p


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("hires-data"), "hires-test-worker",
                       tiny_catalog(), worker_tasks=["txt2img", "sdxl"], worker_models=[SD, SDXL, *TRANSFORMERS],
                       worker_batch_size=4)


def run(runner, task, model, items, pixels=None, seen=None):
    """`items` run as one batch the way the worker runs jobs; each job's images as int16 arrays. `seen`:
    gets (stage, step, latents shape) for each reported step."""
    pipeline = runner.runtime.pipeline(task, model)
    progress = None

    def report(state):
        if seen is not None and progress.latents is not None:
            seen.append((state["stage"], state["step"], tuple(progress.latents.shape)))
        return False

    progress = Progress(report, pipeline.plan(items[0]))
    members = [Member("x", p, 0, 0, pixels=pixels or {}).run_params() for p in items]
    with torch.inference_mode():
        outputs = pipeline.run_batch(members, progress)
    return [[np.asarray(img, dtype=np.int16) for img in out.images] for out in outputs]


def upscaled(array: np.ndarray, size) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS), dtype=np.int16)


@pytest.mark.parametrize("model", [SD, *TRANSFORMERS])
def test_latent_hires_makes_the_final_size_and_refines_it(runner, model):
    [[base]] = run(runner, "txt2img", model, [params(model=model)])
    [[first, second]] = run(runner, "txt2img", model, [params(hires=hires(), num_images=2, model=model)])
    assert base.shape == (64, 64, 3) and first.shape == second.shape == (128, 128, 3)
    # not the base image upscaled: the img2img pass repainted it
    assert np.abs(first - upscaled(base, (128, 128))).mean() > 5
    assert np.abs(first - second).mean() > 5  # image 2 has its own seed
    [[again, _]] = run(runner, "txt2img", model, [params(hires=hires(), num_images=2, model=model)])
    assert np.array_equal(again, first)  # a seed reproduces its image
    [[alone]] = run(runner, "txt2img", model, [params(hires=hires(), model=model)])
    assert same_pixels(alone, first)  # up to a batch's float rounding


@pytest.mark.parametrize("upscaler", ["lanczos", "tiny-esrgan"])
def test_pixel_upscalers_upscale_the_decoded_image_then_refine_it(runner, upscaler):
    from workers.hires import upscaler_spec
    from workers.upscalers import upscaler_for

    # 72×64 × 1.5 = 108×96: the upscaled image is resized to the final size, 104×96 (multiples of 8)
    [[base]] = run(runner, "txt2img", SD, [params(width=72)])
    spec = upscaler_spec(runner.runtime.models[SD], upscaler)
    plain = upscaler_for(spec).upscale(Image.fromarray(base.astype(np.uint8)), 1.5)
    plain = np.asarray(plain.resize((104, 96), Image.Resampling.LANCZOS), dtype=np.int16)
    h = hires(upscaler=upscaler, scale=1.5, width=104, height=96)
    [[out]] = run(runner, "txt2img", SD, [params(width=72, hires=h)])
    assert out.shape == (96, 104, 3)
    assert np.abs(out - plain).mean() > 5
    [[again]] = run(runner, "txt2img", SD, [params(width=72, hires=h)])
    assert np.array_equal(again, out)


def test_the_plan_and_progress_have_the_hires_stage_at_the_final_size(runner):
    pipeline = runner.runtime.pipeline("txt2img", SD)
    assert pipeline.plan(params(steps=5, hires=hires(steps=5, strength=0.5))) == [(Stage.DENOISE, 5),
                                                                                  (Stage.HIRES, 2)]
    assert pipeline.plan(params(hires=hires(steps=10, strength=0.35))) == [(Stage.DENOISE, 4), (Stage.HIRES, 3)]
    assert pipeline.plan(params()) == [(Stage.DENOISE, 4)]
    seen = []
    run(runner, "txt2img", SD, [params(hires=hires(steps=6))], seen=seen)
    assert [(stage, step) for stage, step, _ in seen] == [(Stage.DENOISE, i) for i in range(1, 5)] + \
        [(Stage.HIRES, 1), (Stage.HIRES, 2), (Stage.DECODE, 0)]
    assert {shape for stage, _, shape in seen if stage == Stage.DENOISE} == {(1, 4, 8, 8)}
    assert {shape for stage, _, shape in seen if stage != Stage.DENOISE} == {(1, 4, 16, 16)}  # previews' latents


def test_the_sdxl_task_runs_base_refiner_then_hires(runner):
    p = params(guidance_scale=5.0, refiner=True, refiner_switch=0.75, hires=hires())
    pipeline = runner.runtime.pipeline("sdxl", SDXL)
    assert pipeline.plan(p) == [(Stage.BASE, 3), (Stage.REFINER, 1), (Stage.HIRES, 2)]
    seen = []
    [[out]] = run(runner, "sdxl", SDXL, [p], seen=seen)
    assert [stage for stage, _, _ in seen] == [Stage.BASE] * 3 + [Stage.REFINER, Stage.HIRES, Stage.DECODE]
    assert out.shape == (128, 128, 3)
    [[plain]] = run(runner, "sdxl", SDXL, [{k: v for k, v in p.items() if k != "hires"}])
    assert np.abs(out - upscaled(plain, (128, 128))).mean() > 5
    [[lanczos]] = run(runner, "sdxl", SDXL, [{**p, "hires": hires(upscaler="lanczos")}])
    assert lanczos.shape == (128, 128, 3) and np.abs(lanczos - out).mean() > 1


@pytest.mark.parametrize("model", [SD, *TRANSFORMERS])
def test_jobs_batch_only_with_the_same_hires_and_get_what_they_get_alone(runner, model):
    """FLUX's and SD 3's pipelines take a prompt per image too; jobs of other T5 token counts do not batch."""
    pipeline = runner.runtime.pipeline("txt2img", model)
    key = pipeline.batch_key
    assert key(params(hires=hires())) == key(params(seed=9, hires=hires()))
    assert len({key(params()), key(params(hires=hires())), key(params(hires=hires(strength=0.6))),
                key(params(hires=hires(upscaler="lanczos")))}) == 4
    assert key(params(hires=hires())) != runner.runtime.pipeline("sdxl", SDXL).batch_key(
        params(guidance_scale=7.5, refiner=False, refiner_switch=0.8))
    if model != SD:
        assert key(params(model=model)) != key(params(model=model, max_sequence_length=77))

    def job(**fields):
        return params(hires=hires(), model=model, **fields)

    alone = [run(runner, "txt2img", model, [job(seed=s, num_images=n)])[0] for s, n in ((3, 2), (8, 1))]
    batched = run(runner, "txt2img", model, [job(seed=3, num_images=2), job(seed=8, prompt="a tree")])
    assert batched[1][0].shape == (128, 128, 3)
    assert all(same_pixels(a, b) for a, b in zip(batched[0], alone[0]))
    assert not same_pixels(batched[1][0], alone[1][0])  # its own prompt


def test_control_steers_only_the_base_stage(runner):
    picture = Image.effect_mandelbrot((64, 64), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    control = [{"model": "tiny-sd-canny", "kind": "canny", "scale": 1.0, "start": 0.0, "end": 1.0,
                "preprocess": "canny", "image": {"name": "control-0.png", "width": 64, "height": 64}}]
    pixels = {"control[0].image": picture}
    [[controlled]] = run(runner, "txt2img", SD, [params(control=control, hires=hires())], pixels=pixels)
    [[free]] = run(runner, "txt2img", SD, [params(hires=hires())])
    assert controlled.shape == (128, 128, 3) and np.abs(controlled - free).mean() > 1


def test_a_hires_job_stores_the_final_size_and_says_so_in_its_infotext(runner, module_redis):
    job_id = submit(module_redis, "txt2img", SD, params(hires=hires(steps=6)))
    assert pop_and_run(runner, module_redis, "txt2img", SD)["status"] == "succeeded"
    [entry] = job(module_redis, job_id)["result"]["images"]
    assert (entry["width"], entry["height"]) == (128, 128)
    assert image(runner.storage, job_id).shape == (128, 128, 3)
    text = Image.open(io.BytesIO(runner.storage.get(job_id, "0.png"))).text["parameters"]
    _, _, entries = parse_infotext(text)
    assert {k: entries[k] for k in ("Size", "Steps", "Denoising strength", "Hires upscale", "Hires steps",
                                    "Hires upscaler")} == {"Size": "64x64", "Steps": "4", "Denoising strength": "0.5",
                                                           "Hires upscale": "2", "Hires steps": "6",
                                                           "Hires upscaler": "Latent"}
