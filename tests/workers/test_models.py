"""The real `from_pretrained` path end to end: tiny pipelines saved with `save_pretrained`, a models file
naming those directories (relative to the file), `load_model`, then a real API + worker stack serving them.

Model names here are `local-*`, never the tiny profile's `tiny-*`: the tiny stack may share this Redis
in the same session, and queues are per task and model, so the two stacks never take each other's jobs.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import pytest
import torch
from PIL import Image

from service.catalog import load_catalog
from tests.conftest import Stack, png_data_url, wait_status

MODELS_YAML = """\
# local weights, written by save_pretrained; paths relative to this file
models:
  local-sdxl:
    kind: sdxl
    source: ../base          # a relative path with a leading dot
    refiner: ../refiner
    dtype: float32
    device: cpu
    description: tiny weights from a local directory
  local-turbo: {kind: turbo, source: ../turbo, dtype: float32, device: cpu}
  local-svd: {kind: svd, source: ../svd, num_frames: 4, dtype: float32, device: cpu}
defaults:
  img2img: local-sdxl
"""

MODELS_TOML = """\
[models.local-sdxl]
kind = "sdxl"
source = "base"            # a bare directory name, found beside this file
refiner = "refiner"
dtype = "float32"
device = "cpu"

[models.local-turbo]
kind = "turbo"
source = "./turbo"
dtype = "float32"
device = "cpu"

[models.hub-svd]
kind = "svd"
source = "stabilityai/stable-video-diffusion-img2vid-xt"   # a hub id: not a directory here, kept as is

[models.tiny-like]
kind = "turbo"
source = "tiny"

[defaults]
turbo = "local-turbo"
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """Tiny pipelines saved as diffusers directories base/, refiner/, turbo/, svd/ (the in-memory
    originals are kept, to compare the loaded weights with), and a YAML models file in config/."""
    from workers.families.sdxl import tiny_base, tiny_refiner
    from workers.families.svd import tiny_svd

    root = tmp_path_factory.mktemp("local-models")
    base = tiny_base(seed=0)
    pipes = {"base": base, "refiner": tiny_refiner(base), "turbo": tiny_base(seed=3), "svd": tiny_svd()}
    for name, pipe in pipes.items():
        pipe.save_pretrained(root / name)
    (root / "config").mkdir()
    models_file = root / "config" / "models.yaml"
    models_file.write_text(MODELS_YAML)
    return {"root": root, "pipes": pipes, "models_file": models_file}


