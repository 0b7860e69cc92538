"""The GPU path's options, per model in the models file, on the CPU at tiny scale: each one loads, is
applied (fused projections, channels-last weights, compiled blocks, the VAE override) and a job runs.
Compilation uses torch.compile's `eager` backend here: Dynamo really captures every transformer block
(fullgraph=True, so a graph break fails the test), but no code is generated, which on this CPU would
take about 20 s per model; the inductor backend is what bench/gpu.py times on a GPU. CPU offload needs
a CUDA device: on the CPU it is a no-op, so only that such a model loads and runs is checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from service.catalog import ModelSpec, load_catalog
from workers.families import FAMILIES
from workers.models import freeze_compiled, load_model
from workers.pipelines.base import input_image
from workers.pipelines.registry import PIPELINES
from workers.progress import Progress
from workers.runtime import warm_up


@pytest.fixture
def dynamo():
    """Compilation state is process-wide: start and leave it clean."""
    import torch._dynamo

    torch.compiler.set_stance("default")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch.compiler.set_stance("default")
    torch._dynamo.reset()


def run(pipeline, params: dict):
    with torch.inference_mode():
        return pipeline.run(params, Progress(lambda state: False, pipeline.plan(params)))


def turbo_params(size=256, seed=3):
    return {"prompt": "a fox", "width": size, "height": size, "steps": 1, "num_images": 1, "seed": seed,
            "guidance_scale": 0.0, "output_format": "png"}


def compiled_blocks(module) -> int:
    return sum(1 for m in module.modules() if getattr(m, "_compiled_call_impl", None) is not None)


@pytest.mark.parametrize("options", [
    {"channels_last": True},
    {"fuse_qkv": True},
    {"vae_tiling": True, "vae_slicing": True},
    {"cpu_offload": True},
    {"dtype": "bfloat16"},
], ids=lambda o: "+".join(o))
def test_each_option_loads_and_a_job_runs(options):
    spec = ModelSpec(name="opt", kind="turbo", source="tiny", **options)
    model = load_model(spec)
    unet, vae = model.pipe.unet, model.pipe.vae
    if options.get("channels_last"):
        conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    if options.get("fuse_qkv"):
        from diffusers.models.attention_processor import FusedAttnProcessor2_0

        processors = list(unet.attn_processors.values()) + list(vae.attn_processors.values())
        assert processors and all(isinstance(p, FusedAttnProcessor2_0) for p in processors)
    if options.get("dtype"):
        assert unet.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    if options.get("vae_tiling"):
        assert vae.use_tiling and vae.use_slicing
    out = run(PIPELINES["turbo"](model), turbo_params())
    pixels = np.asarray(out.images[0])
    assert pixels.shape == (256, 256, 3) and pixels.std() > 1


def test_fused_projections_compute_the_same_image():
    plain = run(PIPELINES["turbo"](load_model(ModelSpec(name="a", kind="turbo", source="tiny"))), turbo_params())
    fused = run(PIPELINES["turbo"](load_model(ModelSpec(name="b", kind="turbo", source="tiny", fuse_qkv=True,
                                                        channels_last=True))), turbo_params())
    a, b = (np.asarray(o.images[0], dtype=np.int16) for o in (plain, fused))
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_compile_warms_the_buckets_so_no_request_compiles(dynamo):
    spec = ModelSpec(name="c", kind="turbo", source="tiny", compile=True, compile_backend="eager", fuse_qkv=True,
                     channels_last=True, buckets=[(256, 256)])
    model = load_model(spec)
    assert compiled_blocks(model.pipe.unet) == sum(
        1 for m in model.pipe.unet.modules() if type(m).__name__ in FAMILIES["sdxl"].compile_blocks) > 0
    pipeline = PIPELINES["turbo"](model)
    assert dynamo["stats"]["unique_graphs"] == 0
    warm_up(pipeline, spec, batch_size=2)  # the bucket at batch 1 and 2
    freeze_compiled()
    graphs = dynamo["stats"]["unique_graphs"]
    assert graphs >= 1
    out = run(pipeline, turbo_params(256))  # a bucket: the compiled blocks, nothing new compiled
    assert dynamo["stats"]["unique_graphs"] == graphs
    other = run(pipeline, turbo_params(320))  # not a bucket: runs eagerly instead of compiling
    assert dynamo["stats"]["unique_graphs"] == graphs
    assert np.asarray(out.images[0]).shape == (256, 256, 3) and np.asarray(other.images[0]).shape == (320, 320, 3)


def test_sdxl_with_refiner_and_svd_take_every_option(dynamo, tmp_path):
    options = {"fuse_qkv": True, "channels_last": True, "compile": True, "compile_backend": "eager",
               "vae_slicing": True}
    sdxl = load_model(ModelSpec(name="s", kind="sdxl", source="tiny", refiner="tiny", **options))
    assert compiled_blocks(sdxl.pipe.unet) > 0 and compiled_blocks(sdxl.refiner.unet) > 0
    out = run(PIPELINES["sdxl"](sdxl), {"prompt": "x", "negative_prompt": "", "width": 256, "height": 256,
                                       "steps": 4, "guidance_scale": 5.0, "num_images": 1, "seed": 1,
                                       "scheduler": "euler", "refiner": True, "refiner_switch": 0.75})
    assert out.images[0].size == (256, 256)
    svd = load_model(ModelSpec(name="v", kind="svd", source="tiny", num_frames=4, **options))
    assert compiled_blocks(svd.pipe.unet) > 0
    frames = run(PIPELINES["svd"](svd), {"width": 128, "height": 64, "num_frames": 4, "steps": 2, "fps": 7,
                                         "motion_bucket_id": 127, "noise_aug_strength": 0.02,
                                         "min_guidance_scale": 1.0, "max_guidance_scale": 3.0,
                                         "decode_chunk_size": 4, "seed": 1,
                                         "image": input_image(Image.new("RGB", (128, 64), (200, 30, 30)))}).frames
    assert frames.shape == (4, 64, 128, 3)


def test_vae_override_from_a_directory(tmp_path):
    """The fp16-fix VAE path: `vae:` replaces the pipeline's VAE with another one, loaded by
    from_pretrained (here a tiny VAE with its own weights, saved beside a tiny pipeline)."""
    from diffusers import AutoencoderKL

    from workers.families.sdxl import SDXL_VAE, tiny_base

    tiny_base(seed=3).save_pretrained(tmp_path / "turbo")
    torch.manual_seed(42)
    fixed = AutoencoderKL(**{**SDXL_VAE, "force_upcast": False})
    fixed.save_pretrained(tmp_path / "vae-fix")
    (tmp_path / "models.yaml").write_text(
        "models:\n  t: {kind: turbo, source: ./turbo, vae: ./vae-fix, dtype: float32, device: cpu, "
        "channels_last: true, fuse_qkv: true, buckets: [[256, 256]]}\n")
    spec = load_catalog(tmp_path / "models.yaml").spec("t")
    assert spec.buckets == [(256, 256)] and spec.channels_last and spec.fuse_qkv
    model = load_model(spec)
    loaded = model.pipe.vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in fixed.state_dict().items() if k in loaded
               and "to_qkv" not in k and "to_kv" not in k)
    assert run(PIPELINES["turbo"](model), turbo_params()).images[0].size == (256, 256)
