"""Encoding results: PNG/JPEG/WebP images; MP4 (H.264, yuv420p, plays in browsers), WebP or GIF video."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from PIL import Image

IMAGE_SAVE = {
    "png": ("PNG", {"compress_level": 4}),
    "jpeg": ("JPEG", {"quality": 92}),
    "webp": ("WEBP", {"quality": 92}),
}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "mp4": "mp4", "gif": "gif"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4", "gif": "image/gif"}


def encode_image(image: Image.Image, fmt: str) -> bytes:
    kind, options = IMAGE_SAVE[fmt]
    buf = io.BytesIO()
    image.convert("RGB").save(buf, kind, **options)
    return buf.getvalue()


def encode_video(frames: np.ndarray, fps: int, fmt: str) -> bytes:
    """`frames`: uint8 (frames, height, width, 3)."""
    if fmt == "mp4":
        return _mp4(frames, fps)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    duration = max(1, round(1000 / fps))
    if fmt == "webp":
        images[0].save(buf, "WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=90)
    else:
        images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buf.getvalue()


def _mp4(frames: np.ndarray, fps: int) -> bytes:
    import imageio_ffmpeg  # bundles its own ffmpeg binary

    _, height, width, _ = frames.shape
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=2, ffmpeg_log_level="error",
            output_params=["-crf", "18", "-preset", "veryfast", "-movflags", "+faststart"],
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)