def test_yaml_relative_paths_resolve_against_the_models_file(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the models file's folder: the paths must not depend on the cwd
    catalog = load_catalog(weights["models_file"])
    root = weights["root"].resolve()
    assert catalog.profile == "custom"
    assert set(catalog.models) == {"local-sdxl", "local-turbo", "local-svd", "lanczos"}  # lanczos: built in
    sdxl = catalog.spec("local-sdxl")
    assert (sdxl.source, sdxl.refiner) == (str(root / "base"), str(root / "refiner"))
    assert Path(sdxl.source).is_absolute() and Path(sdxl.source, "model_index.json").is_file()
    assert (sdxl.dtype, sdxl.device, sdxl.kind) == ("float32", "cpu", "sdxl")
    assert catalog.spec("local-turbo").source == str(root / "turbo")
    svd = catalog.spec("local-svd")
    assert (svd.source, svd.num_frames) == (str(root / "svd"), 4)
    assert catalog.defaults == {"img2img": "local-sdxl", "sdxl": "local-sdxl", "turbo": "local-turbo",
                                "svd": "local-svd", "txt2img": "local-sdxl", "train": "local-sdxl",
                                "inpaint": "local-sdxl", "upscale": "lanczos"}
    assert catalog.models_for("img2img") == ["local-sdxl", "local-turbo"]


def test_toml_models_file_bare_names_hub_ids_and_tiny(weights, tmp_path, monkeypatch):
    path = weights["root"] / "models.toml"
    path.write_text(MODELS_TOML)
    monkeypatch.chdir(tmp_path)
    catalog = load_catalog(path)
    root = weights["root"].resolve()
    assert catalog.spec("local-sdxl").source == str(root / "base")  # no leading dot, but a directory there
    assert catalog.spec("local-sdxl").refiner == str(root / "refiner")
    assert catalog.spec("local-turbo").source == str(root / "turbo")
    hub = catalog.spec("hub-svd")
    assert hub.source == "stabilityai/stable-video-diffusion-img2vid-xt"  # untouched
    assert hub.num_frames == 25  # the -xt default
    assert catalog.spec("tiny-like").source == "tiny" and catalog.spec("tiny-like").is_tiny
    assert catalog.defaults["turbo"] == "local-turbo" and catalog.defaults["img2img"] == "local-sdxl"


def test_models_file_errors(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_catalog(bad)
    bad.write_text("models:\n  x: {kind: svd, source: ./svd, refiner: ./r}\n")
    with pytest.raises(ValueError, match="refiner"):
        load_catalog(bad)
    bad.write_text("models:\n  x: {kind: sdxl, source: ./base, colour: blue}\n")
    with pytest.raises(ValueError, match="colour"):
        load_catalog(bad)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_model_from_local_directories(weights):
    from diffusers import (EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline, StableVideoDiffusionPipeline)

    from workers.models import load_model

    catalog = load_catalog(weights["models_file"])
    originals = weights["pipes"]

    sdxl = load_model(catalog.spec("local-sdxl"))
    assert type(sdxl.pipe) is StableDiffusionXLPipeline
    assert type(sdxl.refiner) is StableDiffusionXLImg2ImgPipeline
    assert (sdxl.device.type, sdxl.dtype) == ("cpu", torch.float32)
    assert sdxl.pipe.unet.dtype == torch.float32 and sdxl.pipe.unet.device.type == "cpu"
    # the refiner shares the base's modules, as the real pair does; it has no first text encoder
    assert sdxl.refiner.vae is sdxl.pipe.vae
    assert sdxl.refiner.text_encoder_2 is sdxl.pipe.text_encoder_2
    assert sdxl.refiner.text_encoder is None and sdxl.refiner.tokenizer is None
    assert sdxl.refiner.config.requires_aesthetics_score
    assert sdxl.refiner_scheduler_config is not None and sdxl.scheduler_config is not None
    # the weights are the saved ones, not fresh random ones
    assert _same_weights(sdxl.pipe.unet, originals["base"].unet)
    assert _same_weights(sdxl.refiner.unet, originals["refiner"].unet)
    # img2img on the same modules: no second copy
    img2img = sdxl.img2img()
    assert type(img2img) is StableDiffusionXLImg2ImgPipeline
    assert img2img.unet is sdxl.pipe.unet and img2img.vae is sdxl.pipe.vae
    assert sdxl.img2img() is img2img

    turbo = load_model(catalog.spec("local-turbo"))
    assert type(turbo.pipe) is StableDiffusionXLPipeline and turbo.refiner is None
    assert type(turbo.pipe.scheduler) is EulerAncestralDiscreteScheduler
    assert turbo.pipe.scheduler.config.timestep_spacing == "trailing"
    assert _same_weights(turbo.pipe.unet, originals["turbo"].unet)
    assert not _same_weights(turbo.pipe.unet, originals["base"].unet)

    svd = load_model(catalog.spec("local-svd"))
    assert type(svd.pipe) is StableVideoDiffusionPipeline and svd.refiner is None
    assert type(svd.pipe.vae) is type(originals["svd"].vae)
    assert _same_weights(svd.pipe.unet, originals["svd"].unet)
    assert svd.spec.num_frames == 4


# ---- a real API + worker stack serving the local models ----


@pytest.fixture(scope="module")
def local_stack(redis_url, data_dir, weights):
    with Stack(redis_url, data_dir, env={"FRESCO_MODELS_FILE": str(weights["models_file"])}) as s:
        yield s


@pytest.fixture
def http(local_stack):
    with local_stack.client() as c:
        yield c


def run(client, body: dict) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 202, r.text
    job = wait_status(client, r.json()["id"], {"succeeded", "failed", "canceled"})
    assert job["status"] == "succeeded", job
    assert job["model"] == body["model"] and job["task"] == body["task"]
    assert job["progress"]["fraction"] == 1.0
    return job


def fetch(client, url: str) -> tuple[bytes, str]:
    r = client.get(url)
    assert r.status_code == 200, url
    return r.content, r.headers["content-type"]


def assert_png_images(client, job: dict, size: tuple[int, int], count: int = 1) -> None:
    images = job["result"]["images"]
    assert len(images) == count
    for item in images:
        assert (item["width"], item["height"]) == size and item["content_type"] == "image/png"
        data, ctype = fetch(client, item["url"])
        assert ctype == "image/png"
        img = Image.open(io.BytesIO(data))
        assert img.format == "PNG" and img.size == size


IMAGE_CASES = {
    "sdxl": {"task": "sdxl", "model": "local-sdxl", "prompt": "a lighthouse", "width": 256, "height": 256,
             "steps": 4, "seed": 1},
    "turbo": {"task": "turbo", "model": "local-turbo", "prompt": "a lighthouse", "width": 256, "height": 256},
    "img2img": {"task": "img2img", "model": "local-sdxl", "prompt": "a lighthouse", "image": png_data_url(256, 256),
                "steps": 4, "strength": 0.5},
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_tasks_on_local_models(http, case):
    body = IMAGE_CASES[case]
    job = run(http, body)
    assert_png_images(http, job, (256, 256))
    if case == "sdxl":
        assert job["params"]["refiner"] is True  # the base, then the refiner loaded from refiner/
        assert job["params"]["seed"] == 1 and job["result"]["images"][0]["seed"] == 1


def test_svd_on_local_model(http):
    body = {"task": "svd", "model": "local-svd", "image": png_data_url(256, 256), "width": 256, "height": 256,
            "num_frames": 4, "steps": 2, "seed": 3}
    job = run(http, body)
    video = job["result"]["video"]
    assert (video["width"], video["height"], video["num_frames"], video["content_type"]) == (256, 256, 4, "video/mp4")
    data, ctype = fetch(http, video["url"])
    assert ctype == "video/mp4"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f for f in container.decode(stream)]
    assert len(frames) == 4 and (frames[0].width, frames[0].height) == (256, 256)


def test_svd_over_the_models_frame_count_is_refused(http):
    r = http.post("/generate", json={"task": "svd", "model": "local-svd", "image": png_data_url(256, 256),
                                     "num_frames": 5})
    assert r.status_code == 422
    assert "num_frames" in [f["field"] for f in r.json()["error"]["fields"]]


def test_models_lists_local_models_loaded(http, weights):
    body = http.get("/models").json()
    assert body["profile"] == "custom" and body["note"] is None
    tasks = body["tasks"]
    expected = {"sdxl": ["local-sdxl"], "turbo": ["local-turbo"], "img2img": ["local-sdxl", "local-turbo"],
                "svd": ["local-svd"]}
    root = weights["root"].resolve()
    for task, names in expected.items():
        entries = {e["name"]: e for e in tasks[task]["models"]}
        assert sorted(entries) == sorted(names), tasks[task]  # this stack's catalogue only: no tiny-*
        for name in names:
            assert entries[name]["loaded"] is True, (task, entries[name])
            assert Path(entries[name]["source"]).parent == root
        assert tasks[task]["default_model"] == names[0]
    assert tasks["sdxl"]["models"][0]["refiner"] is True
    assert tasks["svd"]["models"][0]["max_num_frames"] == 4


# ---- weights variants and dtypes (found running full-size checkpoints) ----


def test_a_directory_of_fp16_variant_files_loads_without_naming_the_variant(weights, tmp_path):
    """A hub snapshot downloaded with `variant="fp16"` holds only `*.fp16.safetensors`: found, not a
    "no file named diffusion_pytorch_model.bin" error."""
    from service.catalog import ModelSpec
    from workers.models import load_model, local_variant

    source = tmp_path / "turbo-fp16"
    weights["pipes"]["turbo"].save_pretrained(source, variant="fp16")
    unet_files = sorted(p.name for p in (source / "unet").iterdir())
    assert unet_files == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert local_variant(str(source), "t", None) == "fp16"
    assert local_variant(str(source), "t", "bf16") == "bf16"  # the models file's word goes
    assert local_variant(str(weights["root"] / "turbo"), "t", None) is None  # plain weights: no variant
    assert local_variant("stabilityai/sdxl-turbo", "t", None) is None  # a hub id: diffusers' business
    model = load_model(ModelSpec(name="t", kind="turbo", source=str(source), dtype="float32", device="cpu"))
    assert _same_weights(model.pipe.unet, weights["pipes"]["turbo"].unet)


def test_two_variants_and_no_plain_weights_is_an_error_that_names_them(weights, tmp_path):
    from workers.models import local_variant

    source = tmp_path / "two"
    weights["pipes"]["turbo"].save_pretrained(source, variant="fp16")
    unet = source / "unet"
    (unet / "diffusion_pytorch_model.fp16.safetensors").rename(unet / "diffusion_pytorch_model.bf16.safetensors")
    with pytest.raises(ValueError, match=r"\['bf16', 'fp16'\].*set `variant:`"):
        local_variant(str(source), "two", None)


def test_missing_weights_say_how_to_fix_them(tmp_path, weights):
    from service.catalog import ModelSpec
    from workers.models import load_model

    source = tmp_path / "no-unet-weights"
    weights["pipes"]["turbo"].save_pretrained(source)
    (source / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="set `variant: fp16`"):
        load_model(ModelSpec(name="t", kind="turbo", source=str(source), dtype="float32", device="cpu"))


@pytest.mark.parametrize("dtype, upcast", [("bfloat16", False), ("float32", False), ("float16", True)])
def test_a_force_upcast_vae_is_cast_per_job_only_in_float16(weights, tmp_path, dtype, upcast):
    """Turbo's own VAE says `force_upcast`: diffusers' img2img then casts the shared VAE to float32 and
    back on every job. Needless in bfloat16 and float32: off there, kept for float16."""
    from service.catalog import ModelSpec
    from workers.models import load_model

    source = tmp_path / "turbo-upcast"
    if not source.exists():
        weights["pipes"]["turbo"].vae.register_to_config(force_upcast=True)
        try:
            weights["pipes"]["turbo"].save_pretrained(source)
        finally:
            weights["pipes"]["turbo"].vae.register_to_config(force_upcast=False)
    model = load_model(ModelSpec(name="t", kind="turbo", source=str(source), dtype=dtype, device="cpu"))
    assert model.pipe.vae.config.force_upcast is upcast
    assert model.img2img().vae.config.force_upcast is upcast  # the same VAE


def test_an_img2img_job_in_bfloat16_never_casts_the_vae(weights, tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from service.catalog import ModelSpec
    from workers.models import load_model
    from workers.pipelines.base import input_image
    from workers.pipelines.img2img import Img2Img
    from workers.progress import Progress

    source = tmp_path / "turbo-upcast"
    weights["pipes"]["turbo"].vae.register_to_config(force_upcast=True)
    try:
        weights["pipes"]["turbo"].save_pretrained(source)
    finally:
        weights["pipes"]["turbo"].vae.register_to_config(force_upcast=False)
    model = load_model(ModelSpec(name="t", kind="turbo", source=str(source), dtype="bfloat16", device="cpu"))
    pipeline = Img2Img(model)  # built at worker start
    casts = []
    to = type(model.pipe.vae).to
    monkeypatch.setattr(type(model.pipe.vae), "to", lambda self, *a, **k: casts.append((a, k)) or to(self, *a, **k))
    params = {"prompt": "p", "steps": 2, "strength": 0.5, "guidance_scale": 0.0, "scheduler": "turbo",
              "num_images": 1, "seed": 1, "width": 64, "height": 64,
              "image": input_image(PILImage.new("RGB", (64, 64)))}
    with torch.inference_mode():
        out = pipeline.run(params, Progress(lambda s: False, pipeline.plan(params)))
    assert len(out.images) == 1 and casts == []


def test_pinned_execution_device_answers_without_walking_and_changes_no_pixel(monkeypatch):
    """workers/execution_device.py: a loaded model's pipelines say their device at once (diffusers would
    walk every module of every component on each call), and the images are the same as unpinned."""
    import numpy as np
    import torch
    from diffusers.utils import torch_utils

    from service.catalog import tiny_catalog
    from workers import execution_device
    from workers.models import load_model

    model = load_model(tiny_catalog().spec("tiny-turbo"))
    pipes = [model.pipe, model.img2img()]

    def run():
        return np.asarray(model.pipe(prompt="a fox", width=256, height=256, num_inference_steps=1, guidance_scale=0.0,
                                     generator=torch.Generator().manual_seed(1)).images[0])

    walks = []
    original = torch.nn.Module.modules
    monkeypatch.setattr(torch.nn.Module, "modules", lambda self: walks.append(type(self).__name__) or original(self))
    for pipe in pipes:
        assert pipe._execution_device == torch.device("cpu")
        assert torch_utils.get_module_execution_device(pipe.text_encoder) == torch.device("cpu")
    assert walks == []
    pinned = run()
    assert "UNet2DConditionModel" not in walks  # a whole job: the UNet's modules never searched
    monkeypatch.undo()
    for pipe in pipes:  # unpinned: diffusers' own search, the same answer and the same pixels
        del pipe.__dict__[execution_device.ATTRIBUTE]
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.__dict__.pop(execution_device.ATTRIBUTE, None)
    assert model.pipe._execution_device == torch.device("cpu")
    assert np.array_equal(run(), pinned)


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_transformer_families_take_the_gpu_path_and_the_memory_modes(model, caplog):
    """SD 3 and FLUX: fused projections (diffusers' own fusing of joint attention), channels-last (their only
    convolution, the patch embedding; and the VAE), regional compilation of their blocks (eager backend:
    Dynamo captures each block whole, fullgraph) warmed at a bucket, and the offloading memory modes: each
    gives the plain model's image."""
    import numpy as np
    import torch._dynamo

    from service.catalog import tiny_catalog
    from workers.families import FAMILIES
    from workers.models import freeze_compiled, load_model
    from workers.pipelines.registry import PIPELINES
    from workers.progress import Progress
    from workers.runtime import warm_up

    spec = tiny_catalog().spec(model)
    params = {"prompt": "a fox", "negative_prompt": "", "width": 64, "height": 64, "steps": 2, "num_images": 1,
              "seed": 2, **{k: v for k, v in spec.defaults().items() if k not in ("width", "height", "steps")},
              "scheduler": spec.kind_row.scheduler}

    def image(**options):
        pipeline = PIPELINES["txt2img"](load_model(spec.model_copy(update=options)))
        if options.get("compile"):
            warm_up(pipeline, pipeline.model.spec)
            freeze_compiled()
        with torch.inference_mode():
            out = pipeline.run(params, Progress(lambda state: False, pipeline.plan(params)))
        return np.asarray(out.images[0], dtype=np.int16), pipeline.model

    plain, _ = image()
    fused, loaded = image(fuse_qkv=True, channels_last=True)
    # SD 3.5's stays unfused (FusedJointAttnProcessor2_0 drops its Q/K normalisation); the VAE's is fused
    assert any(getattr(m, "fused_projections", False) for m in loaded.pipe.transformer.modules()) == \
        loaded.family.fuses_qkv
    assert any(getattr(m, "fused_projections", False) for m in loaded.pipe.vae.modules())
    assert np.abs(fused - plain).max() <= 1
    torch.compiler.set_stance("default")
    torch._dynamo.reset()
    try:
        with caplog.at_level("INFO", logger="fresco.models"):
            compiled, loaded = image(compile=True, compile_backend="eager", buckets=[(64, 64)])
        names = FAMILIES[spec.family].compile_blocks
        blocks = [m for m in loaded.pipe.transformer.modules() if type(m).__name__ in names]
        assert f"compiling {len(blocks)} transformer blocks of the transformer (eager)" in caplog.text
        assert blocks and all(getattr(m, "_compiled_call_impl", None) is not None for m in blocks)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
        assert np.abs(compiled - plain).max() <= 1
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()
    for mode in ("balanced", "minimal"):
        assert np.abs(image(memory=mode)[0] - plain).max() <= 1, mode
