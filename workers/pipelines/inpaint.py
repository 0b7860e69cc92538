"""inpaint: repaint the masked part of an image, or extend it (outpainting), on an SD or SDXL model's weights
(`from_pipe`: no second copy) or on a dedicated inpainting checkpoint (a 9-channel UNet).

1. The canvas: the image, grown by `expand` (the image at left/top); the mask (service/masks.py, the
   API's reading: white, or transparent, = repaint) resized to the image, the new area masked.
2. `fill` puts a start into the masked area: the original pixels, colours drawn in from the
   surroundings (OpenCV's Telea inpainting), seeded noise, or mid grey. The new area of `expand` has no
   original: "original" fills it as "fill" does.
3. The mask is blurred by `mask_blur` px; the new area stays fully masked (the blur feathers into the
   image, never into what has no original).
4. The context: the whole canvas (`mask_padding` null), or the mask's bounding box plus `mask_padding` px,
   widened to the canvas's aspect ratio and worked at the model's native area (AUTOMATIC1111's "only
   masked": a small mask gets the model's full resolution). What the pipeline sees is resized to sides
   that are multiples of 8 (16 for SD 3 and FLUX: the family table's `size_multiple`) and back.
5. `int(steps × strength)` denoising steps: a 4-channel UNet's latents are blended with the mask at every
   step by diffusers (which is spared encoding the masked image such a UNet never reads:
   `unread_masked_image`); a 9-channel UNet sees the mask and the masked image. With `control`, the model's
   ControlNet inpainting pipeline (workers/control.py); control images cover the output canvas.
6. Each image is composited over the canvas with the blurred mask as alpha, in uint8 arithmetic, so the
   pixels the blurred mask leaves at 0 are the input's, exactly: the VAE's round trip never touches them.
A job runs alone (its canvas, mask and context are its own).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from service.jobs.states import Stage
from service.masks import read_mask
from service.tasks import TASKS
from workers.models import make_scheduler
from workers.pipelines.base import (WARMUP_COMMON, Output, TaskPipeline, batch_generators, input_image, pixels,
                                    prompt_args, text_warnings, warmup_text)
from workers.pipelines.host_images import host_images

GREY = 127  # "nothing": the masked area starts mid grey
FILL_SIDE = 256  # "fill" draws colours in at most this side, then scales them up: smooth and fast at any size
FILL_RADIUS = 3  # Telea's neighbourhood, in pixels of that working copy
Box = tuple[int, int, int, int]  # left, top, right, bottom


def canvas_and_mask(image: Image.Image, mask: Image.Image | None, invert: bool,
                    expand: dict | None) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """The canvas (the image, grown by `expand`: black where it has no original), the mask as uint8 (h, w)
    (255 = repaint; the new area 255), and where the canvas has the original (bool (h, w))."""
    grow = expand or {}
    left, top = grow.get("left", 0), grow.get("top", 0)
    width = image.width + left + grow.get("right", 0)
    height = image.height + top + grow.get("bottom", 0)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (left, top))
    inner = np.zeros((image.height, image.width), np.uint8)
    if mask is not None:
        read = read_mask(mask, invert)
        if read.size != image.size:
            read = read.resize(image.size, Image.Resampling.BILINEAR)
        inner = np.asarray(read, dtype=np.uint8)
    full = np.full((height, width), 255, np.uint8)
    full[top:top + image.height, left:left + image.width] = inner
    known = np.zeros((height, width), bool)
    known[top:top + image.height, left:left + image.width] = True
    return canvas, full, known


def blurred(mask: np.ndarray, radius: int, known: np.ndarray) -> np.ndarray:
    """The mask blurred by a Gaussian of `radius` px, the area without an original kept at 255."""
    out = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(radius))) if radius else mask.copy()
    out = np.array(out, dtype=np.uint8)
    out[~known] = 255
    return out


def drawn_in(canvas: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`canvas` with the `hole` (bool) filled by colours drawn in from its surroundings: OpenCV's Telea
    inpainting on a copy at most FILL_SIDE px on a side, scaled back up."""
    import cv2

    height, width = hole.shape
    if hole.all():
        return np.full_like(canvas, GREY)
    scale = min(1.0, FILL_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)
    # a small pixel is a hole when any of its pixels is one: no colour of the hole leaks into the fill
    small_hole = cv2.resize(hole.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) > 0
    if small_hole.all():
        return np.full_like(canvas, GREY)
    filled = cv2.inpaint(small, small_hole.astype(np.uint8), FILL_RADIUS, cv2.INPAINT_TELEA)
    return cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)


