"""The fields of AUTOMATIC1111's txt2img and img2img requests: their defaults, reading them leniently, and
the ones Fresco accepts but cannot honour.

A1111's API models (modules/api/models.py, pydantic v1) coerce types ("512" and 512.0 are 512) and drop
fields they do not know; clients rely on both: SillyTavern forwards its own `url` and `auth` in the body,
webuiapi sends every field at its own defaults. So this adapter reads the fields it maps with the same
leniency, ignores unknown fields silently (and never echoes them), and for A1111 features Fresco does not
have (face restoration, scripts, a second-pass checkpoint, …) adds a warning to `info` when a request
turns one on, instead of refusing it: these clients send them by default. (The hires fix and inpainting
masks are Fresco's `hires` and `inpaint`: translate.py.)
"""

from __future__ import annotations

import math
import re

from service.api.errors import field_error

# Fields and defaults of StableDiffusionTxt2ImgProcessingAPI / …Img2Img… (A1111 1.10), in its order.
# `parameters` in an answer echoes these, as A1111 does.
COMMON = {
    "prompt": "", "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None, "batch_size": 1,
    "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": None, "tiling": None,
    "do_not_save_samples": False, "do_not_save_grid": False, "eta": None, "denoising_strength": None,
    "s_min_uncond": None, "s_churn": None, "s_tmax": None, "s_tmin": None, "s_noise": None, "override_settings": None,
    "override_settings_restore_afterwards": True, "refiner_checkpoint": None, "refiner_switch_at": None,
    "disable_extra_networks": False, "firstpass_image": None, "comments": None,
}
TAIL = {"sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
        "alwayson_scripts": {}, "infotext": None}
TXT2IMG = {**COMMON, "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0,
           "hr_upscaler": None, "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
           "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
           "hr_negative_prompt": "", "force_task_id": None, **TAIL}
IMG2IMG = {"init_images": None, "resize_mode": 0, "image_cfg_scale": None, "mask": None, "mask_blur_x": 4,
           "mask_blur_y": 4, "mask_blur": None, "mask_round": True, "inpainting_fill": 0, "inpaint_full_res": True,
           "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0, "initial_noise_multiplier": None,
           "latent_mask": None, "force_task_id": None, **COMMON, "denoising_strength": 0.75,
           "include_init_images": False, **TAIL}

MAX_SEED = 2**32 - 1
_INTEGER = re.compile(r"-?\d{1,30}")


class Reader:
    """Reads A1111 fields with A1111's leniency; each bad one becomes a 422 entry naming the field."""

    def __init__(self, body: dict):
        self.body = body
        self.errors: list[dict] = []

    def _bad(self, name: str, message: str, default):
        self.errors.append(field_error(name, message))
        return default

    def int(self, name: str, default=None):
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return self._bad(name, "must be an integer", default)
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value)
        return value if isinstance(value, int) else self._bad(name, "must be an integer", default)

    def number(self, name: str, default=None):
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, str) and len(value) < 40:
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return self._bad(name, "must be a finite number", default)
        return float(value)

    def text(self, name: str, default=None):
        value = self.body.get(name)
        if value is None:
            return default
        return value if isinstance(value, str) else self._bad(name, "must be a string", default)

    def flag(self, name: str, default=False):
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if value in (0, 1) or (isinstance(value, str) and value.lower() in ("true", "false", "0", "1")):
            return str(value).lower() in ("1", "true")
        return self._bad(name, "must be true or false", default)

    def mapping(self, name: str) -> dict:
        value = self.body.get(name)
        if value is None:
            return {}
        return value if isinstance(value, dict) else self._bad(name, "must be a JSON object", {})

    def seed(self, name: str = "seed") -> int | None:
        """A seed, or None for a random one (A1111: -1; also absent or empty)."""
        value = self.body.get(name)
        if value == "":
            return None
        seed = self.int(name)
        if seed is None or seed == -1:
            return None
        if not 0 <= seed <= MAX_SEED:
            return self._bad(name, f"must be -1 (random) or 0..{MAX_SEED}", None)
        return seed


def on(value) -> bool:
    """Whether a feature field is turned on: anything but absent, false, zero, empty or "None"."""
    if isinstance(value, str):
        return value.strip() not in ("", "None", "none")
    if isinstance(value, (list, tuple)):
        return any(on(v) for v in value)
    return bool(value)


def _names(value) -> str:
    names = [str(k)[:40] for k in value][:5] if isinstance(value, dict) else []
    return ", ".join(names) + (", …" if isinstance(value, dict) and len(value) > 5 else "")


# Override settings that need no warning at these values: what SillyTavern sends by default (clip skip 1,
# no VAE). Any other override but `sd_model_checkpoint` (which is used) is warned about unless it is null.
QUIET_OVERRIDES = {"CLIP_stop_at_last_layers": (None, 1), "sd_vae": (None, "", "Automatic", "None"),
                   "forge_additional_modules": (None, [])}


# The hires fix's options for a second pass that differs from the first: their "same as the first" values.
HIRES_SAME = {"hr_checkpoint_name": "Use same checkpoint", "hr_sampler_name": "Use same sampler",
              "hr_scheduler": "Use same scheduler"}


def _hires_extras(body: dict) -> list[str]:
    """Warnings for the hires fix options Fresco's `hires` has not: its second pass runs on the first's
    checkpoint, sampler and prompts."""
    out = []
    for name, same in HIRES_SAME.items():
        value = body.get(name)
        if on(value) and value != same:
            out.append(f"hires fix: {name} is not supported; the second pass ran with the first pass's")
    for name, first in (("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
        value = body.get(name)
        if on(value) and value != body.get(first):
            out.append(f"hires fix: {name} is not supported; the second pass ran with {first}")
    return out


def unsupported(body: dict, img2img: bool) -> list[str]:
    """Warnings for the A1111 features a request turns on that Fresco does not have (each is ignored)."""
    out = []
    if not img2img and on(body.get("enable_hr")):
        out += _hires_extras(body)
    checks = (("restore_faces", "face restoration (restore_faces)"), ("tiling", "tiling"),
              ("styles", "prompt styles (styles)"), ("script_name", "scripts (script_name)"),
              ("refiner_checkpoint", "refiner_checkpoint (SDXL models run their own refiner)"),
              ("firstpass_image", "firstpass_image"))
    for name, what in checks:
        if on(body.get(name)):
            out.append(f"{what} is not supported; ignored")
    strength = body.get("subseed_strength")
    if isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength > 0:
        out.append("variation seeds (subseed, subseed_strength) are not supported; ignored")
    if on(body.get("alwayson_scripts")):
        out.append(f"alwayson_scripts are not supported; ignored: {_names(body['alwayson_scripts'])}")
    if img2img:
        if body.get("resize_mode") not in (None, 0):
            out.append("resize_mode other than 0 (just resize) is not supported; the image was resized to width × "
                       "height")
        if isinstance(body.get("init_images"), list) and len(body["init_images"]) > 1:
            out.append("only the first of init_images is used")
    overrides = body.get("override_settings")
    if isinstance(overrides, dict):
        ignored = [k for k, v in overrides.items()
                   if k != "sd_model_checkpoint" and v not in QUIET_OVERRIDES.get(k, (None,))]
        if ignored:
            out.append(f"override_settings other than sd_model_checkpoint are not supported; ignored: "
                       f"{_names({k: None for k in ignored})}")
    return out
