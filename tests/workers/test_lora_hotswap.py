"""LoRAs on a compiled model (`compile: true`): they hot-swap into slots prepared before warm-up, so
switching LoRAs, scales, or going without never recompiles (diffusers #9279). Tested with the eager
backend (dynamo traces and guards exactly as with inductor, without generating code) and torch's
`fail_on_recompile` stance: any recompilation raises. For SDXL's UNet and SD 3's and FLUX's
transformers (`runner` per family: 64², 2 steps for the transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

from service.catalog import AdapterSpec, tiny_catalog
from tests.workers.harness import image, job, make_runner, pop_and_run, submit, turbo
from workers import tiny_adapters
from workers.lora_slots import SLOT_TARGETS

# family -> the task and model its tests run, its size bucket, what its jobs add, a layer no slot covers
FAMILIES = {
    "sdxl": ("turbo", "tiny-turbo", 256, {}, "conv1"),
    "sd3": ("txt2img", "tiny-sd3", 64, {"steps": 2, "guidance_scale": 3.5, "negative_prompt": "",
                                        "scheduler": "flow_euler"}, "linear_1"),
    "flux": ("txt2img", "tiny-flux", 64, {"steps": 2, "guidance_scale": 3.5, "scheduler": "flow_euler",
                                          "max_sequence_length": 512}, "linear_1"),  # as warmed up
}


@pytest.fixture(scope="module", params=FAMILIES)
def runner(request, module_server, tmp_path_factory):
    family = request.param
    task, model, size, _, uncovered = FAMILIES[family]
    folder = tmp_path_factory.mktemp("hotswap-loras")
    catalog = tiny_catalog()
    catalog.models[model] = catalog.models[model].model_copy(update={"compile": True, "compile_backend": "eager",
                                                                      "lora_rank": 8, "lora_slots": 2,
                                                                      "buckets": [(size, size)]})
    layers = {"a": dict(seed=301), "b": dict(seed=302, rank=8), "c": dict(seed=303, rank=2, text_encoders=False),
              "ff": dict(seed=304, unet_targets=("to_q", "ff.net.0.proj", "proj_out")),
              "too-wide": dict(seed=305, rank=16), "conv": dict(seed=306, unet_targets=(uncovered,))}
    for name, kw in layers.items():
        path = folder / f"{name}.safetensors"
        safetensors.torch.save_file(tiny_adapters.lora(**kw, family=family), str(path))
        catalog.adapters[name] = AdapterSpec(name=name, kind="lora", source=str(path), base=[family])
    r = make_runner(module_server.url, tmp_path_factory.mktemp("hotswap-data"), "hotswap-worker", catalog,
                    worker_tasks=[task], worker_models=[model],
                    worker_max_loras=4)  # the slots, not this, bound a compiled model's LoRAs
    r.runtime.warm_up()
    r.family = family
    yield r
    torch.compiler.set_stance("default")


def pixels(runner, redis, loras=()):
    task, model, size, extra, _ = FAMILIES[runner.family]
    job_id = submit(redis, task, model, {**turbo(9, size=size, prompt="a fox"), **extra, "loras": list(loras)})
    pop_and_run(runner, redis, task, model)
    record = job(redis, job_id)
    assert record["status"] == "succeeded", record.get("error")
    return image(runner.storage, job_id)


def lora(name, scale=1.0):
    return {"name": name, "scale": scale}


def test_switching_loras_never_recompiles(runner, module_redis):
    redis = module_redis
    loras = runner.runtime.models[FAMILIES[runner.family][1]].loras
    assert loras.slots == ["slot0", "slot1"]
    torch.compiler.set_stance("fail_on_recompile")  # a recompilation now raises, failing the job
    try:
        base = pixels(runner, redis)
        a = pixels(runner, redis, [lora("a")])
        b = pixels(runner, redis, [lora("b")])
        ab = pixels(runner, redis, [lora("a"), lora("b", 0.5)])
        c = pixels(runner, redis, [lora("c")])  # a third LoRA: swapped into the least recently used slot
        ff = pixels(runner, redis, [lora("ff")])  # other layers of the slots
        assert np.array_equal(pixels(runner, redis), base)
        assert np.array_equal(pixels(runner, redis, [lora("a")]), a)  # swapped back in: the same image
        assert np.array_equal(pixels(runner, redis, [lora("a", 0.0)]), base)
        images = [base, a, b, ab, c, ff]
        assert all(not np.array_equal(x, y) for i, x in enumerate(images) for y in images[i + 1:])
        assert len(loras.resident) <= 2
    finally:
        torch.compiler.set_stance("eager_on_recompile")


def test_hot_swapped_matches_the_eager_lora(runner, module_redis, tmp_path):
    """The image of a LoRA in a slot is the image of the same LoRA loaded the plain way, up to float
    rounding (the slot's weights are padded to its rank with zeros)."""
    task, model = FAMILIES[runner.family][:2]
    catalog = runner.runtime.catalog.model_copy(deep=True)
    catalog.models[model] = catalog.models[model].model_copy(update={"compile": False})
    eager = make_runner(runner.settings.redis_url, tmp_path, "eager-worker", catalog, worker_tasks=[task],
                        worker_models=[model])
    eager.family = runner.family
    assert not eager.runtime.models[model].loras.slots
    for name in ("a", "b"):
        compiled = pixels(runner, module_redis, [lora(name)])
        plain = pixels(eager, module_redis, [lora(name)])
        assert np.abs(compiled - plain).max() <= 2


@pytest.mark.parametrize("names, words", [(["too-wide"], "rank 16 is above the slots' rank 8"),
                                          (["conv"], "which the compiled model's LoRA slots do not cover"),
                                          (["a", "b", "c"], "more LoRAs than model {model} has LoRA slots (2")])
def test_a_lora_the_slots_cannot_take_fails_the_job(runner, module_redis, names, words):
    task, model, size, extra, _ = FAMILIES[runner.family]
    job_id = submit(module_redis, task, model, {**turbo(9, size=size), **extra,
                                                "loras": [lora(name) for name in names]})
    pop_and_run(runner, module_redis, task, model)
    record = job(module_redis, job_id)
    assert record["status"] == "failed" and record["error"]["code"] == "invalid_input"
    assert words.format(model=model) in record["error"]["message"]
    torch.compiler.set_stance("fail_on_recompile")
    try:
        pixels(runner, module_redis, [lora("a")])
    finally:
        torch.compiler.set_stance("eager_on_recompile")


def test_slots_cover_the_layers_loras_train():
    assert {"to_q", "to_k", "to_v", "to_out.0"} <= set(SLOT_TARGETS)
