"""LoRAs and embeddings in the worker, in-process on a real Redis with the tiny pipelines and tiny
LoRAs made here with PEFT, in both layouts: scale 0 is the base image, no residue from one job to the
next, the same pixels alone and in a batch, LRU residency, digests in the job's params, the
`adapters` stage, a file that is not a LoRA for the model, embeddings by their token. What holds for
every family (a LoRA changes the image, scale 0 and no residue, kohya equals PEFT, a LoRA of another
family refused, a resident LoRA costs nothing) runs for SDXL, SD 3 and FLUX.1 (`family`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import safetensors.torch
import torch

from service.catalog import AdapterSpec, tiny_catalog
from service.jobs import keys
from service.jobs.states import Stage
from tests.workers.harness import image, job, make_runner, pop_and_run, same_pixels, submit, turbo
from workers import metrics, tiny_adapters

TASK, MODEL = "turbo", "tiny-turbo"
# family -> the task and model its tests run, what their jobs add (the transformers': 64², 2 steps, their
# defaults), the family its `wrong` LoRA was made for, whether diffusers reads its LoRAs in kohya's layout.
FAMILIES = {
    "sdxl": (TASK, MODEL, {}, "flux", True),
    "sd3": ("txt2img", "tiny-sd3", {"width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5,
                                    "negative_prompt": "", "scheduler": "flow_euler"}, "flux", False),
    "flux": ("txt2img", "tiny-flux", {"width": 64, "height": 64, "steps": 2, "guidance_scale": 3.5,
                                      "scheduler": "flow_euler", "max_sequence_length": 64}, "sd3", True),
}


def lora_file(folder, name, seed, layout="peft", **kw):
    path = folder / f"{name}.safetensors"
    safetensors.torch.save_file(tiny_adapters.lora(seed, layout, **kw), str(path))
    return path


def catalog_with(**files):
    """`files`' LoRAs, each for the family its name begins with (`flux/a`), else SDXL."""
    catalog = tiny_catalog()
    for name, path in files.items():
        family = name.split("/")[0] if "/" in name else "sdxl"
        catalog.adapters[name] = AdapterSpec(name=name, kind="lora", source=str(path), base=[family])
    return catalog


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    out = {"a": lora_file(folder, "a", 101), "a-kohya": lora_file(folder, "a-kohya", 101, "kohya"),
           "b": lora_file(folder, "b", 102), "unet-only": lora_file(folder, "unet-only", 105, text_encoders=False)}
    for i in range(5):
        out[f"c{i}"] = lora_file(folder, f"c{i}", 200 + i, rank=2)
    # Made for another architecture: the same layer names, other widths.
    wrong = {k: v[:, :2].contiguous() if v.dim() == 2 and v.shape[1] > 2 else v
             for k, v in tiny_adapters.lora(103).items()}
    out["wrong"] = folder / "wrong.safetensors"
    safetensors.torch.save_file(wrong, str(out["wrong"]))
    # Nothing in it matches the model.
    out["alien"] = folder / "alien.safetensors"
    safetensors.torch.save_file({"transformer.blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 4),
                                 "transformer.blocks.0.attn.to_q.lora_B.weight": torch.zeros(4, 2)},
                                str(out["alien"]))
    # Each family's: `<family>/a` and `b`, `a` in kohya's layout where diffusers reads it, and `wrong`: a
    # LoRA made for another family, which the models file says is for this one. SDXL's are those above.
    for family, (_, _, _, other, kohya) in FAMILIES.items():
        at = "" if family == "sdxl" else family + "/"
        folder.joinpath(family).mkdir()
        if at:
            out[at + "a"] = lora_file(folder, f"{family}/a", 101, family=family)
            out[at + "b"] = lora_file(folder, f"{family}/b", 102, family=family)
            if kohya:
                out[at + "a-kohya"] = lora_file(folder, f"{family}/a-kohya", 101, "kohya", family=family)
        out[at + "wrong-family"] = lora_file(folder, f"{family}/wrong-family", 106, "kohya" if kohya else "peft",
                                             family=other)
    return out


