"""Models-file add-ons: LoRAs and embeddings (`adapters:`) and ControlNets (`controlnets:`), each made for
some models (`base`: model families, kinds or model names), and the limits requests use them within.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.catalog.models import PICKLE_SUFFIXES, ModelSpec
from service.families import FAMILIES, KINDS
from service.fetch import literal_address_problem

# What a ControlNet's control image is; `canny` maps are made on the worker from any image
# (`preprocess: canny`), the others are given ready-made (`preprocess: none`).
CONTROL_KINDS = ("canny", "depth", "normal", "openpose", "lineart", "softedge", "scribble", "mlsd", "seg",
                 "tile", "other")
PREPROCESSORS = ("none", "canny")
CONTROL_SCALE = (0.0, 2.0)
MAX_CONTROLS = 2
LORA_SCALE = (-2.0, 2.0)  # the scale a request may give a LoRA (the contract's limits)


def adapter_url_problem(url: str, schemes: list[str]) -> str | None:
    """Why an adapter URL is refused before anything is fetched (None: fetch it, the worker checks the
    bytes are safetensors). The message never quotes the URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it raises ValueError when it is no number 0..65535)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in schemes or not parts.hostname:
        return f"must be an URL with scheme {' or '.join(schemes)}"
    if parts.username or parts.password:
        return "must not carry credentials"
    metadata = literal_address_problem(parts.hostname)
    if metadata:
        return metadata.removeprefix("URL ")
    if PurePosixPath(parts.path).suffix.lower() in PICKLE_SUFFIXES:
        return "names a pickle file, which can run code when loaded; give a .safetensors file"
    return None


class _FitsModels(BaseModel):
    """An add-on (adapter, ControlNet) made for some models: `base` names model families, kinds or models."""

    model_config = ConfigDict(extra="forbid")

    base: list[str]
    source: str  # hub id, local file or directory, or "tiny"

    @field_validator("base", mode="before")
    @classmethod
    def _base_listed(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("base")
    @classmethod
    def _base_given(cls, v):
        if not v:
            raise ValueError("names the model families, kinds or models it fits; give at least one")
        return v

    @property
    def is_tiny(self) -> bool:
        return self.source == "tiny"

    def fits(self, model: ModelSpec) -> bool:
        return any(b == model.name or b == model.kind or b == model.family for b in self.base)


class AdapterSpec(_FitsModels):
    """A LoRA or a textual-inversion embedding, by name, with the models it fits."""

    name: str
    kind: Literal["lora", "embedding"]
    weight_name: str | None = None  # the file inside a hub repo or directory
    token: list[str] = []  # embeddings: the prompt token(s) that mean it
    trigger: list[str] = []  # LoRAs: words that call up the style (shown, never added to a prompt)
    default_scale: float = Field(1.0, ge=LORA_SCALE[0], le=LORA_SCALE[1], allow_inf_nan=False)
    description: str = ""

    @field_validator("token", "trigger", mode="before")
    @classmethod
    def _listed(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "embedding" and not self.token:
            raise ValueError(f"adapter {self.name}: an embedding needs its `token`")
        if self.kind == "lora" and self.token:
            raise ValueError(f"adapter {self.name}: `token` is for embeddings; a LoRA may name `trigger` words")
        path = self.weight_name or self.source
        if not self.is_tiny and Path(path).suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(f"adapter {self.name}: {Path(path).suffix} files are pickles, which can run code when "
                             f"loaded; Fresco loads adapters from .safetensors files only")
        return self

    def fits(self, model: ModelSpec) -> bool:
        # `memory: minimal` hooks each layer of the model at load: layers an adapter adds later would
        # never reach the device. Such a model takes no adapters; nor does a family adapters do not load into
        # (embeddings: one with no textual-inversion format, SD 3.5 and FLUX.1).
        family = FAMILIES[model.family]
        takes = family.embeddings if self.kind == "embedding" else family.adapters
        return model.memory != "minimal" and takes and super().fits(model)

    def listing(self) -> dict:
        """How `GET /models` shows it, under each model it fits."""
        out: dict = {"name": self.name, "kind": self.kind, "description": self.description}
        if self.kind == "embedding":
            out["tokens"] = self.token
        else:
            out["triggers"] = self.trigger
            out["scale"] = {"default": self.default_scale, "minimum": LORA_SCALE[0], "maximum": LORA_SCALE[1]}
        return out


class ControlNetSpec(_FitsModels):
    """A ControlNet, by name: what its control image is (`kind`), the models it fits (`base`)."""

    name: str
    kind: Literal[CONTROL_KINDS]  # type: ignore[valid-type]
    variant: str | None = None
    trust_pickle: bool = False  # load pickled (.bin) weights: only for a source you trust
    description: str = ""

    @property
    def preprocess(self) -> str:
        """What a request's control image goes through by default: a canny ControlNet takes any image."""
        return "canny" if self.kind == "canny" else "none"

    def listing(self) -> dict:
        return {"name": self.name, "kind": self.kind, "preprocess": self.preprocess,
                "description": self.description}


def check_bases(adapters: dict[str, AdapterSpec], controlnets: dict[str, ControlNetSpec],
                models: dict[str, ModelSpec]) -> None:
    """Every add-on's `base` names a model, kind or family; embedding tokens are unique; ControlNets fit
    only models of families that take them."""
    known = set(models) | set(FAMILIES) | set(KINDS)
    for what, addon in [("adapter", a) for a in adapters.values()] + [("controlnet", c) for c in controlnets.values()]:
        unknown = [b for b in addon.base if b not in known]
        if unknown:
            raise ValueError(f"{what} {addon.name}: base {unknown} is no model, kind or family "
                             f"({sorted(FAMILIES)} or a model name)")
    for adapter in adapters.values():
        if adapter.kind == "embedding":
            families = [b for b in adapter.base if b in FAMILIES or b in KINDS]
            refused = [b for b in families if not FAMILIES[KINDS[b].family if b in KINDS else b].embeddings]
            if refused:
                raise ValueError(f"adapter {adapter.name}: base {refused} takes no textual-inversion embeddings "
                                 f"(they are for {' and '.join(f.name for f in FAMILIES.values() if f.embeddings)} "
                                 f"models)")
            taken = [t for other in adapters.values() if other is not adapter for t in other.token
                     if t in adapter.token]
            if taken:
                raise ValueError(f"adapter {adapter.name}: token {taken} is another embedding's too")
    takes = [f.name for f in FAMILIES.values() if f.control]
    for net in controlnets.values():
        if any(not FAMILIES[m.family].control for m in models.values() if net.fits(m)):
            raise ValueError(f"controlnet {net.name}: ControlNets are for {' and '.join(takes)} models")
