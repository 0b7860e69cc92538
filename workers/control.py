"""ControlNets: loaded once at worker start, shared by every model of their family, and the control
pipelines built on a resident model with `from_pipe` (its UNet, VAE and text encoders are the same
objects: no second copy of the base's weights; LoRAs active in the base are active in them).

A request's `control` entries (service/api/rules.py) name the ControlNets and their settings; the
worker reads each control image from storage, resizes it to the output size, and makes a canny edge
map with OpenCV where `preprocess` says so (`canny_map`). One ControlNet runs as itself, two as
diffusers' MultiControlNetModel; the pipeline for each combination is built on first use and kept.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.catalog import Catalog, ControlNetSpec
from service.tasks import TASKS
from workers import tiny
from workers.families import FAMILIES
from workers.models import pickle_hint, refuse_pickles

log = logging.getLogger("fresco.control")
CANNY_THRESHOLDS = (100, 200)  # OpenCV's hysteresis thresholds, AUTOMATIC1111's and diffusers' examples' defaults


def load_controlnet(spec: ControlNetSpec, family: str, device: torch.device, dtype: torch.dtype):
    """A ControlNet from its source (hub id or local directory), or the tiny profile's, built offline."""
    if spec.is_tiny:
        torch.manual_seed(zlib.crc32(spec.name.encode()))
        net = tiny.controlnet(FAMILIES[family].tiny_denoiser(), seed=zlib.crc32(spec.name.encode()) % 2**31)
    else:
        from diffusers import ControlNetModel

        owner = f"controlnet {spec.name}"
        refuse_pickles(owner, spec.trust_pickle, spec.source)
        kwargs: dict[str, Any] = {"use_safetensors": not spec.trust_pickle}
        if spec.variant:
            kwargs["variant"] = spec.variant
        try:
            net = ControlNetModel.from_pretrained(spec.source, dtype=dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise pickle_hint(exc, owner, spec.trust_pickle) from exc
    net.requires_grad_(False)
    return net.to(device=device, dtype=dtype).eval()


def canny_map(image: Image.Image, thresholds: tuple[int, int] = CANNY_THRESHOLDS) -> Image.Image:
    """OpenCV's Canny edges of `image`, white on black, as the RGB image canny ControlNets were trained on."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), *thresholds)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def control_image(image: Image.Image, preprocess: str, size: tuple[int, int]) -> Image.Image:
    """A request's control image at the output `size` (width, height), preprocessed as asked."""
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return canny_map(image) if preprocess == "canny" else image.convert("RGB")


def control_key(params: dict) -> tuple:
    """What must match for jobs to batch: the ControlNets and their settings (images may differ)."""
    return tuple((c["model"], c["scale"], c["start"], c["end"], c["preprocess"]) for c in params.get("control") or ())


class Controls:
    """The ControlNets that fit one resident model, and its control pipelines (built with `from_pipe`)."""

    def __init__(self, model, nets: dict[str, Any]):
        self.model, self.nets = model, nets
        self.pipes: dict[tuple[str, tuple[str, ...]], Any] = {}

    def pipeline(self, mode: str, names: tuple[str, ...]):
        """The control pipeline for `mode` (a task's: "txt2img", "img2img") with ControlNets `names`, built once."""
        key = (mode, names)
        if key not in self.pipes:
            nets = [self.nets[n] for n in names]
            self.pipes[key] = self.model.derive(f"control:{mode}", controlnet=nets[0] if len(nets) == 1 else nets)
            log.info("%s: built the %s control pipeline with %s", self.model.name, mode, ", ".join(names))
        return self.pipes[key]

    def prepare(self, modes: set[str]) -> None:
        """The single-ControlNet pipelines of `modes` (those of the tasks the worker serves the model for),
        at worker start; a job with two ControlNets builds its pair on first use."""
        for name in self.nets:
            for mode in sorted(modes):
                self.pipeline(mode, (name,))

    def arguments(self, items: list[dict], size: tuple[int, int], image_key: str = "image") -> dict:
        """The control arguments of a pipeline call for a batch (every job has the same ControlNets and
        settings: `control_key`). One job: its control image per ControlNet (the pipeline repeats it for
        each of its images); a batch: one per output image, in job order, as the prompts are."""
        first = items[0]["control"]
        if len(items) == 1:
            per_image = [[control_image(c["image"]["pixels"], c["preprocess"], size) for c in first]]
        else:
            per_image = [[control_image(c["image"]["pixels"], c["preprocess"], size) for c in p["control"]]
                         for p in items for _ in range(p["num_images"])]
        if len(first) == 1:  # one ControlNet: its images
            images = [row[0] for row in per_image]
            return {image_key: images[0] if len(images) == 1 else images,
                    "controlnet_conditioning_scale": first[0]["scale"],
                    "control_guidance_start": first[0]["start"], "control_guidance_end": first[0]["end"]}
        # MultiControlNetModel: one image per ControlNet, or per output image a list of them
        return {image_key: per_image[0] if len(per_image) == 1 else per_image,
                "controlnet_conditioning_scale": [c["scale"] for c in first],
                "control_guidance_start": [c["start"] for c in first],
                "control_guidance_end": [c["end"] for c in first]}


def load_controls(catalog: Catalog, models: dict, served: list[tuple[str, str]]) -> None:
    """Give each resident model (`models`: name -> LoadedModel) that the worker serves a control task for
    (`served`: its (task, model) pairs) the ControlNets that fit it; each ControlNet loads once per family,
    device and dtype, shared by the models of its family."""
    modes: dict[str, set[str]] = {}
    for task, name in served:
        if TASKS[task].control:
            modes.setdefault(name, set()).add(TASKS[task].mode)
    loaded: dict[tuple[str, str, torch.device, torch.dtype], Any] = {}
    for name, model in models.items():
        specs = catalog.controlnets_for(name) if name in modes else []
        if not specs:
            continue
        nets = {}
        for spec in specs:
            key = (spec.name, model.spec.family, model.device, model.dtype)
            if key not in loaded:
                # An offloaded model's ControlNet waits in CPU memory; its pipeline's hooks move it (`place`).
                device = model.device if model.spec.memory == "default" else torch.device("cpu")
                loaded[key] = load_controlnet(spec, model.spec.family, device, model.dtype)
                log.info("loaded controlnet %s (%s, %s) for %s", spec.name, spec.kind, spec.source, name)
            nets[spec.name] = loaded[key]
        model.controls = Controls(model, nets)
        model.controls.prepare(modes[name])
