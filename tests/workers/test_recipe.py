"""Outputs carry their recipe: each format round-trips A1111's generation-parameters text and Fresco's
JSON, read back the way their readers read them (Pillow's PNG text, EXIF UserComment as piexif lays it
out, XMP, ffmpeg's own metadata dump of an MP4); a worker's real jobs carry the model, seed, adapters and
digests; FRESCO_OUTPUT_METADATA=false leaves every format without any of it."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest
from PIL import Image

from service.catalog import tiny_catalog
from service.recipe import XMP_NAMESPACE, Recipe
from tests.workers.harness import job, make_runner, pop_and_run, submit, turbo
from workers import recipe as worker_recipe
from workers.encode import encode_image, encode_video, png_fast
from workers.pipelines.base import Output
from workers.results import Encoder, encode, metadata

PARAMS = {"prompt": "a fox, in the snow: 雪", "negative_prompt": "blurry, dog", "width": 96, "height": 64,
          "steps": 20, "guidance_scale": 7.5, "num_images": 2, "seed": 41, "scheduler": "dpmpp_2m_karras",
          "output_format": "png", "refiner": False,
          "image": {"name": "input.png", "width": 96, "height": 64},
          "loras": [{"name": "tiny-style", "scale": 0.8, "digest": "sha256:" + "ab" * 32},
                    {"url": "https://example.com/l/x.safetensors?token=secret#f", "scale": 1.0,
                     "digest": "sha256:" + "cd" * 32}]}
MODEL = {"name": "tiny-sd", "kind": "sd", "source": "tiny", "dtype": "float32"}
EMBEDDING = {"name": "tiny-cat", "tokens": ["<tiny-cat>"], "digest": "sha256:" + "ef" * 32}
RECIPE = Recipe("txt2img", MODEL, PARAMS, (EMBEDDING,))


# ---- readers, written from the formats' specifications (not from the writer's code)

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> tuple[str, str, dict]:
    """AUTOMATIC1111's `parse_generation_parameters` (infotext_utils.py): prompt lines, the lines from
    "Negative prompt:" on, and the last line's "Key: value" entries (quoted values unquoted)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    entries = {}
    for key, value in _PARAM.findall(last):
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        entries[key] = value
    return prompt, negative, entries


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        out.append((kind, body))
        at += 12 + length
    return out


def user_comment(exif: bytes) -> tuple[int, bytes]:
    """EXIF UserComment's (type, bytes), walking the TIFF structure: IFD0 -> Exif IFD (0x8769) -> 0x9286."""
    tiff = exif[6:] if exif.startswith(b"Exif\0\0") else exif
    order = {b"MM": ">", b"II": "<"}[tiff[:2]]

    def entries(offset):
        (count,) = struct.unpack(order + "H", tiff[offset:offset + 2])
        for i in range(count):
            tag, kind, n, value = struct.unpack(order + "HHII", tiff[offset + 2 + 12 * i:offset + 14 + 12 * i])
            yield tag, kind, n, value

    ifd0 = struct.unpack(order + "I", tiff[4:8])[0]
    exif_ifd = next(v for t, _, _, v in entries(ifd0) if t == 0x8769)
    tag, kind, n, offset = next(e for e in entries(exif_ifd) if e[0] == 0x9286)
    return kind, tiff[offset:offset + n]


def piexif_user_comment(raw: bytes) -> str:
    """piexif.helper.UserComment.load, which A1111 reads JPEG and WebP infotexts with."""
    prefix, body = raw[:8], raw[8:]
    assert prefix == b"UNICODE\0"
    return body.decode("utf-16-be")


def xmp_recipe(xmp: bytes | str) -> dict:
    text = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
    root = ET.fromstring(text[text.index("<x:xmpmeta"):text.index("</x:xmpmeta>") + len("</x:xmpmeta>")])
    return json.loads(root.find(f".//{{{XMP_NAMESPACE}}}recipe").text)


