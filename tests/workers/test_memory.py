"""The models file's `memory:` modes (workers/memory.py), on the CPU at tiny scale: each offload mode gives
the default mode's image, for SD, the SDXL base + refiner pair (which share the VAE and second text
encoder), and img2img / ControlNet pipelines built with `from_pipe` on an offloaded base; and each mode is
really on (its hooks are on every module, the VAE tiles).

Tolerance: 0, bit-identical float images. Offloading moves weights, it does not change the arithmetic;
on the CPU the onload and offload devices are the same, so every layer runs the same kernel on the same
tensors as in the default mode. Any difference, even far below one 8-bit level (1/255), would mean a
layer ran with other weights or in another dtype, which is the bug these tests are for. (At sizes above
the minimal mode's VAE tile, `memory.TILE`, its tiled decode does change pixels, and where a VAE decodes
a batch its one-image-at-a-time decode rounds differently: `SLICED_ATOL`, see the SVD test. The images
here are single 64² images, below the tile, as the tiling test checks.)

Every mode gets freshly built pipelines: the same seed gives the same weights. Their weights are frozen
first, as a worker freezes them at load (workers/models.py `freeze`): balanced mode's hook copies each
weight to the execution device inside the job's inference mode (on the CPU too: `cpu:0` is another device
to `.to()`), and the CPU's matmul takes a differently rounded path for an inference tensor than for a
weight that requires grad (about 3e-6 here), the same path it takes for a frozen weight.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload
from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLImg2ImgPipeline
from diffusers.hooks.group_offloading import GroupOffloadingType
from PIL import Image

from workers import tiny
from workers.families.sd import tiny_sd
from workers.families.sdxl import tiny_base, tiny_refiner
from workers.families.svd import tiny_svd
from workers.memory import TILE, apply_memory, offload_mode

CPU = torch.device("cpu")
OFFLOAD_MODES = ("balanced", "minimal")
SIZE, STEPS = 64, 2
SLICED_ATOL = 1e-4  # where the minimal mode's VAE decodes a batch one image at a time (see the SVD test)
LEAVES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)


def call(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        return pipe(**{"prompt": "a lighthouse", "width": SIZE, "height": SIZE, "num_inference_steps": STEPS,
                       "output_type": "np", "generator": torch.Generator().manual_seed(0), **kwargs}).images


def frozen(pipe):
    for module in modules(pipe).values():
        module.requires_grad_(False)
    return pipe


def sd_image(mode: str):
    pipe = frozen(tiny_sd())
    apply_memory(pipe, mode, CPU)
    return pipe, call(pipe)


def frozen_controlnet(base):
    return tiny.controlnet(base.unet, seed=7).requires_grad_(False)


def sdxl_images(mode: str) -> tuple[dict, dict]:
    """The base + refiner job, then img2img and ControlNet pipelines made with from_pipe on the base."""
    base = frozen(tiny_base())
    refiner = frozen(tiny_refiner(base))
    apply_memory(base, mode, CPU)
    apply_memory(refiner, mode, CPU)
    latents = call(base, denoising_end=0.5, output_type="latent")
    images = {"refined": call(refiner, image=latents, denoising_start=0.5)}
    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(base, dtype=torch.float32)
    inherited = offload_mode(img2img)  # before apply_memory: from_pipe kept the base's hooks
    apply_memory(img2img, mode, CPU)
    start = Image.fromarray((images["refined"][0] * 255).round().astype(np.uint8))
    images["img2img"] = call(img2img, image=start, strength=0.6)
    controlnet = StableDiffusionXLControlNetPipeline.from_pipe(base, controlnet=frozen_controlnet(base),
                                                               dtype=torch.float32)
    apply_memory(controlnet, mode, CPU)
    images["controlnet"] = call(controlnet, image=start, controlnet_conditioning_scale=0.8)
    return images, {"base": base, "refiner": refiner, "img2img": img2img, "controlnet": controlnet,
                    "inherited": inherited}


@pytest.fixture(scope="module")
def default_sd():
    return sd_image("default")[1]


@pytest.fixture(scope="module")
def default_sdxl():
    return sdxl_images("default")[0]


def modules(pipe):
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def assert_mode_on(pipe, mode: str) -> None:
    """Every module of `pipe` carries `mode`'s hooks."""
    assert offload_mode(pipe) == mode
    for name, module in modules(pipe).items():
        if mode == "balanced":
            hook = getattr(module, "_hf_hook", None)
            assert isinstance(hook, CpuOffload), name
            assert torch.device(hook.execution_device).type == "cpu"
        else:
            leaves = [m for m in module.modules() if isinstance(m, LEAVES)]
            assert leaves, name
            for leaf in leaves:
                hook = leaf._diffusers_hook.get_hook("group_offloading")
                assert hook is not None, f"{name}: {leaf}"
                assert hook.config.offload_type == GroupOffloadingType.LEAF_LEVEL
                assert hook.config.onload_device == CPU and hook.config.stream is None  # no streams on a CPU
    if mode == "balanced":
        assert len(pipe._all_hooks) == len(modules(pipe))
    vae = getattr(pipe, "vae", None)
    if mode == "minimal" and vae is not None:
        assert vae.use_tiling and vae.use_slicing and vae.tile_sample_min_size <= TILE