@pytest.fixture(scope="module")
def runner(module_server, tmp_path_factory, files):
    return make_runner(module_server.url, tmp_path_factory.mktemp("lora-data"), "lora-test-worker",
                       catalog_with(**files), worker_tasks=["turbo", "img2img", "sdxl", "txt2img"],
                       worker_models=[MODEL, "tiny-sdxl", "tiny-sd3", "tiny-flux"], worker_max_loras=3,
                       worker_batch_size=4)


@pytest.fixture
def redis(module_redis, runner):
    runner.batching.size = 1
    yield module_redis
    runner.batching.size = 1


def run(runner, redis, loras=(), seed=7, task=TASK, model=MODEL, family=None, **params):
    """A job on `model`, or on `family`'s model (FAMILIES) with its LoRAs' names (`a`: `flux/a`)."""
    if family is not None:
        task, model, extra, _, _ = FAMILIES[family]
        params = {**extra, **params}
        if family != "sdxl":
            loras = [{**entry, "name": f"{family}/{entry['name']}"} for entry in loras]
    job_id = submit(redis, task, model, {**turbo(seed, prompt=params.pop("prompt", "a fox")), **params,
                                         "loras": [dict(entry) for entry in loras]})
    pop_and_run(runner, redis, task, model)
    return job_id


def pixels(runner, redis, loras=(), **kw):
    job_id = run(runner, redis, loras, **kw)
    assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
    return image(runner.storage, job_id)


def lora(name, scale=1.0):
    return {"name": name, "scale": scale}


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_zero_is_the_base_image_and_scale_one_changes_it(runner, redis, family):
    base = pixels(runner, redis, family=family)
    assert np.array_equal(pixels(runner, redis, [lora("a", 0.0)], family=family), base)
    assert not np.array_equal(pixels(runner, redis, [lora("a", 1.0)], family=family), base)


def own_weights(runner, family) -> dict:
    """The family's model's denoiser weights (the LoRA layers' base layers included), copied."""
    model = runner.runtime.models[FAMILIES[family][1]]
    return {k.replace(".base_layer", ""): v.clone() for k, v in model.denoiser.state_dict().items()
            if "lora_" not in k}


@pytest.mark.parametrize("family", FAMILIES)
def test_no_residue(runner, redis, family):
    base = pixels(runner, redis, family=family)
    weights = own_weights(runner, family)
    a = pixels(runner, redis, [lora("a")], family=family)
    assert np.array_equal(pixels(runner, redis, family=family), base)  # the LoRA is gone from the next job
    b = pixels(runner, redis, [lora("b")], family=family)
    assert np.array_equal(pixels(runner, redis, [lora("a")], family=family), a)  # A after B is A alone
    ab = pixels(runner, redis, [lora("a"), lora("b")], family=family)
    assert not np.array_equal(ab, a) and not np.array_equal(ab, b) and not np.array_equal(a, b)
    assert np.array_equal(pixels(runner, redis, family=family), base)
    after = own_weights(runner, family)  # the denoiser's own weights, bit for bit
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    # Scales change the image and come back.
    half = pixels(runner, redis, [lora("a", 0.5)], family=family)
    assert not np.array_equal(half, a)
    assert np.array_equal(pixels(runner, redis, [lora("a")], family=family), a)


