"""The `/sdapi/v1` routes. Generation goes through `run_to_end` (the one submit path, then a wait);
everything else reads the catalogue or the key's state (`state.py`). Each route checks the API key, which
may come as HTTP Basic credentials here (`service/api/auth.py`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json

from fastapi import APIRouter, Depends, Query, Request
from PIL import Image

from service import adapter_registry
from service.api.compat.a1111 import answer, extras, progress, responses, state, upscalers
from service.api.compat.a1111.checkpoints import checkpoint, checkpoints, find
from service.api.compat.a1111.errors import A1111Error, A1111Route, CallTimedOut
from service.api.compat.a1111.prompt_loras import lora_listing
from service.api.compat.a1111.samplers import sampler_listing, schedule_listing
from service.api.compat.a1111.translate import model_for, plan
from service.api.compat.models import text_task
from service.api.compat.waiting import WaitTimedOut, result_files, run_to_end
from service.api.deps import Authorized, Context
from service.api.errors import FrescoError, ValidationFailed, field_error, json_response
from service.api.inputs import ImageRejected, read_image
from service.api.routes.generate import parse_json, read_body
from service.jobs import protocol
from service.jobs.states import JobStatus

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"], route_class=A1111Route,
                   responses=responses.ERRORS)


async def caller(request: Request) -> Authorized:
    """The context and the caller's API key, from a Bearer or a Basic Authorization header."""
    ctx = request.app.state.ctx
    return Authorized(ctx, ctx.auth.owner(request, basic=True))


Caller = Depends(caller)


async def _cancel_all(c: Context, job_ids: list[str], owner: str | None) -> None:
    for job_id in job_ids:
        with contextlib.suppress(FrescoError):
            await c.jobs.cancel(job_id, owner)


async def _run(c: Context, bodies: list[dict], names: dict, owner: str | None) -> tuple[list[dict], str]:
    """Submit the native bodies as the key's current run, wait for them: their records and the run's
    timestamp. An interrupt (POST /interrupt) cancels the run's jobs, and any the run submits after it.
    `names`: the request's own A1111 names of native fields, for its 422s."""
    run = await state.begin(c.redis, owner, len(bodies), c.settings.compat_wait_s)

    async def on_submit(job_id: str) -> None:
        if await state.add_job(c.redis, run, job_id):
            await _cancel_all(c, [job_id], owner)

    try:
        return await run_to_end(c, bodies, owner, on_submit), run.timestamp
    except WaitTimedOut as exc:
        raise CallTimedOut(str(exc)) from None
    except Exception as exc:  # a later job could not be submitted: the earlier ones have nobody to wait for them
        await _cancel_all(c, run.jobs, owner)
        if isinstance(exc, ValidationFailed):
            raise A1111Error(exc, rename=True, names=names) from None
        raise
    finally:
        await state.end(c.redis, run)


async def _generate(request: Request, who: Authorized, mode: str):
    c, owner = who.ctx, who.owner
    await c.auth.rate_limit(owner)
    body = parse_json(await read_body(request, c.settings.max_body_bytes))
    prompt = body.get("prompt") if isinstance(body, dict) else None
    # The key's trained LoRAs, read only when a `<lora:…>` tag may name one.
    owned = await adapter_registry.records(c.redis, owner) if isinstance(prompt, str) and "<" in prompt else {}
    p = plan(c.catalog, mode, body, await state.remembered_checkpoint(c.redis, owner), owned)
    records, timestamp = await _run(c, p.bodies, p.names, owner)
    answer.check_outcome(records)
    images = [await result_files(c, h) if h["status"] == JobStatus.SUCCEEDED else [] for h in records]
    return json_response(answer.build(p, c.catalog, records, images, timestamp, f"fresco {request.app.version}"))


@router.post("/txt2img", response_model=responses.ImageResponse, responses=responses.GENERATE_ERRORS,
             openapi_extra=responses.request_body(img2img=False))
async def txt2img(request: Request, who: Authorized = Caller):
    """Text to image; answers when the images are made (at most FRESCO_COMPAT_WAIT_S)."""
    return await _generate(request, who, "txt2img")


@router.post("/img2img", response_model=responses.ImageResponse, responses=responses.GENERATE_ERRORS,
             openapi_extra=responses.request_body(img2img=True))
async def img2img(request: Request, who: Authorized = Caller):
    """Image to image from `init_images[0]`; answers when the images are made."""
    return await _generate(request, who, "img2img")


# A client polling /progress for `current_image` watches the current job's live previews this long after
# each poll (A1111 clients poll every 0.5 to 1 s).
PREVIEW_WATCH_S = 5.0


@router.get("/progress", response_model=responses.ProgressResponse)
async def get_progress(who: Authorized = Caller, skip_current_image: bool = Query(False)):
    """The progress of this API key's current txt2img/img2img call (idle when it has none)."""
    c = who.ctx
    run = await state.current(c.redis, who.owner)
    if run is None:
        return json_response(progress.idle())
    records = [await c.jobs.read(job_id) for job_id in run.jobs]
    preview = None
    current = None if skip_current_image or not c.settings.previews else progress.current_job(run, records)
    if current is not None:  # a client that polls for `current_image` watches the job's live previews
        await protocol.watch(c.redis, current, PREVIEW_WATCH_S)
        preview = await protocol.latest_preview(c.redis, current)
    return json_response(progress.report(run, records, preview))