def assert_same(image, reference, atol: float = 0.0) -> None:
    assert image.shape == reference.shape
    assert np.abs(image - reference).max() <= atol


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_sd_same_image(mode, default_sd):
    pipe, image = sd_image(mode)
    assert_mode_on(pipe, mode)
    assert_same(image, default_sd)
    assert_mode_on(pipe, mode)  # still on after a call (balanced re-installs its hooks at the end of each)


@pytest.mark.parametrize("mode", OFFLOAD_MODES)
def test_sdxl_refiner_and_from_pipe_same_images(mode, default_sdxl):
    images, pipes = sdxl_images(mode)
    for name in ("refined", "img2img", "controlnet"):
        assert_same(images[name], default_sdxl[name])
    base, refiner = pipes["base"], pipes["refiner"]
    assert refiner.vae is base.vae and refiner.text_encoder_2 is base.text_encoder_2
    assert pipes["inherited"] == mode  # from_pipe keeps the hooks: they live on the modules
    for name in ("base", "refiner", "img2img", "controlnet"):
        assert_mode_on(pipes[name], mode)


def test_minimal_offloads_a_shared_module_once():
    """The refiner's apply_memory leaves the base's hooks on the shared VAE and text encoder in place and
    offloads only its own UNet; a ControlNet from_pipe brings is offloaded by its pipeline's apply_memory."""
    base = tiny_base()
    apply_memory(base, "minimal", CPU)
    leaf = base.vae.decoder.conv_in
    hook = leaf._diffusers_hook.get_hook("group_offloading")
    refiner = tiny_refiner(base)
    assert offload_mode(refiner) == "minimal"  # through the shared modules, before its own apply
    apply_memory(refiner, "minimal", CPU)
    assert leaf._diffusers_hook.get_hook("group_offloading") is hook
    assert_mode_on(refiner, "minimal")
    controlnet = StableDiffusionXLControlNetPipeline.from_pipe(base, controlnet=tiny.controlnet(base.unet, seed=7),
                                                               dtype=torch.float32)
    assert not hasattr(controlnet.controlnet.conv_in, "_diffusers_hook")
    apply_memory(controlnet, "minimal", CPU)
    assert_mode_on(controlnet, "minimal")


def test_minimal_tiles_the_vae_above_the_tile_only():
    pipe = tiny_base()
    assert pipe.vae.tile_sample_min_size == 1024  # the SDXL VAE's own: no tiling at 1024²
    apply_memory(pipe, "minimal", CPU)
    assert pipe.vae.tile_sample_min_size == TILE == 512 and pipe.vae.tile_latent_min_size == 64
    assert SIZE <= TILE  # the images compared above are decoded in one tile