@pytest.mark.parametrize("family", [f for f, row in FAMILIES.items() if row[4]])
def test_kohya_layout_is_the_same_lora(runner, redis, family):
    assert np.array_equal(pixels(runner, redis, [lora("a-kohya")], family=family),
                          pixels(runner, redis, [lora("a")], family=family))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_resident_lora_costs_a_job_nothing(runner, redis, family):
    """Merged into the denoiser's weights: its LoRA layers stay off, so a job runs the base arithmetic."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    pixels(runner, redis, [lora("a")], family=family)
    denoiser = runner.runtime.models[FAMILIES[family][1]].denoiser
    layers = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(m.disable_adapters for m in layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_of_another_family_is_refused(runner, redis, family):
    task, model, _, other, _ = FAMILIES[family]
    base = pixels(runner, redis, family=family)
    record = job(redis, run(runner, redis, [lora("wrong-family")], family=family))
    assert record["status"] == "failed" and record["error"]["code"] == "invalid_input"
    name = "wrong-family" if family == "sdxl" else f"{family}/wrong-family"
    assert record["error"]["message"] == (f"adapter {name} is a LoRA for {other} models, by its layer names; "
                                          f"model {model} is a {family} model")
    assert np.array_equal(pixels(runner, redis, family=family), base)


def test_params_report_digests_and_scales(runner, redis, files):
    job_id = run(runner, redis, [lora("a", 0.7), lora("b", -1.0)])
    params = job(redis, job_id)["params"]
    assert params["loras"] == [
        {"name": "a", "scale": 0.7, "digest": "sha256:" + hashlib.sha256(files["a"].read_bytes()).hexdigest()},
        {"name": "b", "scale": -1.0, "digest": "sha256:" + hashlib.sha256(files["b"].read_bytes()).hexdigest()}]
    assert job(redis, run(runner, redis))["params"]["loras"] == []


def test_img2img_shares_the_base_adapters(runner, redis):
    from PIL import Image

    def img2img(loras):
        job_id = submit(redis, "img2img", MODEL, {**turbo(3), "strength": 0.5, "steps": 2, "scheduler": "turbo",
                                                  "loras": loras, "image": {"name": "input.png", "width": 256,
                                                                            "height": 256}})
        import io

        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (90, 140, 200)).save(buf, "PNG")
        runner.storage.put(job_id, "input.png", buf.getvalue())
        pop_and_run(runner, redis, "img2img", MODEL)
        assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
        return image(runner.storage, job_id)

    base = img2img([])
    with_a = img2img([lora("a")])
    assert not np.array_equal(with_a, base)
    pixels(runner, redis, [lora("b")])  # turbo, on the same modules
    assert np.array_equal(img2img([]), base)
    assert np.array_equal(img2img([lora("a")]), with_a)


def test_same_pixels_alone_and_in_a_batch(runner, redis):
    alone = [pixels(runner, redis, [lora("a", 0.8)], seed=s) for s in (1, 2, 3)]
    runner.batching.size = 4
    ids = [submit(redis, TASK, MODEL, {**turbo(s, prompt="a fox"), "loras": [lora("a", 0.8)]}) for s in (1, 2, 3)]
    other = submit(redis, TASK, MODEL, {**turbo(4, prompt="a fox"), "loras": [lora("b", 0.8)]})
    before = metrics.BATCH_SIZE.labels(TASK)._sum.get()
    pop_and_run(runner, redis, TASK, MODEL)
    assert metrics.BATCH_SIZE.labels(TASK)._sum.get() - before == 3  # not the job with other LoRAs
    for job_id, expected in zip(ids, alone):
        assert same_pixels(image(runner.storage, job_id), expected)
    assert redis.llen(keys.rq_queue(TASK, MODEL)) == 1
    pop_and_run(runner, redis, TASK, MODEL)
    assert job(redis, other)["status"] == "succeeded"


def test_least_recently_used_leave(runner, redis):
    loras = runner.runtime.models[MODEL].loras
    for i in range(5):
        pixels(runner, redis, [lora(f"c{i}")])
        assert len(loras.resident) <= 3
        adapters = loras.pipe.get_list_adapters()
        assert all(len(names) <= 3 for names in adapters.values()), adapters
    assert [r.label for r in loras.resident.values()] == ["adapter c2", "adapter c3", "adapter c4"]
    loads = metrics.ADAPTER_LOADS.labels(MODEL)._value.get()
    pixels(runner, redis, [lora("c3")])  # resident: no load, and now the most recently used
    assert metrics.ADAPTER_LOADS.labels(MODEL)._value.get() == loads
    pixels(runner, redis, [lora("c0")])
    assert [r.label for r in loras.resident.values()] == ["adapter c4", "adapter c3", "adapter c0"]
    assert metrics.ADAPTERS_RESIDENT.labels(MODEL)._value.get() == 3


def test_a_cold_load_shows_the_adapters_stage(runner, redis, monkeypatch):
    stages = []
    report = runner.report
    monkeypatch.setattr(runner, "report", lambda batch, state, progress=None:
                        stages.append(state["stage"]) or report(batch, state, progress))
    pixels(runner, redis, [lora("c1")])  # evicted above, or never loaded: cold
    assert stages[0] == Stage.ADAPTERS and Stage.DENOISE in stages
    stages.clear()
    pixels(runner, redis, [lora("c1")])  # resident now
    assert Stage.ADAPTERS not in stages


@pytest.mark.parametrize("name, words", [("wrong", "is not a LoRA for model tiny-turbo"),
                                         ("alien", "is not a LoRA for model tiny-turbo")])
def test_a_file_that_is_no_lora_for_the_model_fails_the_job(runner, redis, name, words):
    base = pixels(runner, redis)
    job_id = run(runner, redis, [lora(name)])
    record = job(redis, job_id)
    assert record["status"] == "failed"
    assert record["error"]["code"] == "invalid_input"
    assert words in record["error"]["message"]
    adapters = runner.runtime.models[MODEL].loras.pipe.get_list_adapters()
    assert all(len(names) <= 3 for names in adapters.values())
    assert np.array_equal(pixels(runner, redis), base)
    pixels(runner, redis, [lora("a")])  # and LoRAs still work


def test_embedding_token_in_the_prompt(runner, redis):
    plain = pixels(runner, redis, prompt="a <tiny-cat> on a mat")
    pipe = runner.runtime.models[MODEL].pipe
    assert "<tiny-cat>" in pipe.tokenizer.get_vocab() and "<tiny-cat>" in pipe.tokenizer_2.get_vocab()
    other = pixels(runner, redis, prompt="a tiny-cat on a mat")
    assert not np.array_equal(plain, other)


def test_the_refiner_gets_no_base_lora(runner, redis, monkeypatch):
    from diffusers.loaders import lora_base

    model = runner.runtime.models["tiny-sdxl"]
    seen = []
    refiner_call = type(model.refiner).__call__

    def spy(self, *args, **kwargs):
        seen.append([m.disable_adapters for m in model.refiner.text_encoder_2.modules()
                     if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")])
        return refiner_call(self, *args, **kwargs)

    monkeypatch.setattr(type(model.refiner), "__call__", spy)
    job_id = submit(redis, "sdxl", "tiny-sdxl", {**turbo(5), "steps": 4, "guidance_scale": 5.0, "negative_prompt": "",
                                                 "scheduler": "euler", "refiner": True, "refiner_switch": 0.5,
                                                 "loras": [lora("a")]})
    pop_and_run(runner, redis, "sdxl", "tiny-sdxl")
    assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
    assert seen and seen[0] and all(seen[0])  # every LoRA layer of the shared encoder off in the refiner
    assert not any(m.disable_adapters for m in model.pipe.text_encoder_2.modules()
                   if hasattr(m, "disable_adapters") and hasattr(m, "lora_A"))  # and back on for the base
    assert lora_base  # imported: the helpers the worker uses exist in this diffusers


def test_a_job_with_more_loras_than_the_capacity_runs(runner, redis):
    loras = runner.runtime.models[MODEL].loras
    names = ["c0", "c1", "c2", "a"]
    job_id = run(runner, redis, [lora(n, 0.3) for n in names])
    assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
    assert len(loras.resident) == 4  # all four for this job...
    pixels(runner, redis, [lora("b")])
    assert len(loras.resident) == 3  # ...back to the capacity with the next load


def test_the_refiner_leaves_the_shared_encoder_as_the_job_set_it(runner, redis):
    """A job whose LoRA has no text-encoder part runs with the encoders' LoRA layers off; the refiner's
    turning them off and on again must leave them off, or the next such job would get another LoRA's
    text-encoder part."""
    def sdxl(loras):
        job_id = submit(redis, "sdxl", "tiny-sdxl", {**turbo(6), "steps": 4, "guidance_scale": 5.0,
                                                     "negative_prompt": "", "scheduler": "euler", "refiner": True,
                                                     "refiner_switch": 0.5, "loras": loras})
        pop_and_run(runner, redis, "sdxl", "tiny-sdxl")
        assert job(redis, job_id)["status"] == "succeeded", job(redis, job_id)
        return image(runner.storage, job_id)

    sdxl([lora("b")])  # b's text-encoder part, resident in the shared encoder
    first = sdxl([lora("unet-only")])
    assert np.array_equal(sdxl([lora("unet-only")]), first)