def ffmetadata(data: bytes, tmp_path) -> dict[str, str]:
    """The MP4's global tags as the bundled ffmpeg dumps them (`-f ffmetadata`), unescaped."""
    import imageio_ffmpeg

    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                         capture_output=True, check=True).stdout.decode("utf-8")
    tags, key, value, escaped, in_value = {}, "", "", False, False
    for c in out.split("\n", 1)[1]:  # after the ";FFMETADATA1" header
        if escaped:
            (value := value + c) if in_value else (key := key + c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "=" and not in_value:
            in_value = True
        elif c == "\n":
            if key and not key.startswith("[") and not key.startswith(";"):
                tags[key] = value
            key, value, in_value = "", "", False
        elif in_value:
            value += c
        else:
            key += c
    return tags


def assert_infotext(text: str, recipe: Recipe, index: int) -> None:
    prompt, negative, entries = parse_infotext(text)
    params = recipe.params
    assert prompt == params["prompt"] + "".join(f" <lora:{e['name']}:{e['scale']:g}>" for e in params.get("loras") or []
                                                if e.get("name"))
    assert negative == (params.get("negative_prompt") or "")
    assert entries["Seed"] == str(params["seed"] + index) and entries["Model"] == recipe.model["name"]
    assert entries["Steps"] == str(params["steps"]) and entries["Size"] == f"{params['width']}x{params['height']}"


# ---- each format


def frames_and_images():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    return pixels, [Image.fromarray(pixels), Image.fromarray(255 - pixels)]


def test_the_infotext_parses_back_as_a1111_reads_it():
    prompt, negative, entries = parse_infotext(RECIPE.infotext(1))
    assert prompt == "a fox, in the snow: 雪 <lora:tiny-style:0.8>" and negative == "blurry, dog"
    assert entries["Steps"] == "20" and entries["Sampler"] == "DPM++ 2M" and entries["Schedule type"] == "Karras"
    assert entries["CFG scale"] == "7.5" and entries["Seed"] == "42" and entries["Size"] == "96x64"
    assert entries["Model"] == "tiny-sd" and re.fullmatch(r"[0-9a-f]{10}", entries["Model hash"])
    assert entries["Lora hashes"] == "tiny-style: abababababab" and entries["TI hashes"] == "tiny-cat: efefefefefef"
    assert entries["Version"] == "fresco " + RECIPE.data()["versions"]["fresco"]


def test_the_json_holds_task_model_seed_params_adapters_and_versions():
    data = json.loads(RECIPE.json(1))
    assert data["task"] == "txt2img" and data["model"] == MODEL and data["seed"] == 42
    assert data["params"]["seed"] == 41 and data["params"]["steps"] == 20
    assert data["params"]["prompt"] == PARAMS["prompt"]
    assert data["params"]["image"] == {"name": "input.png", "width": 96, "height": 64}
    url = data["params"]["loras"][1]["url"]
    assert url == "https://example.com/l/x.safetensors"  # no query (a signed URL's token), no fragment
    assert data["adapters"]["loras"][0]["digest"] == "sha256:" + "ab" * 32
    assert data["adapters"]["embeddings"] == [EMBEDDING]
    assert set(data["versions"]) == {"fresco", "diffusers", "torch"} and all(data["versions"].values())


@pytest.mark.parametrize("png_level", [-1, 6])
def test_png_carries_parameters_and_fresco_text_before_the_pixels(png_level):
    pixels, images = frames_and_images()
    files, _ = encode(Output(images=images), PARAMS, png_level=png_level, recipe=RECIPE)
    for i, (_, data) in enumerate(files):
        img = Image.open(io.BytesIO(data))
        assert img.text["parameters"] == RECIPE.infotext(i)
        assert_infotext(img.text["parameters"], RECIPE, i)
        assert json.loads(img.text["fresco"]) == RECIPE.data(i) and RECIPE.data(i)["seed"] == 41 + i
        assert np.array_equal(np.asarray(img), pixels if i == 0 else 255 - pixels)
        kinds = [k for k, _ in png_chunks(data)]
        assert kinds.index(b"IDAT") > max(i for i, k in enumerate(kinds) if k in (b"tEXt", b"iTXt"))
        # the non-Latin-1 prompt: both in iTXt (UTF-8), as Pillow's add_text writes such a text
        texts = {body.split(b"\0", 1)[0]: kind for kind, body in png_chunks(data) if kind in (b"tEXt", b"iTXt")}
        assert texts == {b"parameters": b"iTXt", b"fresco": b"iTXt"}


def test_a_latin1_infotext_goes_in_a_text_chunk_as_a1111s_does():
    recipe = Recipe("turbo", {"name": "tiny-turbo", "kind": "turbo", "source": "tiny"},
                    {"prompt": "a café", "width": 64, "height": 64, "steps": 1, "seed": 3, "guidance_scale": 0.0,
                     "num_images": 1, "output_format": "png"})
    data = encode_image(Image.new("RGB", (64, 64)), "png", meta=metadata(recipe, 0))
    chunks = dict((body.split(b"\0", 1)[0], (kind, body)) for kind, body in png_chunks(data) if kind != b"IDAT")
    kind, body = chunks[b"parameters"]
    assert kind == b"tEXt" and body.split(b"\0", 1)[1].decode("latin-1") == recipe.infotext(0)
    _, _, entries = parse_infotext(recipe.infotext(0))
    assert entries["Sampler"] == "Euler a" and entries["CFG scale"] == "0"
    assert "Negative prompt" not in recipe.infotext()


def test_the_fast_png_encoder_writes_the_same_pixel_stream_with_or_without_text():
    pixels, _ = frames_and_images()
    plain, meta = png_fast(pixels, 1), png_fast(pixels, 1, metadata(RECIPE, 0))
    idat = [body for kind, body in png_chunks(plain) if kind == b"IDAT"]
    assert idat == [body for kind, body in png_chunks(meta) if kind == b"IDAT"]
    assert len(meta) - len(plain) < len(RECIPE.json(0)) + len(RECIPE.infotext(0).encode()) + 64


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_jpeg_and_webp_carry_exif_user_comment_and_xmp(fmt):
    _, images = frames_and_images()
    files, _ = encode(Output(images=images), {**PARAMS, "output_format": fmt}, recipe=RECIPE)
    for i, (_, data) in enumerate(files):
        img = Image.open(io.BytesIO(data))
        kind, raw = user_comment(img.info["exif"])
        assert kind == 7  # UNDEFINED, as piexif writes it (a BYTE-typed one would load as a tuple of ints)
        assert piexif_user_comment(raw) == RECIPE.infotext(i)
        assert_infotext(piexif_user_comment(raw), RECIPE, i)
        assert img.getexif().get_ifd(0x8769)[0x9286] == raw  # what A1111-style readers through Pillow get
        assert xmp_recipe(img.info["xmp"]) == RECIPE.data(i)


def test_xmp_holds_characters_xml_cannot_as_json_escapes():
    recipe = Recipe("turbo", {"name": "m", "kind": "turbo", "source": "tiny"},
                    {"prompt": "odd \uffff & <tag>", "width": 64, "height": 64, "steps": 1, "seed": 1,
                     "num_images": 1, "output_format": "webp"})
    data = encode_image(Image.new("RGB", (64, 64)), "webp", meta=metadata(recipe, 0))
    assert xmp_recipe(Image.open(io.BytesIO(data)).info["xmp"])["params"]["prompt"] == "odd \uffff & <tag>"


def video_frames(n: int) -> np.ndarray:
    pixels = frames_and_images()[0]
    return np.stack([np.roll(pixels, 8 * i, axis=1) for i in range(n)])  # frames that differ (none merged)


def video_recipe():
    params = {"image": {"name": "input.png", "width": 96, "height": 64}, "width": 96, "height": 64, "num_frames": 4,
              "fps": 7, "motion_bucket_id": 127, "noise_aug_strength": 0.02, "steps": 3, "min_guidance_scale": 1.0,
              "max_guidance_scale": 3.0, "decode_chunk_size": 4, "seed": 9, "output_format": "mp4"}
    return Recipe("svd", {"name": "tiny-svd", "kind": "svd", "source": "tiny"}, params)


def test_mp4_carries_the_json_in_comment_and_the_infotext_in_description(tmp_path):
    recipe = video_recipe()
    frames = video_frames(4)
    files, _ = encode(Output(frames=frames), recipe.params, recipe=recipe)
    tags = ffmetadata(files[0][1], tmp_path)
    assert json.loads(tags["comment"]) == recipe.data(0) and tags["description"] == recipe.infotext(0)
    _, _, entries = parse_infotext(tags["description"])
    assert entries["Seed"] == "9" and entries["Model"] == "tiny-svd" and entries["Frames"] == "4"


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_animated_webp_and_gif_carry_it(fmt):
    recipe = video_recipe()
    frames = video_frames(3)
    img = Image.open(io.BytesIO(encode(Output(frames=frames), {**recipe.params, "output_format": fmt},
                                       recipe=recipe)[0][0][1]))
    assert img.n_frames == 3
    if fmt == "webp":
        assert piexif_user_comment(user_comment(img.info["exif"])[1]) == recipe.infotext(0)
        assert xmp_recipe(img.info["xmp"]) == recipe.data(0)
    else:
        assert json.loads(img.info["comment"]) == recipe.data(0)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "mp4", "gif"])
