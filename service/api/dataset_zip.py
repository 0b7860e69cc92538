"""A training dataset sent as a zip (POST /train, multipart `dataset`): images with same-name `.txt`
captions, the convention of kohya, fal and Replicate (`cat1.png` + `cat1.txt`).

Read from memory, never extracted to disk, and refused with the entry named when it is not what it
says: an absolute name or one with `..`, an encrypted entry, a file that is neither an image nor a
caption, an image that does not decode or is too large, a caption that is not UTF-8. A zip bomb cannot
get far: every entry is read with a cap (its declared size is not trusted), and the whole set within
FRESCO_MAX_TRAIN_BYTES. Folders inside the zip are fine (names are matched by their full path);
macOS's `__MACOSX/` and dot files are skipped.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import PurePosixPath

from service.api.errors import ValidationFailed, field_error
from service.api.inputs import ImageRejected, check_image_bytes
from service.api.schemas import MAX_TRAIN_IMAGES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_BYTES = 16 * 1024
MAX_ENTRIES = 4 * MAX_TRAIN_IMAGES + 16  # images, captions, and the odd folder or README


def _refuse(message: str) -> ValidationFailed:
    return ValidationFailed([field_error("dataset", message)])


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return name.endswith("/") or "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not (path.is_absolute() or ".." in path.parts or (name[1:2] == ":" and name[:1].isalpha()))


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """The entry's bytes, refused past `cap` whatever its header claims."""
    if info.file_size > cap:
        raise _refuse(f"{info.filename}: is {info.file_size} bytes; at most {cap}")
    with archive.open(info) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _refuse(f"{info.filename}: unpacks to more than {cap} bytes")
    return data


def read_dataset(data: bytes, *, max_image_bytes: int, max_pixels: int, max_total_bytes: int) -> list[dict]:
    """The zip's images with their captions, in name order: `[{"image": <base64>, "caption": "..."}]`
    (the JSON body's form). ValidationFailed (422, field `dataset`, the entry named) when it is refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _refuse("is not a zip file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise _refuse(f"holds {len(infos)} entries; at most {MAX_ENTRIES}")
        images: dict[str, bytes] = {}
        captions: dict[str, str] = {}
        total = 0
        for info in infos:
            name = info.filename
            if not _safe_name(name):
                raise _refuse(f"{name}: an absolute name or one with `..` is refused")
            if _skipped(name):
                continue
            if info.flag_bits & 0x1:
                raise _refuse(f"{name}: is encrypted")
            suffix = PurePosixPath(name).suffix.lower()
            stem = name[: len(name) - len(suffix)]
            if suffix in IMAGE_SUFFIXES:
                if len(images) >= MAX_TRAIN_IMAGES:
                    raise _refuse(f"holds more than {MAX_TRAIN_IMAGES} images")
                content = _read(archive, info, max_image_bytes)
                try:
                    check_image_bytes(content, max_pixels=max_pixels)
                except ImageRejected as exc:
                    raise _refuse(f"{name}: {exc}") from None
                if stem in images:
                    raise _refuse(f"{name}: another image has the same name (its caption would be ambiguous)")
                images[stem] = content
            elif suffix == CAPTION_SUFFIX:
                content = _read(archive, info, MAX_CAPTION_BYTES)
                try:
                    captions[stem] = content.decode("utf-8-sig").strip()
                except UnicodeDecodeError:
                    raise _refuse(f"{name}: a caption must be UTF-8 text") from None
            else:
                raise _refuse(f"{name}: is neither a PNG, JPEG or WebP image nor a .txt caption")
            total += len(content)
            if total > max_total_bytes:
                raise _refuse(f"unpacks to more than {max_total_bytes} bytes (FRESCO_MAX_TRAIN_BYTES)")
    if not images:
        raise _refuse("holds no image (PNG, JPEG or WebP)")
    orphans = sorted(set(captions) - set(images))
    if orphans:
        raise _refuse(f"{orphans[0]}{CAPTION_SUFFIX}: a caption without an image of the same name")
    return [{"image": base64.b64encode(images[stem]).decode(), "caption": captions.get(stem, "")}
            for stem in sorted(images)]
