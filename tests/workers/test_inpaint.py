"""inpaint on the worker, with the tiny models: the result is composited over the input, so every pixel the
blurred mask leaves black is the input's exactly and the masked area is repainted; RGBA masks read from
their alpha through the job runner (the mask keeps its mode from storage), `invert_mask`, outpainting
with `expand`, "only masked" (`mask_padding`) working on a crop at the model's native area, every `fill`,
the 9-channel inpainting checkpoint, SDXL, and a ControlNet."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from service.catalog import tiny_catalog
from tests.workers.harness import job, make_runner, pop_and_run, submit
from workers.batching import Member
from workers.pipelines.inpaint import Inpaint, context
from workers.progress import Progress

BLUR = 4
MARGIN = 3 * BLUR + 2  # beyond this distance from the mask, the blurred mask is 0


def picture(size=(96, 64)) -> Image.Image:
    return Image.effect_mandelbrot(size, (-2, -1.2, 1, 1.2), 60).convert("RGB")


def rect_mask(size=(96, 64), box=(32, 16, 64, 48)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def outside(shape, box, margin=MARGIN) -> np.ndarray:
    """Where the blurred mask of the rectangle `box` is 0: farther than `margin` from it."""
    keep = np.ones(shape[:2], bool)
    left, top, right, bottom = box
    keep[max(0, top - margin):bottom + margin, max(0, left - margin):right + margin] = False
    return keep


TRANSFORMERS = ["tiny-sd3", "tiny-flux"]  # SD 3 and FLUX: their own inpainting pipelines, sides of 16


def params(seed=3, model="tiny-sd", **extra):
    """An inpainting job's params as the API resolves them for `model` (its scheduler and T5 tokens)."""
    spec = tiny_catalog().spec(model)
    sequence = {k: v for k, v in spec.defaults().items() if k == "max_sequence_length"}
    return {"prompt": "a cat on a sofa", "negative_prompt": "", "seed": seed, "num_images": 1, "steps": 2,
            "strength": 1.0, "guidance_scale": 7.5, "scheduler": spec.kind_row.scheduler, "mask_blur": BLUR,
            "mask_padding": None, "invert_mask": False, "fill": "original", "expand": None, "loras": [], "control": [],
            "output_format": "png", **sequence, **extra}


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    return make_runner(module_server.url, tmp_path_factory.mktemp("inpaint-data"), "inpaint-test-worker",
                       tiny_catalog(), worker_tasks=["inpaint"],
                       worker_models=["tiny-sd", "tiny-sd-inpaint", "tiny-sdxl", *TRANSFORMERS])


def run(pipeline, p, image, mask=None, controls=(), report=None):
    """`p` run as a worker runs a job: its input images decoded into it."""
    pixels = {f"control[{i}].image": c for i, c in enumerate(controls)}
    p = {**p, "image": {"name": "image.png", "width": image.width, "height": image.height}}
    pixels["image"] = image
    if mask is not None:
        p["mask"] = {"name": "mask.png", "width": mask.width, "height": mask.height}
        pixels["mask"] = mask
    member = Member("x", p, 0, 0, pixels=pixels)
    with torch.inference_mode():
        out = pipeline.run_batch([member.run_params()], Progress(report or (lambda s: False), pipeline.plan(p)))
    return [np.asarray(img, dtype=np.int16) for img in out[0].images]


def repainted(out: np.ndarray, src: np.ndarray, box) -> bool:
    left, top, right, bottom = box
    return bool(np.abs(out[top:bottom, left:right] - src[top:bottom, left:right]).mean() > 5)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sd-inpaint", "tiny-sdxl", *TRANSFORMERS])
def test_outside_the_blurred_mask_the_input_comes_back_exactly(runner, model):
    """4-channel (SD, SDXL: the latents blended per step) and 9-channel models alike, and the transformer
    families' inpainting pipelines; the inpainting pipeline is `from_pipe` on the model's modules, built once."""
    pipeline = runner.runtime.pipeline("inpaint", model)
    loaded = runner.runtime.models[model]
    assert loaded.inpaint() is pipeline.pipe is loaded.inpaint()
    assert type(pipeline.pipe).__name__ == loaded.family.pipelines["inpaint"]
    for name in (loaded.family.denoiser, "vae", "text_encoder"):
        assert getattr(pipeline.pipe, name) is getattr(loaded.pipe, name)
    if loaded.family.denoiser == "unet":
        assert pipeline.pipe.unet.config.in_channels == (9 if model == "tiny-sd-inpaint" else 4)
    box = (32, 16, 64, 48)
    image = picture()
    src = np.asarray(image, dtype=np.int16)
    [out] = run(pipeline, params(model=model), image, rect_mask(box=box))
    assert out.shape == src.shape
    keep = outside(src.shape, box)
    assert (out[keep] == src[keep]).all()
    assert repainted(out, src, box)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_an_rgba_mask_is_read_from_its_alpha_through_the_job_runner(runner, module_redis):
    """The job runner reads every input image back in RGB, but a mask in its own mode: an RGBA mask's
    alpha says what to repaint (transparent = repaint), whatever its colours say."""
    box = (24, 16, 56, 48)
    image = picture()
    mask = Image.new("RGBA", image.size, (0, 0, 0, 255))  # black: luminance alone would keep everything
    mask.paste((0, 0, 0, 0), box)
    job_id = submit(module_redis, "inpaint", "tiny-sd", {
        **params(), "width": 96, "height": 64, "image": {"name": "image.png", "width": 96, "height": 64},
        "mask": {"name": "mask.png", "width": 96, "height": 64}})
    runner.storage.put(job_id, "image.png", _png(image))
    runner.storage.put(job_id, "mask.png", _png(mask))
    assert pop_and_run(runner, module_redis, "inpaint", "tiny-sd")["status"] == "succeeded", job(module_redis, job_id)
    out = np.asarray(Image.open(io.BytesIO(runner.storage.get(job_id, "0.png"))).convert("RGB"), dtype=np.int16)
    src = np.asarray(image, dtype=np.int16)
    keep = outside(src.shape, box)
    assert (out[keep] == src[keep]).all()
    assert repainted(out, src, box)