@router.post("/interrupt")
async def interrupt(who: Authorized = Caller) -> dict:
    """Stop this API key's current call: its queued jobs never run, a running one stops at its next step."""
    run = await state.interrupt(who.ctx.redis, who.owner)
    if run is not None:
        await _cancel_all(who.ctx, run.jobs, who.owner)
    return {}


@router.get("/options")
async def get_options(who: Authorized = Caller) -> dict:
    """The options A1111 clients read: chiefly `sd_model_checkpoint`, this API key's checkpoint."""
    c = who.ctx
    model, _ = model_for(c.catalog, "txt2img", None, await state.remembered_checkpoint(c.redis, who.owner))
    ckpt = checkpoint(c.catalog, model)
    return {"sd_model_checkpoint": ckpt.title, "sd_checkpoint_hash": ckpt.sha256, "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1, "samples_format": "png", "eta_noise_seed_delta": 0}


@router.post("/options", openapi_extra=responses.OPTIONS_BODY)
async def set_options(request: Request, who: Authorized = Caller) -> None:
    """Set `sd_model_checkpoint` for this API key (other options are accepted and ignored)."""
    c = who.ctx
    body = parse_json(await read_body(request, c.settings.max_body_bytes))
    if not isinstance(body, dict):
        raise ValidationFailed([field_error("body", "must be a JSON object")])
    wanted = body.get(state.CHECKPOINT)
    if wanted is not None:
        model = find(c.catalog, wanted)
        if model is None or text_task(c.catalog, model) is None:
            raise ValidationFailed([field_error(state.CHECKPOINT, "is no checkpoint of this server; "
                                                                  "GET /sdapi/v1/sd-models lists them")])
        await state.remember_checkpoint(c.redis, who.owner, model)
    return None


@router.get("/sd-models", response_model=list[responses.SDModelItem])
async def sd_models(who: Authorized = Caller):
    return [ckpt.listing() for ckpt in checkpoints(who.ctx.catalog)]


@router.get("/samplers", response_model=list[responses.SamplerItem])
async def samplers(who: Authorized = Caller):
    """The samplers that map onto a Fresco scheduler exactly (others run as the nearest, with a warning)."""
    return sampler_listing()


@router.get("/schedulers", response_model=list[responses.SchedulerItem])
async def schedulers(who: Authorized = Caller):
    return schedule_listing()


@router.get("/loras", response_model=list[responses.LoraItem])
async def loras(who: Authorized = Caller):
    """The LoRAs `<lora:name:weight>` in a prompt may name."""
    return lora_listing(who.ctx.catalog, await adapter_registry.records(who.ctx.redis, who.owner))


@router.post("/extra-single-image", response_model=responses.ExtrasResponse, responses=responses.GENERATE_ERRORS,
             openapi_extra=responses.EXTRAS_BODY)
async def extra_single_image(request: Request, who: Authorized = Caller):
    """Upscale one image with `upscaler_1` (A1111's Extras tab): a native `upscale` job; answers when done."""
    c, owner = who.ctx, who.owner
    await c.auth.rate_limit(owner)
    p = extras.plan(c.catalog, parse_json(await read_body(request, c.settings.max_body_bytes)))
    if p.body is None:  # upscaler "None": the image as it is, as a PNG
        return json_response({"html_info": extras.html_info(p, None), "image": await _as_png(c, p.image)})
    records, _ = await _run(c, [p.body], p.names, owner)
    answer.check_outcome(records)
    files = await result_files(c, records[0]) if records[0]["status"] == JobStatus.SUCCEEDED else []
    if not files:
        p.warnings.append("interrupted: no image was made")
    params = json.loads(records[0].get("params") or "{}")
    return json_response({"html_info": extras.html_info(p, params.get("scale")),
                          "image": base64.b64encode(files[0]).decode() if files else ""})


async def _as_png(c: Context, ref: str) -> str:
    """An input image, checked as any input is, as base64 PNG."""
    try:
        decoded = await read_image(ref, c.settings)
    except ImageRejected as exc:
        raise ValidationFailed([field_error("image", str(exc))]) from None
    if decoded.format == "png":
        return base64.b64encode(decoded.data).decode()

    def convert() -> bytes:
        out = io.BytesIO()
        with Image.open(io.BytesIO(decoded.data)) as img:
            img.save(out, "PNG")
        return out.getvalue()

    return base64.b64encode(await asyncio.to_thread(convert)).decode()


@router.get("/upscalers", response_model=list[responses.UpscalerItem])
async def list_upscalers(who: Authorized = Caller):
    """"None", then the upscalers of the models file and the built-in Lanczos (hr_upscaler, upscaler_1)."""
    return upscalers.listing(who.ctx.catalog)


@router.get("/latent-upscale-modes", response_model=list[responses.NamedItem])
async def latent_upscale_modes(who: Authorized = Caller):
    """The hires fix's latent upscaling: "Latent" (bilinear; A1111's other modes run as it)."""
    return upscalers.latent_modes()


@router.get("/sd-vae", response_model=list[responses.VaeItem])
async def sd_vae(who: Authorized = Caller):
    """None to choose: each model runs with its own VAE (or the models file's `vae`)."""
    return []


@router.get("/scripts", response_model=responses.ScriptsList)
async def scripts(who: Authorized = Caller):
    """No scripts (webuiapi asks, to learn which extensions exist)."""
    return {"txt2img": [], "img2img": []}