def test_svd_minimal_same_frames_within_slicing_rounding():
    """SVD decodes its frames in chunks (`decode_chunk_size` 2 here); the minimal mode's sliced VAE decodes a
    chunk one frame at a time, and a convolution over one frame rounds differently from one over two
    (1.4e-5 measured; bit-identical with slicing off or chunks of 1). `SLICED_ATOL` is 1/40 of an 8-bit
    level: the delivered frames are the same bytes but for rare off-by-one pixels, while a layer run with
    wrong weights or dtype moves pixels by 1e-2 and more."""
    def frames(mode):
        pipe = frozen(tiny_svd())
        apply_memory(pipe, mode, CPU)
        pipe.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            return pipe, np.asarray(pipe(image=Image.new("RGB", (128, 64), (120, 90, 60)), width=128, height=64,
                                         num_frames=2, num_inference_steps=2, decode_chunk_size=2, output_type="np",
                                         generator=torch.Generator().manual_seed(0)).frames)

    pipe, out = frames("minimal")
    assert_mode_on(pipe, "minimal")
    assert_same(out, frames("default")[1], atol=SLICED_ATOL)


def test_modes_cannot_be_undone_or_mixed():
    pipe = tiny_sd()
    apply_memory(pipe, "minimal", CPU)
    with pytest.raises(ValueError, match="fresh pipeline"):
        apply_memory(pipe, "default", CPU)
    with pytest.raises(ValueError, match="cannot also"):
        apply_memory(pipe, "balanced", CPU)
    with pytest.raises(ValueError, match="unknown memory mode"):
        apply_memory(tiny_sd(), "low", CPU)
    compiled = tiny_sd()
    compiled.unet.up_blocks[0].attentions[0].transformer_blocks[0].compile(fullgraph=True, backend="eager")
    with pytest.raises(ValueError, match="compiled modules \\(unet\\)"):  # fullgraph cannot trace the hooks
        apply_memory(compiled, "minimal", CPU)


@pytest.mark.parametrize("mode", ["balanced", "minimal"])
def test_a_models_file_memory_mode_through_the_worker_same_images(mode, tmp_path):
    """`memory:` per model, as a worker loads it: the model, its img2img and its ControlNet pipelines all
    offloaded (the ControlNet too), the images those of the default mode."""
    from PIL import Image

    from service.catalog import Catalog
    from service.settings import Settings
    from workers.pipelines.base import input_image
    from workers.memory import offload_mode
    from workers.progress import Progress
    from workers.runtime import Runtime

    def runtime(memory):
        catalog = Catalog(models={"m": {"kind": "sd", "source": "tiny", "memory": memory}},
                          controlnets={"c": {"kind": "canny", "source": "tiny", "base": "sd"}})
        return Runtime(Settings(worker_tasks="txt2img,img2img", data_dir=tmp_path), catalog).load()

    edges = Image.effect_mandelbrot((64, 64), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    control = [{"model": "c", "kind": "canny", "scale": 1.0, "start": 0.0, "end": 1.0, "preprocess": "canny",
                "image": input_image(edges, "control-0.png")}]
    jobs = [("txt2img", {}), ("txt2img", {"control": control}),
            ("img2img", {"strength": 0.5, "control": control, "image": input_image(edges)})]

    def images(rt):
        out = []
        for task, extra in jobs:
            p = {"prompt": "a cat", "negative_prompt": "", "seed": 1, "num_images": 1, "steps": 2, "width": 64,
                 "height": 64, "guidance_scale": 7.5, "scheduler": "euler", **extra}
            pipeline = rt.pipeline(task, "m")
            with torch.inference_mode():
                result = pipeline.run_batch([p], Progress(lambda s: False, pipeline.plan(p)))
            out.append(np.asarray(result[0].images[0]))
        return out

    reference, offloaded = runtime("default"), runtime(mode)
    model = offloaded.models["m"]
    assert offload_mode(model.pipe) == mode and offload_mode(model.img2img()) == mode
    assert all(offload_mode(pipe) == mode for pipe in model.controls.pipes.values())
    assert model.loras is None if mode == "minimal" else model.loras is not None  # minimal takes no adapters
    for a, b in zip(images(reference), images(offloaded)):
        assert (a == b).all()