def filled(canvas: Image.Image, mask: np.ndarray, known: np.ndarray, fill: str, seed: int) -> Image.Image:
    """The canvas with the masked area's start per `fill`, blended in by the mask's value (grey: partly)."""
    pixels_ = np.asarray(canvas, dtype=np.uint8)
    hole = (mask > 0) | ~known
    if fill == "original":
        if known.all():
            return canvas
        start = np.where(known[..., None], pixels_, drawn_in(pixels_, ~known))  # no original there: "fill"
        return Image.fromarray(start.astype(np.uint8))
    if fill == "fill":
        source = drawn_in(pixels_, hole)
    elif fill == "noise":
        source = np.random.default_rng(seed).integers(0, 256, pixels_.shape, dtype=np.uint8)
    else:  # "nothing"
        source = np.full_like(pixels_, GREY)
    return Image.fromarray(composite(pixels_, source, mask))


def composite(base: np.ndarray, over: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`over` on `base` with `alpha` (uint8 (h, w)), in integers: alpha 0 is `base` exactly, 255 `over`."""
    a = alpha.astype(np.uint32)[..., None]
    return ((over.astype(np.uint32) * a + base.astype(np.uint32) * (255 - a) + 127) // 255).astype(np.uint8)


def multiple_of(side: float, step: int = 8) -> int:
    return max(step, int(round(side / step)) * step)


def context(alpha: np.ndarray, padding: int | None, native: tuple[int, int],
            step: int = 8) -> tuple[Box, tuple[int, int]]:
    """The canvas box the pipeline works on and the size it works at, its sides multiples of `step` (the
    family table's `size_multiple`). `padding` None: the whole canvas. Else the bounding box of what `alpha`
    repaints plus `padding` px, widened to the canvas's aspect ratio, clamped to the canvas, at the
    model's `native` area."""
    height, width = alpha.shape
    if padding is None or not alpha.any():
        return (0, 0, width, height), (multiple_of(width, step), multiple_of(height, step))
    rows, cols = np.nonzero(alpha)
    left, right = max(0, cols.min() - padding), min(width, cols.max() + 1 + padding)
    top, bottom = max(0, rows.min() - padding), min(height, rows.max() + 1 + padding)
    # widen the short side to the canvas's aspect, around the box's centre, then clamp to the canvas
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < width / height:
        box_w = min(width, round(box_h * width / height))
    else:
        box_h = min(height, round(box_w * height / width))
    left = min(max(0, (left + right - box_w) // 2), width - box_w)
    top = min(max(0, (top + bottom - box_h) // 2), height - box_h)
    area = native[0] * native[1]
    work_w = (area * box_w / box_h) ** 0.5
    return (left, top, left + box_w, top + box_h), (multiple_of(work_w, step), multiple_of(area / work_w, step))


def unread_masked_image(pipe, size: tuple[int, int]) -> dict:
    """For a 4-channel UNet, `masked_image_latents` as zeros of the latents' shape: diffusers' inpainting
    pipelines (SD and SDXL) VAE-encode the masked image for every UNet, and only a 9-channel one reads it
    (a second VAE encode per job: inpaint / img2img 1.19-1.27x before, 1.07x after, tiny SD 256², 4 steps;
    BENCHMARKS.md §13). Given latents they skip the encode. Nothing else changes: the encode's sample was
    drawn after the job's start noise, so only an ancestral or SDE scheduler's later draws from the same
    generator shift. {} for a 9-channel UNet (or a pipeline without a UNet)."""
    unet = getattr(pipe, "unet", None)
    if unet is None or unet.config.in_channels != 4:
        return {}
    scale = pipe.vae_scale_factor
    return {"masked_image_latents": torch.zeros(1, pipe.vae.config.latent_channels, size[1] // scale,
                                                size[0] // scale)}


class Inpaint(TaskPipeline):
    task = "inpaint"

    def __init__(self, model):
        super().__init__(model)
        self.pipe = model.inpaint()  # built at load time, not on the first request

    def plan(self, p):
        return [(Stage.DENOISE, max(1, int(p["steps"] * p["strength"])))]

    def default_size(self):
        return self.model.spec.size

    def warmup_params(self, width, height):
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (width // 4, height // 4, width * 3 // 4, height * 3 // 4))
        return {**WARMUP_COMMON, "width": width, "height": height, "steps": 2, "strength": 1.0,
                **warmup_text(self.model), "mask_blur": 4, "mask_padding": None,
                "invert_mask": False, "fill": "original", "expand": None,
                "image": input_image(Image.new("RGB", (width, height), (127, 127, 127))),
                "mask": input_image(mask, "mask.png")}

    def run(self, p, progress):
        kind = self.model.spec.kind_row
        guided = self.model.spec.guidance
        # 1. the canvas, the mask, the start in the masked area, the blurred mask
        mask_entry = p.get("mask")
        canvas, mask, known = canvas_and_mask(pixels(p["image"]).convert("RGB"),
                                              pixels(mask_entry) if mask_entry else None,
                                              bool(p.get("invert_mask")), p.get("expand"))
        start = filled(canvas, mask, known, p.get("fill") or "original", p["seed"])
        alpha = blurred(mask, p.get("mask_blur") or 0, known)
        # 2. the context and the size it is worked at
        box, size = context(alpha, p.get("mask_padding"), tuple(self.model.spec.size),
                            self.model.spec.kind_row.size_multiple)
        box_size = (box[2] - box[0], box[3] - box[1])

        def worked(image: Image.Image, resample=Image.Resampling.LANCZOS) -> Image.Image:
            image = image.crop(box) if box_size != image.size else image
            return image if image.size == size else image.resize(size, resample)

        pipe = self.pipe
        if p.get("control"):
            pipe = self.model.controls.pipeline(TASKS[self.task].mode, tuple(c["model"] for c in p["control"]))
            cropped = {**p, "control": [{**c, "image": {**c["image"], "pixels": worked(
                pixels(c["image"]).convert("RGB").resize(canvas.size, Image.Resampling.LANCZOS))}}
                for c in p["control"]]}
            extra = self.model.controls.arguments([cropped], size, image_key="control_image")
        else:
            extra = unread_masked_image(pipe, size)
        pipe.scheduler = make_scheduler(kind.scheduler if kind.own_scheduler else p["scheduler"],
                                        self.model.scheduler_config)
        # 3. denoise (diffusers binarises the mask it is given), decode
        progress.begin(Stage.DENOISE)
        images = host_images(pipe(
            **prompt_args(self.model, [p]), image=worked(start),
            mask_image=worked(Image.fromarray(alpha), Image.Resampling.BILINEAR),
            width=size[0], height=size[1], **extra, strength=p["strength"], num_inference_steps=p["steps"],
            guidance_scale=p["guidance_scale"] if guided else 0.0, generator=batch_generators([p]),
            callback_on_step_end=progress.on_step_end, output_type="pt",
        ).images)
        # 4. each image back at its place, over the original canvas through the blurred mask
        base = np.asarray(canvas, dtype=np.uint8)
        left, top, right, bottom = box
        out = []
        for i in range(len(images)):
            made = Image.fromarray(images.array(i))
            if made.size != box_size:
                made = made.resize(box_size, Image.Resampling.LANCZOS)
            over = base.copy()
            over[top:bottom, left:right] = np.asarray(made, dtype=np.uint8)
            out.append(Image.fromarray(composite(base, over, alpha)))
        return Output(images=out, warnings=text_warnings(self.model, pipe, p))
