"""Fresco's text-to-image models as AUTOMATIC1111 checkpoints (`/sdapi/v1/sd-models`), and finding one by
any name a client sends for it.

A1111 shows a checkpoint as `title` "name [hash]" (what clients store and send back as
`sd_model_checkpoint`), `model_name`, `hash` (the first 10 hex digits of `sha256`), `filename`. Fresco never
reads weight files in the API, so its hash is the SHA-256 of the model's models-file entry (name and
source): stable while the entry stays the same, and distinct per model. Clients send the title, sometimes
the bare name, a file name (with or without `.safetensors`) or a title with another hash (saved before the
entry changed): all of these find the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from service.api.compat.models import text_models
from service.catalog import CHECKPOINT_SUFFIXES, Catalog
from service.recipe import checkpoint_sha256

HASH_CHARS = 10  # A1111's short hash


@dataclass(frozen=True)
class Checkpoint:
    model: str  # the Fresco model name
    sha256: str
    filename: str

    @property
    def hash(self) -> str:
        return self.sha256[:HASH_CHARS]

    @property
    def title(self) -> str:
        return f"{self.model} [{self.hash}]"

    def listing(self) -> dict:
        return {"title": self.title, "model_name": self.model, "hash": self.hash, "sha256": self.sha256,
                "filename": self.filename, "config": None}


def checkpoint(catalog: Catalog, model: str) -> Checkpoint:
    spec = catalog.models[model]
    return Checkpoint(model, checkpoint_sha256(model, spec.source), spec.source)


def checkpoints(catalog: Catalog) -> list[Checkpoint]:
    """Every model that does text-to-image, in models-file order."""
    return [checkpoint(catalog, name) for name in text_models(catalog)]


def _stem(name: str) -> str:
    """A file name's stem: "/models/x.safetensors" -> "x"; a name without a checkpoint suffix as it is."""
    path = PurePosixPath(name.replace("\\", "/"))
    return path.stem if path.suffix.lower() in CHECKPOINT_SUFFIXES else path.name


def find(catalog: Catalog, name: str) -> str | None:
    """The Fresco model a client's checkpoint name means, or None. Titles, model names and hashes are
    matched first; then a file name, when only one model has it (the tiny profile's are all "tiny")."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    bare = name.rsplit(" [", 1)[0] if name.endswith("]") else name
    wanted = {name.lower(), bare.lower(), _stem(bare).lower()}
    listed = checkpoints(catalog)
    for ckpt in listed:
        if wanted & {ckpt.title.lower(), ckpt.model.lower(), ckpt.hash, ckpt.sha256}:
            return ckpt.model
    by_file = [c.model for c in listed if wanted & {c.filename.lower(), _stem(c.filename).lower()}]
    return by_file[0] if len(by_file) == 1 else None