def test_invert_mask_repaints_the_black(runner):
    pipeline = runner.runtime.pipeline("inpaint", "tiny-sd")
    image, mask = picture(), rect_mask()
    [plain] = run(pipeline, params(), image, mask)
    [inverted] = run(pipeline, params(invert_mask=True), image, ImageOps.invert(mask))
    assert (plain == inverted).all()


def test_expand_grows_the_canvas_and_keeps_the_original(runner):
    """Outpainting without a mask: only the new area is repainted (the blur feathers into the image)."""
    pipeline = runner.runtime.pipeline("inpaint", "tiny-sd")
    image = picture()
    src = np.asarray(image, dtype=np.int16)
    expand = {"left": 16, "right": 8, "top": 0, "bottom": 24}
    for fill in ("original", "fill"):
        [out] = run(pipeline, params(expand=expand, fill=fill), image)
        assert out.shape == (64 + 24, 96 + 16 + 8, 3)
        region = out[:64, 16:16 + 96]
        inner = (slice(MARGIN, 64 - MARGIN), slice(MARGIN, 96 - MARGIN))
        assert (region[inner] == src[inner]).all()
        assert out[64:, :].mean() > 5  # the new area is painted, not left black
    # a mask inside the image and expand together: both are repainted, the rest is kept
    box = (40, 8, 56, 24)
    [out] = run(pipeline, params(expand=expand), image, rect_mask(box=box))
    region = out[:64, 16:16 + 96]
    keep = outside(src.shape, box)
    keep[:, :MARGIN] = keep[:, -MARGIN:] = keep[-MARGIN:, :] = False  # the blur feathers from the new area
    assert (region[keep] == src[keep]).all()
    assert repainted(region, src, box)


