"""A LoRA's text-encoder part applies on its own: a LoRA that trains the text encoders only (no denoiser
layer at all), in the PEFT and kohya layouts, changes the image against the same seed without it, and
the same seed without it is the base image again (its layers are off, not left on). For every family
whose LoRAs train text encoders: SD 1.x (CLIP-L), SDXL (CLIP-L and OpenCLIP-G), SD 3 (both CLIPs),
FLUX.1 (CLIP-L)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch

from service.catalog import AdapterSpec, tiny_catalog
from tests.workers.harness import image, job, make_runner, pop_and_run, submit, turbo
from workers import tiny_adapters

# family -> its model, the task that runs it, what its jobs add, whether diffusers reads kohya's layout for it
FAMILIES = {
    "sd": ("tiny-sd", "txt2img", {"width": 64, "height": 64, "steps": 2, "guidance_scale": 5.0, "scheduler": "euler",
                                  "negative_prompt": ""}, True),
    "sdxl": ("tiny-turbo", "turbo", {}, True),
    "sd3": ("tiny-sd3", "txt2img", {"width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5,
                                    "negative_prompt": "", "scheduler": "flow_euler"}, False),
    "flux": ("tiny-flux", "txt2img", {"width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5,
                                      "scheduler": "flow_euler", "max_sequence_length": 64}, True),
}
# The families with two text encoders: each one's part alone changes the image.
ENCODERS = {"sdxl": ("text_encoder", "text_encoder_2"), "sd3": ("text_encoder", "text_encoder_2")}


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("te-loras")
    catalog = tiny_catalog()
    for family, (_, _, _, kohya) in FAMILIES.items():
        for layout in ("peft", "kohya") if kohya else ("peft",):
            name = f"{family}-te-{layout}"
            path = folder / f"{name}.safetensors"
            state = tiny_adapters.lora(301, layout, family=family, denoiser=False, std=1.0)
            assert state and all("unet" not in k and "transformer" not in k for k in state)
            safetensors.torch.save_file(state, str(path))
            catalog.adapters[name] = AdapterSpec(name=name, kind="lora", source=str(path), base=[family])
        if encoders := ENCODERS.get(family):  # each text encoder's part alone, too (PEFT's names)
            state = tiny_adapters.lora(301, "peft", family=family, denoiser=False, std=1.0)
            for encoder in encoders:
                path = folder / f"{family}-{encoder}.safetensors"
                safetensors.torch.save_file({k: v for k, v in state.items() if k.startswith(encoder + ".")},
                                            str(path))
                catalog.adapters[f"{family}-{encoder}"] = AdapterSpec(name=f"{family}-{encoder}", kind="lora",
                                                                      source=str(path), base=[family])
    return make_runner(module_server.url, tmp_path_factory.mktemp("te-lora-data"), "te-lora-worker", catalog,
                       worker_tasks=["turbo", "txt2img"], worker_models=[m for m, *_ in FAMILIES.values()])


def pixels(runner, redis, family: str, loras=()) -> np.ndarray:
    model, task, extra, _ = FAMILIES[family]
    job_id = submit(redis, task, model, {**turbo(7, prompt="a fox in the snow"), **extra,
                                         "loras": [{"name": name, "scale": 1.0} for name in loras]})
    pop_and_run(runner, redis, task, model)
    record = job(redis, job_id)
    assert record["status"] == "succeeded", record
    return image(runner.storage, job_id)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_text_encoder_only_lora_changes_the_image(runner, module_redis, family):
    base = pixels(runner, module_redis, family)
    assert np.array_equal(pixels(runner, module_redis, family), base)  # same seed, no LoRA: the same image
    layouts = ("peft", "kohya") if FAMILIES[family][3] else ("peft",)
    with_lora = {layout: pixels(runner, module_redis, family, [f"{family}-te-{layout}"]) for layout in layouts}
    for layout, got in with_lora.items():
        assert not np.array_equal(got, base), f"the {layout} text-encoder LoRA left the image as it was"
    if len(with_lora) == 2:  # one LoRA, two layouts: the same pixels
        assert np.array_equal(with_lora["peft"], with_lora["kohya"])
    for encoder in ENCODERS.get(family, ()):
        alone = pixels(runner, module_redis, family, [f"{family}-{encoder}"])
        assert not np.array_equal(alone, base), f"the LoRA's {encoder} part left the image as it was"
        assert not np.array_equal(alone, with_lora["peft"])  # the other encoder's part counts too
    assert np.array_equal(pixels(runner, module_redis, family), base)  # and off again after it