def test_no_recipe_no_metadata(fmt, tmp_path):
    _, images = frames_and_images()
    if fmt in ("png", "jpeg", "webp"):
        data = Encoder().encode_all([(Output(images=images), {**PARAMS, "output_format": fmt}, None)])[0][0][0][1]
        info = Image.open(io.BytesIO(data)).info
        assert not {"parameters", "fresco", "exif", "xmp", "comment"} & set(info)
    else:
        recipe = video_recipe()
        data = encode_video(video_frames(3), 7, fmt)
        if fmt == "mp4":
            assert not {"comment", "description"} & set(ffmetadata(data, tmp_path))
        else:
            assert "comment" not in Image.open(io.BytesIO(data)).info
        assert recipe.json() not in data.decode("latin-1")


# ---- a worker's sources and jobs


def test_a_checkpoint_file_is_described_by_its_digest_computed_once(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    reads = []
    real = worker_recipe.sha256_file
    monkeypatch.setattr(worker_recipe, "sha256_file", lambda p: reads.append(p) or real(p))
    expected = {"source": str(path), "digest": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()}
    assert worker_recipe.describe_source(str(path)) == expected == worker_recipe.describe_source(str(path))
    assert len(reads) == 1
    assert worker_recipe.describe_source(str(tmp_path)) == {"source": str(tmp_path)}
    assert worker_recipe.describe_source("tiny") == {"source": "tiny"}


def test_a_hub_id_is_described_with_the_revision_the_cache_resolves(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "models--stabilityai--sdxl-turbo" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert worker_recipe.describe_source("stabilityai/sdxl-turbo") == {
        "source": "stabilityai/sdxl-turbo", "revision": "0123456789abcdef0123456789abcdef01234567"}
    assert worker_recipe.describe_source("someone/not-cached") == {"source": "someone/not-cached", "revision": None}


@pytest.fixture(scope="module")
def runners(module_server, tmp_path_factory):
    made = {}

    def get(metadata: bool):
        if metadata not in made:
            made[metadata] = make_runner(module_server.url, tmp_path_factory.mktemp(f"recipe-{metadata}"),
                                         f"recipe-{metadata}", tiny_catalog(), output_metadata=metadata)
        return made[metadata]
    return get


def test_a_workers_job_carries_its_model_seed_loras_and_embedding(runners):
    runner = runners(True)
    redis = runner.redis
    params = {**turbo(7, size=64, prompt="a <tiny-cat> in the snow", num_images=2),
              "loras": [{"name": "tiny-style", "scale": 0.8}]}
    job_id = submit(redis, "turbo", "tiny-turbo", params)
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "succeeded"}
    ran = job(redis, job_id)["params"]
    for i in range(2):
        img = Image.open(io.BytesIO(runner.storage.get(job_id, f"{i}.png")))
        data = json.loads(img.text["fresco"])
        assert data["task"] == "turbo" and data["seed"] == 7 + i and data["params"] == ran
        assert data["model"] == {"name": "tiny-turbo", "kind": "turbo", "source": "tiny", "dtype": "float32"}
        digest = ran["loras"][0]["digest"]
        assert digest.startswith("sha256:") and data["adapters"]["loras"] == ran["loras"]
        [embedding] = data["adapters"]["embeddings"]
        assert embedding["name"] == "tiny-cat" and embedding["digest"].startswith("sha256:")
        prompt, _, entries = parse_infotext(img.text["parameters"])
        assert prompt == "a <tiny-cat> in the snow <lora:tiny-style:0.8>"
        assert entries["Seed"] == str(7 + i) and entries["Model"] == "tiny-turbo" and entries["Sampler"] == "Euler a"
        assert entries["Lora hashes"] == f"tiny-style: {digest[7:19]}"
        assert entries["TI hashes"] == f"tiny-cat: {embedding['digest'][7:19]}"


def test_output_metadata_off_leaves_the_files_bare(runners):
    runner = runners(False)
    assert runner.recipes is None
    redis = runner.redis
    job_id = submit(redis, "turbo", "tiny-turbo", {**turbo(8, size=64), "output_format": "webp"})
    assert pop_and_run(runner, redis, "turbo", "tiny-turbo") == {"status": "succeeded"}
    info = Image.open(io.BytesIO(runner.storage.get(job_id, "0.webp"))).info
    assert not {"exif", "xmp"} & set(info)