def test_mask_padding_works_on_the_masks_surroundings_at_the_native_area(runner):
    """A small mask in a larger image, `mask_padding` 8: the pipeline works on the mask's box plus 8 px,
    widened to the image's 2:1, at the model's native area (here 128² for the test: 184×88), not on
    the whole 256×128 canvas; everything outside the blurred mask is the input's."""
    loaded = runner.runtime.models["tiny-sd"]
    small = dataclasses.replace(loaded, spec=loaded.spec.model_copy(update={"size": (128, 128)}))
    pipeline = Inpaint(small)
    assert pipeline.pipe is loaded.inpaint()
    image = picture((256, 128))
    src = np.asarray(image, dtype=np.int16)
    box = (180, 70, 196, 86)
    shapes = []  # the latents' (height, width) at each step

    def report(state):
        if progress.latents is not None:
            shapes.append(tuple(progress.latents.shape[-2:]))
        return False

    p = params(mask_padding=8, mask_blur=2)
    progress = Progress(report, pipeline.plan(p))
    member = Member("x", {**p, "image": {"name": "image.png", "width": 256, "height": 128},
                          "mask": {"name": "mask.png", "width": 256, "height": 128}}, 0, 0,
                    pixels={"image": image, "mask": rect_mask((256, 128), box)})
    with torch.inference_mode():
        out = np.asarray(pipeline.run_batch([member.run_params()], progress)[0].images[0], dtype=np.int16)
    assert shapes and set(shapes) == {(88 // 8, 184 // 8)}, shapes
    keep = outside(src.shape, box, margin=8)
    assert (out[keep] == src[keep]).all()
    assert repainted(out, src, box)
    # the context itself: the box (blur included) plus the padding, widened to 2:1, clamped to the canvas
    alpha = np.zeros((128, 256), np.uint8)
    alpha[70:86, 180:196] = 255
    assert context(alpha, 8, (128, 128)) == ((156, 62, 220, 94), (184, 88))
    alpha[:, :] = 0
    alpha[0:4, 250:256] = 255
    assert context(alpha, 4, (128, 128)) == ((240, 0, 256, 8), (184, 88))
    assert context(alpha, None, (128, 128)) == ((0, 0, 256, 128), (256, 128))


def test_every_fill_runs_and_starts_the_masked_area_differently(runner):
    """At strength 0.5 the start shows: each fill gives its own image, the outside always the input's."""
    pipeline = runner.runtime.pipeline("inpaint", "tiny-sd")
    box = (32, 16, 64, 48)
    image = picture()
    src = np.asarray(image, dtype=np.int16)
    keep = outside(src.shape, box)
    outs = {}
    for fill in ("original", "fill", "noise", "nothing"):
        [out] = run(pipeline, params(fill=fill, strength=0.5, steps=4), image, rect_mask(box=box))
        assert (out[keep] == src[keep]).all(), fill
        outs[fill] = out
    fills = list(outs)
    for i, a in enumerate(fills):
        for b in fills[i + 1:]:
            assert (outs[a] != outs[b]).any(), (a, b)


def test_a_controlnet_steers_the_repainted_area(runner):
    """tiny-sd-canny on the SD model: the ControlNet inpainting pipeline on the same modules, a different
    repainted area than without control (and with two images, each composited), the outside kept."""
    pipeline = runner.runtime.pipeline("inpaint", "tiny-sd")
    loaded = runner.runtime.models["tiny-sd"]
    control_pipe = loaded.controls.pipeline("inpaint", ("tiny-sd-canny",))
    assert type(control_pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert control_pipe.unet is loaded.pipe.unet
    box = (32, 16, 64, 48)
    image = picture()
    src = np.asarray(image, dtype=np.int16)
    control = [{"model": "tiny-sd-canny", "kind": "canny", "scale": 1.0, "start": 0.0, "end": 1.0,
                "preprocess": "canny", "image": {"name": "control-0.png", "width": 96, "height": 64}}]
    [plain] = run(pipeline, params(), image, rect_mask(box=box))
    steered = run(pipeline, params(control=control, num_images=2), image, rect_mask(box=box),
                  controls=[picture((48, 32)).rotate(90, expand=True).resize((96, 64))])
    keep = outside(src.shape, box)
    assert len(steered) == 2
    for out in steered:
        assert (out[keep] == src[keep]).all()
    assert (steered[0] != plain).any()
    assert (steered[0] != steered[1]).any()
    # the inpainting checkpoint (9 channels into the UNet, 4 into the ControlNet) and SDXL, at "only masked"
    for model, net in (("tiny-sd-inpaint", "tiny-sd-canny"), ("tiny-sdxl", "tiny-canny")):
        assert type(runner.runtime.models[model].controls.pipeline("inpaint", (net,))).__name__ == \
            ("StableDiffusionXLControlNetInpaintPipeline" if model == "tiny-sdxl"
             else "StableDiffusionControlNetInpaintPipeline")
        [out] = run(runner.runtime.pipeline("inpaint", model),
                    params(control=[{**control[0], "model": net}], mask_padding=4), image, rect_mask(box=box),
                    controls=[image])
        assert (out[keep] == src[keep]).all(), model
        assert repainted(out, src, box), model


def test_warm_up_runs_an_inpainting_job(runner):
    pipeline = runner.runtime.pipeline("inpaint", "tiny-sd-inpaint")
    p = pipeline.warmup_params(64, 64)
    with torch.inference_mode():
        [out] = pipeline.run_batch([p], Progress(lambda s: False, pipeline.plan(p)))
    assert out.images[0].size == (64, 64)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-flux"])
def test_sides_that_are_not_multiples_of_8_are_worked_at_multiples_and_come_back_at_their_size(runner, model):
    """Multiples of the family table's `size_multiple`: 8, or 16 for SD 3 and FLUX (their VAE's 8 × 2×2 patches)."""
    pipeline = runner.runtime.pipeline("inpaint", model)
    image = picture((100, 70))
    src = np.asarray(image, dtype=np.int16)
    box = (40, 20, 70, 50)
    sizes = []
    handle = pipeline.pipe.vae.encoder.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[-2:]))
    try:  # resized to the image
        [out] = run(pipeline, params(model=model), image, rect_mask((200, 140), tuple(2 * v for v in box)))
    finally:
        handle.remove()
    assert sizes and all(tuple(s) == ((72, 96) if model == "tiny-sd" else (64, 96)) for s in sizes)
    assert out.shape == (70, 100, 3)
    keep = outside(src.shape, box)
    assert (out[keep] == src[keep]).all()
    assert repainted(out, src, box)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl", "tiny-sd-inpaint"])
def test_the_vae_encodes_the_masked_image_only_for_a_unet_that_reads_it(runner, model):
    """One VAE encode a job at strength 1: a 4-channel UNet's is the image's (for the per-step blend), as
    img2img's, not also the masked image's, which it never reads (bench/edit.py: inpaint / img2img 1.2x ->
    1.07x); a 9-channel UNet's is the masked image's, which it reads (it starts from pure noise)."""
    pipeline = runner.runtime.pipeline("inpaint", model)
    calls = []
    handle = pipeline.pipe.vae.encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        [out] = run(pipeline, params(), picture(), rect_mask())
    finally:
        handle.remove()
    assert len(calls) == 1 and out.shape == (64, 96, 3)
