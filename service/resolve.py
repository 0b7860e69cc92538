"""From a validated request to the job's full parameters: the rules that need the catalogue and settings.

Every resolved parameter, the seed included, is reported back in the JobView's `params`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from service.catalog import Catalog
from service.errors import ValidationFailed, field_error
from service.image_fetch import fetch_image_url
from service.images import DecodedImage, ImageRejected, check_image_bytes, decode_image, is_url
from service.schemas import Img2ImgRequest, SDXLRequest, SVDRequest, TurboRequest
from service.settings import Settings


@dataclass
class Resolved:
    task: str
    model: str
    params: dict[str, Any]
    image: DecodedImage | None = None
    retries: int = 0


async def _image(ref: str, settings: Settings) -> DecodedImage:
    if not is_url(ref):
        return decode_image(ref, max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
    if not settings.allow_image_urls:
        raise ImageRejected("image URLs are disabled on this server; send a data URL or base64")
    data = await fetch_image_url(ref, schemes=settings.image_url_schemes,
                                 allowed_networks=settings.image_url_allow_networks,
                                 max_bytes=settings.max_image_bytes, timeout_s=settings.image_url_timeout_s)
    return check_image_bytes(data, max_pixels=settings.max_pixels)


async def resolve(req, catalog: Catalog, settings: Settings) -> Resolved:
    errors: list[dict] = []
    task = req.task
    model = req.model or catalog.default_for(task)
    names = catalog.models_for(task)
    if model is None or model not in names:
        raise ValidationFailed([field_error("model", f"must be one of {names} for task {task}")])
    spec = catalog.spec(model)
    params = req.model_dump(exclude={"task", "model", "image", "retries"})
    params["seed"] = req.seed if req.seed is not None else secrets.randbelow(2**32)

    def pixels(width: int, height: int):
        if width * height > settings.max_pixels:
            errors.append(field_error("width", f"width × height must be at most {settings.max_pixels} pixels"))

    image = None
    if isinstance(req, (Img2ImgRequest, SVDRequest)):
        try:
            image = await _image(req.image, settings)
        except ImageRejected as exc:
            errors.append(field_error("image", str(exc)))

    if isinstance(req, SDXLRequest):
        pixels(req.width, req.height)
        if req.refiner and not spec.refiner:
            errors.append(field_error("refiner", f"model {model} has no refiner"))
        params["refiner"] = bool(spec.refiner) if req.refiner is None else req.refiner
    elif isinstance(req, TurboRequest):
        pixels(req.width, req.height)
        params["guidance_scale"] = 0.0
    elif isinstance(req, Img2ImgRequest):
        if int(req.steps * req.strength) < 1:
            errors.append(field_error("strength", "steps × strength must be at least 1 (no denoising step would run)"))
        if spec.kind == "turbo":
            if req.scheduler is not None:
                errors.append(field_error("scheduler", "turbo models use their own scheduler"))
            params["scheduler"] = "turbo"
            params["guidance_scale"] = 0.0  # Turbo runs without classifier-free guidance
        else:
            params["scheduler"] = req.scheduler or "euler"
        if image is not None:
            width = req.width or image.width // 8 * 8
            height = req.height or image.height // 8 * 8
            if width < 64 or height < 64:
                errors.append(field_error("image", "must be at least 64 pixels on each side, or give width and height"))
            pixels(width, height)
            params["width"], params["height"] = width, height
    elif isinstance(req, SVDRequest):
        pixels(req.width, req.height)
        if req.min_guidance_scale > req.max_guidance_scale:
            errors.append(field_error("min_guidance_scale", "must not exceed max_guidance_scale"))
        max_frames = spec.num_frames or 14
        if req.num_frames is not None and req.num_frames > max_frames:
            errors.append(field_error("num_frames", f"must be at most {max_frames} for model {model}"))
        params["num_frames"] = req.num_frames or max_frames

    if errors:
        raise ValidationFailed(errors)
    if image is not None:
        params["image"] = {"name": image.filename, "width": image.width, "height": image.height}
    return Resolved(task=task, model=model, params=params, image=image, retries=req.retries)
