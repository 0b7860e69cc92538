"""The API contract as types: per-task requests, JobView, ErrorBody.

Rules that need no outside knowledge live here; rules that need the catalogue or the settings
(model names, max pixels, the model's frame count, the input image) live in `service/api/rules.py`.
Each task's row in the task table names its request class here; `service/api/requests.py` makes
the strict union tagged by `task` of them. Input images are a type (`ImageRef`), found by
`image_fields` wherever a request has them.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from service.catalog import CONTROL_SCALE, LORA_SCALE, MAX_CONTROLS, PREPROCESSORS
from service.families import SCHEDULERS
from service.jobs.states import ErrorCode, JobStatus, Stage, WebhookEvent
from service.settings import Priority

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]
ImageFormat = Literal["png", "jpeg", "webp"]
VideoFormat = Literal["mp4", "webp", "gif"]


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("text_nul", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("text_surrogate", "must be valid Unicode (no unpaired surrogates)") from None
    return value


Prompt = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_clean_text)]
NegativePrompt = Annotated[str, Field(max_length=2000), AfterValidator(_clean_text)]


class ImageInput:
    """Marks a field as an input image (`ImageRef`). Whatever the field's name or depth (`image`,
    `control[0].image`), resolve decodes and checks it, submit stores it, the worker reads it back, the
    playground offers a drop zone for it: `image_fields` finds them all."""

    def __repr__(self) -> str:
        return "ImageInput()"


IMAGE_INPUT = ImageInput()
IMAGE_MAX_LENGTH = 64 * 1024 * 1024  # an ImageRef's most characters (the playground knows image fields by it)


def _any_case(text: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in text)


# The forms service/api/inputs.py accepts, as the OpenAPI schema states them (so that a schema-valid string is one
# the validator reads, all but its bytes: those must also decode as an image within the limits). Base64 as Python's
# b64decode(validate=True) takes it, whitespace anywhere (wrapped lines); a data URL of PNG, JPEG or WebP; an http(s)
# URL (inputs.is_url: its `://` within the first 16 characters). tests/service/api/test_allow_and_schema.py holds
# the validator to it.
_B64 = r"(?:[A-Za-z0-9+/]\s*)"
_BASE64 = (rf"\s*(?:{_B64}{{4}})*(?:{_B64}{{4}}(?:=\s*){{0,2}}|{_B64}{{3}}=\s*|{_B64}{{2}}(?:=\s*){{2}})$")
_DATA_URL = _any_case("data:image/") + "(?:" + "|".join(map(_any_case, ("png", "jpeg", "jpg", "webp"))) + ")"
IMAGE_PATTERN = ("^(?:" + r"\s{0,8}" + _any_case("http") + "[Ss]?" + r"://[^\s/?#]"
                 + "|" + _DATA_URL + _any_case(";base64,") + _BASE64 + "|" + _BASE64 + ")")
# An image: data URL, bare base64 or https URL. The byte limit is checked again after decoding.
ImageRef = Annotated[str, Field(min_length=1, max_length=IMAGE_MAX_LENGTH,
                                json_schema_extra={"pattern": IMAGE_PATTERN}), AfterValidator(_clean_text), IMAGE_INPUT]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Guidance = Annotated[float, Field(ge=0, le=20, allow_inf_nan=False)]
# Steps of txt2img, img2img and inpaint; absent: the model's (GET /models `defaults`: 30 for SD and SDXL,
# 28 for SD 3.5 large and FLUX.1 dev, 4 for FLUX.1 schnell...).
Steps = Annotated[int, Field(ge=1, le=100)]
# The T5 text encoder's prompt tokens (sd3 and flux models; absent: the model's, 256 or 512); a longer
# prompt is cut there, a shorter one padded: more costs time, not quality.
SequenceLength = Annotated[int, Field(ge=1, le=512)]


MAX_LORAS = 5


class LoraRef(BaseModel):
    """A LoRA for this job: `name` (an adapter `GET /models` lists for the model) or, when the server
    allows URL adapters, `url` (an https URL of a .safetensors file); `scale` (the adapter's default)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    url: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_clean_text)] | None = None
    scale: float | None = Field(None, ge=LORA_SCALE[0], le=LORA_SCALE[1], allow_inf_nan=False)


Loras = Annotated[list[LoraRef], Field(max_length=MAX_LORAS)]


class ControlRef(BaseModel):
    """A ControlNet for this job: `model` (one `GET /models` lists for the job's model), its control
    `image` (the forms and limits of `image`), `scale`, the fraction of the steps it acts in (`start`,
    `end`), and `preprocess` (default: what the ControlNet's kind needs; `canny` makes an edge map)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=200)]
    image: ImageRef
    scale: float = Field(1.0, ge=CONTROL_SCALE[0], le=CONTROL_SCALE[1], allow_inf_nan=False)
    start: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    end: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    preprocess: Literal[PREPROCESSORS] | None = None  # type: ignore[valid-type]


Controls = Annotated[list[ControlRef], Field(max_length=MAX_CONTROLS)]

WebhookEventName = Literal[tuple(e.value for e in WebhookEvent)]  # type: ignore[valid-type]


def _unique(events: list[str]) -> list[str]:
    if len(set(events)) != len(events):
        raise PydanticCustomError("unique_events", "must name each event at most once")
    return events


# Where the job's events are POSTed (https; resolve checks the address): the URL's query may hold a token,
# so it is kept out of `params` and shown without its query.
WebhookUrl = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_clean_text)]
WebhookEvents = Annotated[list[WebhookEventName], Field(min_length=1, max_length=len(WebhookEvent)),
                          AfterValidator(_unique)]


HIRES_UPSCALERS = ("latent", "lanczos")  # built in; any upscaler GET /models lists for `upscale` works too


class Hires(BaseModel):
    """A second pass at a larger size (AUTOMATIC1111's hires fix): the image is made at width × height,
    upscaled by `scale` (`latent`: its latents, bilinear; `lanczos` or an upscaler's name: its pixels),
    then refined by an img2img pass of `steps` (default: the job's) at `strength`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    scale: float = Field(2.0, ge=1, le=4, allow_inf_nan=False)
    upscaler: Annotated[str, Field(min_length=1, max_length=200)] = "latent"
    strength: float = Field(0.5, gt=0, le=1, allow_inf_nan=False)
    steps: int | None = Field(None, ge=1, le=100)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    seed: Seed | None = None
    # Run the job once more if its worker dies mid-job (worker_lost); 0 fails it instead.
    retries: int = Field(0, ge=0, le=1)
    webhook: WebhookUrl | None = None
    webhook_events_filter: WebhookEvents = [WebhookEvent.COMPLETED.value]
    # Higher classes go first; within a class API keys share the workers fairly. At most the key's
    # `max_priority`.
    priority: Priority = "normal"


class SDXLRequest(_Request):
    """SDXL base, then optionally the refiner as an ensemble of experts."""

    task: Literal["sdxl"]
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: int = Field(1024, ge=256, le=2048, multiple_of=8)
    height: int = Field(1024, ge=256, le=2048, multiple_of=8)
    steps: int = Field(30, ge=1, le=100)
    guidance_scale: Guidance = 5.0
    num_images: int = Field(1, ge=1, le=4)
    refiner: bool | None = None  # default: true when the model has one
    refiner_switch: float = Field(0.8, gt=0, lt=1, allow_inf_nan=False)
    scheduler: SchedulerName = "euler"
    loras: Loras = []
    control: Controls = []  # applies to the base stage
    hires: Hires | None = None  # after the base (and refiner): upscale, then an img2img pass on the base
    output_format: ImageFormat = "png"


class TurboRequest(_Request):
    """SDXL Turbo: 1 to 4 steps, no classifier-free guidance."""

    task: Literal["turbo"]
    prompt: Prompt
    width: int = Field(512, ge=256, le=1024, multiple_of=8)
    height: int = Field(512, ge=256, le=1024, multiple_of=8)
    steps: int = Field(1, ge=1, le=4)
    num_images: int = Field(1, ge=1, le=8)
    guidance_scale: float = Field(0.0, ge=0, le=0, allow_inf_nan=False)  # accepted only as 0
    loras: Loras = []
    output_format: ImageFormat = "png"


class Img2ImgRequest(_Request):
    """img2img on an SD, SDXL, Turbo, SD 3.5 or FLUX.1 model; the output keeps the input's size unless
    width/height say otherwise."""

    task: Literal["img2img"]
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    image: ImageRef
    strength: float = Field(0.5, gt=0, le=1, allow_inf_nan=False)
    steps: Steps | None = None  # the model's
    guidance_scale: Guidance | None = None  # the model's: 5.0 for SDXL, 7.5 for SD; Turbo and FLUX.1 schnell: 0
    max_sequence_length: SequenceLength | None = None  # sd3 and flux models: T5 prompt tokens (the model's)
    num_images: int = Field(1, ge=1, le=4)
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    scheduler: SchedulerName | None = None  # the kind's: "euler" (sd, sdxl), "flow_euler" (sd3, flux); turbo: its own
    loras: Loras = []
    control: Controls = []
    output_format: ImageFormat = "png"


class SVDRequest(_Request):
    """Stable Video Diffusion image-to-video."""

    task: Literal["svd"]
    image: ImageRef
    width: int = Field(1024, ge=64, le=2048, multiple_of=64)
    height: int = Field(576, ge=64, le=2048, multiple_of=64)
    num_frames: int | None = Field(None, ge=1)  # default and maximum: the model's
    fps: int = Field(7, ge=1, le=60)
    motion_bucket_id: int = Field(127, ge=0, le=255)
    noise_aug_strength: float = Field(0.02, ge=0, le=1, allow_inf_nan=False)
    steps: int = Field(25, ge=1, le=100)
    min_guidance_scale: Guidance = 1.0
    max_guidance_scale: Guidance = 3.0
    decode_chunk_size: int = Field(8, ge=1, le=128)
    output_format: VideoFormat = "mp4"


class Txt2ImgRequest(_Request):
    """Text-to-image on any SD 1.x/2.x, SDXL, SD 3.5 or FLUX.1 model (an SDXL model without its refiner). Size,
    steps, guidance and scheduler default to the model's (GET /models lists them per model)."""

    task: Literal["txt2img"]
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: int | None = Field(None, ge=256, le=2048, multiple_of=8)  # default: the model's native size
    height: int | None = Field(None, ge=256, le=2048, multiple_of=8)
    steps: Steps | None = None  # the model's
    guidance_scale: Guidance | None = None  # the model's (7.5 SD, 5.0 SDXL, 3.5 FLUX.1 dev, 0 FLUX.1 schnell)
    max_sequence_length: SequenceLength | None = None  # sd3 and flux models: T5 prompt tokens (the model's)
    num_images: int = Field(1, ge=1, le=4)
    scheduler: SchedulerName | None = None  # the model kind's: "euler" (sd, sdxl), "flow_euler" (sd3, flux)
    loras: Loras = []
    control: Controls = []
    hires: Hires | None = None
    output_format: ImageFormat = "png"


FILLS = ("original", "fill", "noise", "nothing")
MAX_EXPAND = 1024


class Expand(BaseModel):
    """Outpainting: pixels added on each side of the canvas (each a multiple of 8); the new area is masked."""

    model_config = ConfigDict(strict=True, extra="forbid")

    left: int = Field(0, ge=0, le=MAX_EXPAND, multiple_of=8)
    right: int = Field(0, ge=0, le=MAX_EXPAND, multiple_of=8)
    top: int = Field(0, ge=0, le=MAX_EXPAND, multiple_of=8)
    bottom: int = Field(0, ge=0, le=MAX_EXPAND, multiple_of=8)


class InpaintRequest(_Request):
    """Repaint the masked part of an image (white = repaint; an RGBA mask: transparent = repaint), or extend
    it (`expand`). Pixels the blurred mask leaves black come back exactly as they went in."""

    task: Literal["inpaint"]
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    image: ImageRef
    mask: ImageRef | None = None  # optional only with `expand` (then only the new area is repainted)
    strength: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    steps: Steps | None = None  # the model's
    guidance_scale: Guidance | None = None  # the model's
    max_sequence_length: SequenceLength | None = None  # sd3 and flux models: T5 prompt tokens (the model's)
    num_images: int = Field(1, ge=1, le=4)
    scheduler: SchedulerName | None = None
    mask_blur: int = Field(4, ge=0, le=64)
    # None: the whole image is the context; N: only the mask's bounding box plus N px, worked at the
    # model's native size and pasted back (AUTOMATIC1111's "only masked")
    mask_padding: int | None = Field(None, ge=0, le=1024)
    invert_mask: bool = False
    fill: Literal[FILLS] = "original"  # type: ignore[valid-type]
    expand: Expand | None = None
    loras: Loras = []
    control: Controls = []
    output_format: ImageFormat = "png"


class UpscaleRequest(_Request):
    """Upscale an image with an upscaler (`model`: ESRGAN-family weights from the models file, or the built-in
    `lanczos`), tile by tile with blended seams."""

    task: Literal["upscale"]
    image: ImageRef
    scale: float | None = Field(None, ge=1, le=4, allow_inf_nan=False)  # default: the upscaler's own factor
    tile: int = Field(512, ge=0, le=2048)  # 0: the whole image at once; else at least 64
    output_format: ImageFormat = "png"


ADAPTER_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_TRAIN_IMAGES = 200
TRAIN_METHODS = ("lora", "embedding", "lora+embedding")
# An embedding's token: one word, no spaces (`<name>`, `<小奶猫>`); the worker checks how its tokenizers split it.
Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$"), AfterValidator(_clean_text)]
Caption = Annotated[str, Field(max_length=2000), AfterValidator(_clean_text)]


class TrainImage(BaseModel):
    """One training image and its caption (what the image shows, without the trigger: it is added)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    image: ImageRef
    caption: Caption = ""


class Validation(BaseModel):
    """Images made while training, with the adapter as it is: every `every` steps (0: at the end only)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: Prompt | None = None  # default: the trigger (or token) and the first caption
    every: int = Field(0, ge=0, le=20000)
    num_images: int = Field(1, ge=1, le=4)


def _bare_images(value):
    """`images` may hold bare image inputs: each becomes `{"image": ...}` with no caption."""
    if isinstance(value, list):
        return [{"image": v} if isinstance(v, str) else v for v in value]
    return value


class TrainRequest(_Request):
    """Train a LoRA, an embedding (textual inversion) or both on an SD or SDXL model (POST /train). The
    adapter is registered for the API key that trained it once the job succeeds."""

    task: Literal["train"] = "train"
    name: Annotated[str, Field(pattern=ADAPTER_NAME)]
    replace: bool = False
    method: Literal[TRAIN_METHODS] = "lora"  # type: ignore[valid-type]
    images: Annotated[list[TrainImage], Field(min_length=1, max_length=MAX_TRAIN_IMAGES),
                      BeforeValidator(_bare_images)]
    trigger: Token | None = None  # LoRA: words before every caption (default: `name`); embedding: the token
    init_token: Token | None = None  # embedding: the word its vectors start from
    steps: int = Field(500, ge=1, le=20000)
    learning_rate: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)  # 1e-4 LoRA, 5e-4 embedding
    rank: int = Field(16, ge=1, le=128)
    alpha: float | None = Field(None, gt=0, le=1024, allow_inf_nan=False)  # default: rank
    resolution: int | None = Field(None, ge=256, le=1024, multiple_of=64)  # default: the model's native side
    batch_size: int = Field(1, ge=1, le=16)
    gradient_accumulation: int = Field(1, ge=1, le=64)
    train_text_encoder: bool = False
    caption_dropout: float = Field(0.05, ge=0, le=1, allow_inf_nan=False)
    buckets: bool = True
    min_snr_gamma: float | None = Field(None, gt=0, le=20, allow_inf_nan=False)
    noise_offset: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    checkpoint_every: int = Field(100, ge=0, le=20000)  # 0: no checkpoints (a lost worker starts over)
    validation: Validation = Validation()
    # A training job whose worker dies resumes from its last checkpoint, at most this many times.
    retries: int = Field(2, ge=0, le=2)


def _marks_image(annotation) -> bool:
    """Whether `annotation` is an ImageRef, or an optional one."""
    if typing.get_origin(annotation) is Annotated:
        return any(m is IMAGE_INPUT for m in annotation.__metadata__) or _marks_image(annotation.__origin__)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_marks_image(a) for a in typing.get_args(annotation))
    return False


def _submodel(annotation) -> type[BaseModel] | None:
    """The request model a field holds (`list[ControlRef]` -> ControlRef), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


@functools.cache
def _image_plan(model: type[BaseModel]) -> tuple[tuple[str, type[BaseModel] | None, bool], ...]:
    """`model`'s fields that are input images (None) or hold request models with some (their class, and
    whether in a list), in field order: worked out once per class, so a request's images are found without
    a walk of its fields."""
    plan = []
    for name, info in model.model_fields.items():
        if any(m is IMAGE_INPUT for m in info.metadata) or _marks_image(info.annotation):
            plan.append((name, None, False))
            continue
        sub = _submodel(info.annotation)
        if sub is not None and _image_plan(sub):
            many = any(typing.get_origin(a) is list for a in (info.annotation, *typing.get_args(info.annotation)))
            plan.append((name, sub, many))
    return tuple(plan)


def image_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The paths of `model`'s input-image fields, `[]` standing for a list index: ("image",),
    ("control[].image",)."""
    out: list[str] = []
    for name, sub, many in _image_plan(model):
        out += [name] if sub is None else [f"{name}{'[]' if many else ''}.{path}" for path in image_fields(sub)]
    return tuple(out)


def image_values(req: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """Each input image a validated request carries, with its path (`control[1].image`), in field order."""
    out: list[tuple[str, str]] = []
    for name, sub, many in _image_plan(type(req)):
        value = getattr(req, name)
        if value is None:
            continue
        if sub is None:
            out.append((prefix + name, value))
        elif many:
            for i, item in enumerate(value):
                out += image_values(item, f"{prefix}{name}[{i}].")
        else:
            out += image_values(value, f"{prefix}{name}.")
    return out


# ---- responses (documented in the OpenAPI schema; handlers build them as plain dicts) ----


class Progress(BaseModel):
    stage: Literal[tuple(s.value for s in Stage)]  # type: ignore[valid-type]
    step: int
    total_steps: int
    fraction: float
    loss: float | None = None  # a training job: its last step's loss
    resumed_from: int | None = None  # a training job resumed after its worker was lost: the checkpoint's step


class ImageResult(BaseModel):
    url: str
    content_type: str
    width: int
    height: int
    seed: int


class VideoResult(BaseModel):
    url: str
    content_type: str
    width: int
    height: int
    num_frames: int
    fps: int
    seed: int


class AdapterResult(BaseModel):
    """What a training job made: the adapter registered for its API key."""

    name: str
    kind: Literal["lora", "embedding"]
    model: str
    family: str
    trigger: str | None = None  # a LoRA's trigger words
    token: str | None = None  # an embedding's token (a lora+embedding adapter has both)
    digest: str
    size_bytes: int
    url: str


class Result(BaseModel):
    images: list[ImageResult] | None = None
    video: VideoResult | None = None
    adapter: AdapterResult | None = None


class JobError(BaseModel):
    code: Literal[tuple(c.value for c in ErrorCode)]  # type: ignore[valid-type]
    message: str


class Timings(BaseModel):
    queue_s: float | None = None
    inference_s: float | None = None
    encode_s: float | None = None
    store_s: float | None = None
    total_s: float | None = None


class WebhookState(BaseModel):
    """What the job's webhook got so far: `delivered` once every delivery owed has been (2xx)."""

    url: str  # without its query string
    events: list[WebhookEventName]
    delivered: bool
    attempts: int
    last_status: int | None  # the last attempt's HTTP status; null before any, or when it got no answer


class JobView(BaseModel):
    id: str
    task: str
    model: str
    status: Literal[tuple(s.value for s in JobStatus)]  # type: ignore[valid-type]
    created_at: str
    started_at: str | None
    finished_at: str | None
    queue_position: int | None  # the jobs its workers take before it (fair share, priorities); null unless queued
    priority: Priority = "normal"
    progress: Progress
    params: dict[str, Any]
    warnings: list[str]
    result: Result | None
    error: JobError | None
    timings: Timings
    webhook: WebhookState | None = None  # null when the request named no webhook


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[FieldError] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str
