"""workers/encode.py and workers/results.py: Fresco's fast PNG encoder gives the exact pixels back (any
shape, any thread count), the other formats decode to what went in, and a job's files are named and
described as the contract says."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from workers.encode import encode_image, encode_video, png_fast
from workers.pipelines.base import Output
from workers.results import Encoder, encode


def pixels(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: rows that differ, as real images do (the "up" filter matters)
    ramp = (np.arange(height)[:, None, None] + np.arange(width)[None, :, None]) % 256
    return ((ramp + rng.integers(0, 40, (height, width, channels))) % 256).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 300, 3), (257, 3, 3), (64, 64, 4), (512, 512, 3)])
@pytest.mark.parametrize("threads", [None, 1, 3])
def test_fast_png_round_trips_exactly(shape, threads):
    data = pixels(*shape)
    png = png_fast(data, threads)
    img = Image.open(io.BytesIO(png))
    img.load()  # a corrupt stream (CRC, zlib, adler32) fails here
    assert img.format == "PNG" and img.mode == ("RGBA" if shape[2] == 4 else "RGB")
    assert np.array_equal(np.asarray(img), data)


def test_fast_png_in_slices_is_one_valid_zlib_stream():
    import zlib

    data = pixels(300, 400)
    png = png_fast(data, 4)
    # the IDAT chunk's payload alone, decompressed by zlib (which checks the adler32 at the end)
    start = png.index(b"IDAT") + 4
    length = int.from_bytes(png[start - 8:start - 4], "big")
    raw = zlib.decompress(png[start:start + length])
    assert len(raw) == 300 * (400 * 3 + 1)


def test_fast_png_is_within_reach_of_pillows_size():
    data = pixels(256, 256)
    image = Image.fromarray(data)
    pillow = len(encode_image(image, "png", png_level=1))
    assert len(png_fast(data)) < pillow * 1.5


@pytest.mark.parametrize("fmt, kind", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_image_formats_decode_to_the_image(fmt, kind):
    data = pixels(96, 128)
    out = Image.open(io.BytesIO(encode_image(Image.fromarray(data), fmt)))
    assert out.format == kind and out.size == (128, 96) and out.mode == "RGB"
    error = np.abs(np.asarray(out, dtype=np.int16) - data).mean()
    assert error == 0 if fmt == "png" else error < 12


def test_png_levels_use_pillows_encoder_and_rgba_input_becomes_rgb():
    image = Image.fromarray(pixels(32, 32, 4))
    for level in (0, 9):
        out = Image.open(io.BytesIO(encode_image(image, "png", png_level=level)))
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def test_mp4_is_h264_yuv420p_with_every_frame():
    frames = np.stack([pixels(64, 96, seed=i) for i in range(5)])
    with av.open(io.BytesIO(encode_video(frames, 7, "mp4"))) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 5 and decoded[0].shape == (64, 96, 3)
    assert float(stream.average_rate) == pytest.approx(7)


@pytest.mark.parametrize("fmt, kind", [("webp", "WEBP"), ("gif", "GIF")])
def test_animated_formats_keep_every_frame(fmt, kind):
    frames = np.stack([pixels(32, 48, seed=i) for i in range(4)])
    img = Image.open(io.BytesIO(encode_video(frames, 10, fmt)))
    assert img.format == kind and img.n_frames == 4 and img.size == (48, 32)


def test_a_jobs_files_and_result_are_named_as_the_contract_says():
    images = [Image.fromarray(pixels(16, 24, seed=i)) for i in range(2)]
    files, result = encode(Output(images=images), {"output_format": "jpeg", "seed": 2**32 - 1})
    assert [name for name, _ in files] == ["0.jpg", "1.jpg"]
    assert result == {"images": [
        {"name": "0.jpg", "content_type": "image/jpeg", "width": 24, "height": 16, "seed": 2**32 - 1},
        {"name": "1.jpg", "content_type": "image/jpeg", "width": 24, "height": 16, "seed": 0}]}
    frames = np.stack([pixels(16, 32, seed=i) for i in range(3)])
    files, result = encode(Output(frames=frames), {"output_format": "gif", "fps": 5, "seed": 9})
    assert [name for name, _ in files] == ["video.gif"]
    assert result == {"video": {"name": "video.gif", "content_type": "image/gif", "width": 32, "height": 16,
                                "num_frames": 3, "fps": 5, "seed": 9}}


def test_a_batch_encodes_on_threads_to_the_same_files():
    jobs = [(Output(images=[Image.fromarray(pixels(64, 64, seed=i))]), {"output_format": "png", "seed": i}, None)
            for i in range(3)]
    encoder = Encoder()
    alone = [encoder.encode_all([job])[0][0] for job in jobs]
    together = [files for files, _, _ in encoder.encode_all(jobs)]
    assert together == alone
