"""Encoding results: PNG/JPEG/WebP images; MP4 (H.264, yuv420p, plays in browsers), WebP or GIF video.

PNG has two encoders. The default (`png_level` -1) is Fresco's own: one PNG filter for the whole image
("up": each row minus the row above, computed by numpy in one pass) and zlib's run-length strategy.
It is 3 to 5 times faster than Pillow's encoder (which tries five filters on every row and then runs
full LZ77 matching) for files within about 15% of Pillow's level 1: on a 512² image about 6 ms instead
of 30 ms on this 2-core CPU, which is most of what the service adds to a one-step Turbo job.
`png_level` 0-9 uses Pillow's encoder at that zlib level instead (smaller files, slower).

Each file can carry its recipe (`Metadata`: A1111's generation-parameters text and Fresco's JSON,
service/recipe.py; docs/recipe.md): PNG in text chunks (`parameters`, `fresco`) written before IDAT,
beside the pixels' compressed stream, never re-encoding anything; JPEG and WebP in EXIF (A1111's
UserComment) and XMP; MP4 in its `comment` and `description` tags; GIF in a comment extension.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from service.recipe import PNG_PARAMETERS_KEY, PNG_RECIPE_KEY, XMP_NAMESPACE

IMAGE_SAVE = {
    "png": ("PNG", {"compress_level": 4}),
    "jpeg": ("JPEG", {"quality": 92}),
    "webp": ("WEBP", {"quality": 92}),
}
FAST_PNG = -1  # png_level: Fresco's fast encoder

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger("fresco.encode")

USER_COMMENT = 0x9286  # EXIF UserComment, in the Exif IFD (0x8769): where A1111 writes JPEG and WebP text
_JPEG_SEGMENT_MAX = 65533 - 29  # an APP1 segment's payload, less XMP's namespace header


# Characters XML 1.0 does not allow that JSON may hold in a string as they are (JSON escapes the controls).
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Metadata:
    """What one output file carries: A1111's generation-parameters text and the recipe's JSON."""

    parameters: str
    recipe: str


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_text_chunk(key: str, text: str) -> bytes:
    """A PNG text chunk as Pillow's `PngInfo.add_text` (and so A1111) writes it: tEXt when the text is
    Latin-1, else iTXt (UTF-8, uncompressed, no language)."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return png_itxt_chunk(key, text)


def png_itxt_chunk(key: str, text: str) -> bytes:
    """An iTXt chunk: keyword, no compression, no language tag, no translated keyword, UTF-8 text."""
    return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


def _png_metadata(meta: Metadata) -> bytes:
    return png_text_chunk(PNG_PARAMETERS_KEY, meta.parameters) + png_itxt_chunk(PNG_RECIPE_KEY, meta.recipe)


def exif_user_comment(text: str) -> bytes:
    """An EXIF block ("Exif\\0\\0" and a big-endian TIFF structure) holding only UserComment, as A1111
    writes it with piexif: IFD0 points to the Exif IFD, whose one entry is UserComment (type UNDEFINED),
    "UNICODE\\0" then the text in UTF-16 big-endian (what piexif's `UserComment.load` decodes)."""
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    exif_ifd = 8 + 2 + 12 + 4  # the header, then IFD0: one entry and the next-IFD offset
    data = exif_ifd + 2 + 12 + 4
    tiff = (b"MM\0\x2a" + struct.pack(">I", 8)
            + struct.pack(">HHHII", 1, 0x8769, 4, 1, exif_ifd) + struct.pack(">I", 0)
            + struct.pack(">HHHII", 1, USER_COMMENT, 7, len(comment), data) + struct.pack(">I", 0)
            + comment)
    return b"Exif\0\0" + tiff


def xmp_packet(recipe_json: str) -> bytes:
    """An XMP packet whose `fresco:recipe` property holds the recipe's JSON (as XML text; the few
    characters XML cannot hold written as JSON escapes, which parse to the same string)."""
    recipe_json = _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", recipe_json)
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:fresco="{XMP_NAMESPACE}">'
            f'<fresco:recipe>{escape(recipe_json)}</fresco:recipe>'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="r"?>').encode("utf-8")


def _exif_xmp(meta: Metadata, fmt: str) -> dict:
    """Pillow save options that write `meta` into a JPEG or WebP: EXIF (with its "Exif\\0\\0" header in
    JPEG's APP1, without it in WebP's EXIF chunk, as the WebP container wants) and XMP. A JPEG keeps each
    in one APP1 segment (64 KiB): one that would not fit is left out (a warning in the log)."""
    exif = exif_user_comment(meta.parameters)
    xmp = xmp_packet(meta.recipe)
    options = {}
    for name, value in (("exif", exif), ("xmp", xmp)):
        if fmt == "jpeg" and len(value) > _JPEG_SEGMENT_MAX:
            log.warning("the recipe's %s (%d bytes) does not fit a JPEG segment; left out", name, len(value))
            continue
        options[name] = value[6:] if fmt == "webp" and name == "exif" else value
    return options


