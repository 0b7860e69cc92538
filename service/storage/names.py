"""What results and inputs are called: valid job ids and file names, and content types, in one place.

A job's files live under `<job id>/<name>` (a folder locally, a key prefix in S3). A job id is a
UUID and a name a plain file name, so nothing can climb out of a job's folder. Trained adapters live
under `adapters/<sha256 hex>.safetensors` (service/adapter_registry.py): no job id, so the expiry of
job folders never touches them.
"""

from __future__ import annotations

import re

JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ADAPTERS = "adapters"  # the folder of trained adapters' files
_ADAPTER_FILE = re.compile(r"^[0-9a-f]{64}\.safetensors$")

# Output formats (the requests' `output_format`) -> file extension and content type.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "mp4": "mp4", "gif": "gif"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
                 "mp4": "video/mp4"}
_BY_EXTENSION = {**{ext: CONTENT_TYPES[fmt] for fmt, ext in EXTENSIONS.items()}, "jpeg": "image/jpeg"}


def content_type_for(name: str) -> str:
    return _BY_EXTENSION.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def valid_job_id(job_id: str) -> bool:
    return bool(JOB_ID.fullmatch(job_id))


def valid_key(job_id: str, name: str) -> bool:
    """A job id is a UUID and a name a plain file name (or the adapters folder and a digest's file):
    nothing can climb out of the store."""
    if job_id == ADAPTERS:
        return bool(_ADAPTER_FILE.fullmatch(name))
    return valid_job_id(job_id) and bool(_NAME.fullmatch(name)) and ".." not in name


def adapter_file(digest: str) -> str:
    """The file a trained adapter of content digest `sha256:<hex>` is stored as, in ADAPTERS."""
    return digest.removeprefix("sha256:") + ".safetensors"


def image_name(index: int, fmt: str) -> str:
    return f"{index}.{EXTENSIONS[fmt]}"


def video_name(fmt: str) -> str:
    return f"video.{EXTENSIONS[fmt]}"


def input_name(path: str, fmt: str) -> str:
    """The file an input image at request path `path` is stored as: `image` -> input.png,
    `control[1].image` -> control-1.png, `mask` -> mask.png."""
    stem = "input" if path == "image" else re.sub(r"\[(\d+)\]", r"-\1", path).removesuffix(".image")
    return f"{stem.replace('.', '-')}.{EXTENSIONS[fmt]}"
