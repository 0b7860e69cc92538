"""Image inputs as the API takes them. A request's `image` and each `control[i].image` may be given as a
file path, bytes, a PIL image, or a `data:`/`https://` URL (or bare base64); everything but a URL or base64
is turned into a `data:` URL here, so the caller never base64-encodes by hand. A training job's images
come from a dataset folder (sent as a zip) or a list of image inputs (sent in JSON): both made here too.

PIL is never imported by this module: a PIL image is recognised by its class's module, and only then is
`PIL.Image` (already loaded by whoever made the image) used to encode it.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any, Mapping

_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
_URL_PREFIXES = ("data:", "https://", "http://")


def sniff_mime(data: bytes) -> str:
    """The image type from its first bytes (the server checks again; this only labels the data URL)."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_url(data: bytes, mime: str | None = None) -> str:
    return f"data:{mime or sniff_mime(data)};base64," + base64.b64encode(data).decode("ascii")


def _is_pil_image(value: Any) -> bool:
    image_module = sys.modules.get("PIL.Image")
    return image_module is not None and isinstance(value, image_module.Image)


def _pil_to_data_url(image: Any) -> str:
    """PNG: lossless, and every mode Pillow saves as PNG is one the server decodes."""
    buffer = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "1"):
        image = image.convert("RGB")
    image.save(buffer, format="PNG")
    return data_url(buffer.getvalue(), "image/png")


def _file_to_data_url(path: Path) -> str:
    data = path.read_bytes()
    guessed = mimetypes.guess_type(path.name)[0]
    return data_url(data, guessed if guessed and guessed.startswith("image/") else None)


def encode_image(value: Any) -> Any:
    """One image input as the API's string form. A `str` is taken as a URL or base64 unless it names an
    existing file. Anything else unknown is passed through for the server to judge (and reject, by field)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return data_url(bytes(value))
    if isinstance(value, os.PathLike):
        return _file_to_data_url(Path(value))
    if isinstance(value, str):
        if value.startswith(_URL_PREFIXES) or len(value) > 4096 or not Path(value).is_file():
            return value
        return _file_to_data_url(Path(value))
    if _is_pil_image(value):
        return _pil_to_data_url(value)
    return value


def encode_inputs(params: dict) -> dict:
    """A copy of the request's fields with `image`, `mask` and each `control[i].image` encoded."""
    out = dict(params)
    for name in ("image", "mask"):
        if name in out:
            out[name] = encode_image(out[name])
    if isinstance(out.get("control"), (list, tuple)):
        out["control"] = [{**item, "image": encode_image(item["image"])}
                          if isinstance(item, dict) and "image" in item else item for item in out["control"]]
    return out


# ---------------------------------------------------------------- training datasets (POST /train)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what the API reads from a dataset zip
CAPTION_SUFFIXES = (".txt", ".caption")  # kohya's two caption extensions; the zip carries them as .txt
# Sent as the multipart form's text as is; every other field goes as JSON text (as the API reads them).
TRAIN_TEXT_FIELDS = frozenset({"model", "name", "method", "trigger", "init_token", "webhook"})


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: a caption must be UTF-8 text") from None


def _caption_file(image: Path) -> Path | None:
    for suffix in CAPTION_SUFFIXES:
        candidate = image.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def dataset_entries(directory: Path, captions: Any = None) -> list[tuple[str, Path, str | None]]:
    """A dataset folder laid out as kohya's (`cat1.png` + `cat1.txt`, in subfolders too, such as
    `10_cat/`): each image as (its name in the zip, its path, its caption or None), in name order. Dot
    files and folders are skipped. `captions`: a str, the caption of every image without a caption file;
    or a mapping from an image's relative path, file name or stem to its caption (over its caption file)."""
    if captions is not None and not isinstance(captions, (str, Mapping)):
        raise TypeError("captions for a folder: one str for every image, or a mapping of file name to caption")
    entries = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.suffix.lower() not in IMAGE_SUFFIXES or _hidden(relative) or not path.is_file():
            continue
        caption_file = _caption_file(path)
        caption = _read_caption(caption_file) if caption_file else None
        if isinstance(captions, Mapping):
            for key in (relative.as_posix(), path.name, path.stem):
                if key in captions:
                    caption = captions[key]
                    break
        elif caption is None and captions is not None:
            caption = captions
        entries.append((relative.as_posix(), path, caption))
    if not entries:
        raise ValueError(f"{directory}: no training images (PNG, JPEG or WebP files, with optional "
                         f"same-name .txt captions)")
    return entries


def dataset_zip(directory: str | os.PathLike, captions: Any = None) -> bytes:
    """The folder's images and captions as the zip `POST /train` takes (`dataset`): each image stored as
    it is, with its caption as a same-name .txt beside it. ValueError when the folder holds no image."""
    import zipfile

    directory = Path(directory)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, path, caption in dataset_entries(directory, captions):
            archive.writestr(name, path.read_bytes())
            if caption:
                archive.writestr(name[: len(name) - len(path.suffix)] + ".txt", str(caption).encode("utf-8"))
    return buffer.getvalue()


def _looks_like_a_missing_file(value: Any) -> bool:
    if isinstance(value, os.PathLike):
        return not Path(value).is_file()
    return (isinstance(value, str) and not value.startswith(_URL_PREFIXES) and len(value) <= 4096
            and Path(value).suffix.lower() in IMAGE_SUFFIXES + (".gif",) and not Path(value).is_file())


def train_images(items: Any, captions: Any = None) -> list[dict]:
    """A list of training images as the JSON body's `images`: each item an image input (a path, bytes, a PIL
    image, a URL or base64), an (image, caption) pair or an `{"image", "caption"}` dict. `captions`: one
    str for every image without its own, or a list of one per image."""
    items = list(items)
    if not items:
        raise ValueError("no training images given")
    if isinstance(captions, str) or captions is None:
        given = [captions] * len(items)
    else:
        given = list(captions)
        if len(given) != len(items):
            raise ValueError(f"{len(given)} captions for {len(items)} images: give one per image")
    out = []
    for item, default in zip(items, given):
        if isinstance(item, tuple) and len(item) == 2:
            image, caption = item
        elif isinstance(item, Mapping) and "image" in item:
            image, caption = item["image"], item.get("caption")
        else:
            image, caption = item, None
        if _looks_like_a_missing_file(image):
            raise FileNotFoundError(f"no such image file: {image}")
        caption = caption if caption is not None else default
        out.append({"image": encode_image(image), **({"caption": caption} if caption is not None else {})})
    return out


def train_form(fields: dict) -> dict[str, str]:
    """The fields of a multipart `POST /train` besides the dataset: names and words as text, the rest as
    JSON text (`steps=200`, `buckets=false`, `validation={...}`), as the API reads them."""
    return {key: value if key in TRAIN_TEXT_FIELDS and isinstance(value, str) else json.dumps(value)
            for key, value in fields.items()}