_POOL: ThreadPoolExecutor | None = None
PARALLEL_MIN_BYTES = 256 * 1024  # below this one thread is as fast


_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:  # the worker's finishing threads may encode at once
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="fresco-png")
    return _POOL


def _deflate(data: memoryview, parts: int) -> bytes:
    """A zlib stream of `data`, compressed in `parts` slices at once on threads (zlib releases the GIL).
    Each slice is an independent raw deflate stream, all but the last ended by a sync flush (byte
    aligned, not final): concatenated they are one valid deflate stream, as pigz makes them."""
    if parts <= 1:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        return compressor.compress(data) + compressor.flush()
    n = len(data)
    bounds = [n * i // parts for i in range(parts + 1)]

    def piece(i: int) -> bytes:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
        out = compressor.compress(data[bounds[i]:bounds[i + 1]])
        return out + compressor.flush(zlib.Z_FINISH if i == parts - 1 else zlib.Z_SYNC_FLUSH)

    pieces = list(_pool().map(piece, range(parts)))
    return b"\x78\x01" + b"".join(pieces) + struct.pack(">I", zlib.adler32(data))


def png_fast(pixels: np.ndarray, threads: int | None = None, meta: Metadata | None = None) -> bytes:
    """A PNG of `pixels` (uint8, height × width × 3 RGB, or × 4 RGBA): filter "up" on every row but the
    first, deflate with zlib's run-length strategy, in slices on `threads` threads (default: up to the
    CPU count for a large image; 1 when the caller already encodes several images at once). `meta`: text
    chunks between IHDR and IDAT (where Pillow and A1111 put them; readers see them without decoding)."""
    height, width, channels = pixels.shape
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, width * channels)
    rows = np.empty((height, width * channels + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type "up"
    rows[0, 0] = 0  # the first row has nothing above it: filter "none"
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    if threads is None:
        threads = min(os.cpu_count() or 1, 4) if rows.nbytes >= PARALLEL_MIN_BYTES else 1
    data = _deflate(memoryview(rows).cast("B"), threads)
    color_type = {3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    text = _png_metadata(meta) if meta is not None else b""
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + text + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def encode_image(image: Image.Image, fmt: str, png_level: int = FAST_PNG, threads: int | None = None,
                 meta: Metadata | None = None) -> bytes:
    """One image file; with `meta`, carrying its recipe."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if fmt == "png":
        if png_level == FAST_PNG:
            return png_fast(np.asarray(image), threads, meta)
        kind, options = "PNG", {"compress_level": png_level}
        if meta is not None:
            from PIL.PngImagePlugin import PngInfo

            info = PngInfo()
            info.add_text(PNG_PARAMETERS_KEY, meta.parameters)  # tEXt, or iTXt when not Latin-1 (as A1111)
            info.add_itxt(PNG_RECIPE_KEY, meta.recipe)
            options["pnginfo"] = info
    else:
        kind, options = IMAGE_SAVE[fmt]
        if meta is not None:
            options = {**options, **_exif_xmp(meta, fmt)}
    buf = io.BytesIO()
    image.save(buf, kind, **options)
    return buf.getvalue()


def encode_video(frames: np.ndarray, fps: int, fmt: str, meta: Metadata | None = None) -> bytes:
    """`frames`: uint8 (frames, height, width, 3). With `meta`, the file carries its recipe: MP4 in its
    `comment` (the JSON) and `description` (A1111's text) tags, animated WebP as a still one does (EXIF
    and XMP), GIF in a comment extension (the JSON)."""
    if fmt == "mp4":
        return _mp4(frames, fps, meta)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    duration = max(1, round(1000 / fps))
    if fmt == "webp":
        options = _exif_xmp(meta, "webp") if meta is not None else {}
        images[0].save(buf, "WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=90,
                       **options)
    else:
        options = {"comment": meta.recipe.encode("utf-8")} if meta is not None else {}
        images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, **options)
    return buf.getvalue()


def _mp4(frames: np.ndarray, fps: int, meta: Metadata | None = None) -> bytes:
    import imageio_ffmpeg  # bundles its own ffmpeg binary

    _, height, width, _ = frames.shape
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    # The recipe in the MP4's iTunes-style tags (ffprobe, exiftool and players show them): ©cmt, desc.
    tags = ["-metadata", f"comment={meta.recipe}", "-metadata", f"description={meta.parameters}"] if meta else []
    try:
        writer = imageio_ffmpeg.write_frames(
            path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=2, ffmpeg_log_level="error",
            output_params=["-crf", "18", "-preset", "veryfast", "-movflags", "+faststart", *tags],
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)
