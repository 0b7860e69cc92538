"""Quantized weights (`quantize:` in the models file, workers/quantize.py) on the tiny SD3 and FLUX models:
int8 (torchao, the one setting a CPU runs) turns the denoiser's and the T5's Linear weights into int8
tensors, and the task pipeline still makes an image, close to the unquantized one but not the same;
fp8 and nf4, which need CUDA, stop a CPU worker at start with one line before any weight loads; the
models file refuses values and combinations that cannot work; a LoRA on a quantized model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from service.catalog import ModelSpec, load_catalog
from service.settings import Settings
from workers import quantize
from workers.progress import Progress

pytest.importorskip("torchao", reason="torchao is the `quant` extra (make install puts it in)")

MODELS = {"q-sd3": "sd3", "q-flux": "flux"}  # quantized twin -> the tiny kind it twins


def _catalog(tmp_path, extra_models: dict | None = None, adapters: dict | None = None):
    models = {}
    for name, kind in MODELS.items():
        models[f"plain-{kind}"] = {"kind": kind, "source": "tiny", "device": "cpu"}
        models[name] = {"kind": kind, "source": "tiny", "device": "cpu", "quantize": "int8"}
    models.update(extra_models or {})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "adapters": adapters or {}}))
    return load_catalog(path)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    from workers.runtime import Runtime

    tmp = tmp_path_factory.mktemp("quantize")
    return Runtime(Settings(worker_tasks="txt2img", data_dir=tmp), _catalog(tmp)).load()


def _image(runtime, model: str, **params) -> np.ndarray:
    pipeline = runtime.pipeline("txt2img", model)
    spec = runtime.catalog.spec(model)
    p = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 3, "num_images": 1, "steps": 2,
         "width": 64, "height": 64, "scheduler": spec.kind_row.scheduler, **spec.defaults(), **params}
    p.update(width=64, height=64, steps=2)
    pipeline.use_adapters(p)
    with torch.inference_mode():
        out = pipeline.run_batch([p], Progress(lambda s: False, pipeline.plan(p)))
    return np.asarray(out[0].images[0], dtype=np.int16)


def _linear_weights(module) -> list:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_int8_quantizes_the_denoiser_and_t5_and_still_draws_close(runtime, model):
    from torchao.quantization import Int8Tensor

    loaded, plain = runtime.models[model], runtime.models[f"plain-{MODELS[model]}"]
    weights = _linear_weights(loaded.denoiser)
    assert weights and all(isinstance(w, Int8Tensor) and w.qdata.dtype == torch.int8 for w in weights)
    t5 = [getattr(loaded.pipe, n) for n in quantize.targets(type(loaded.pipe), "transformer")[1:]]
    assert len(t5) == 1 and all(isinstance(w, Int8Tensor) for w in _linear_weights(t5[0]))
    # CLIP and the VAE stay as they were; the unquantized twin is untouched.
    assert all(type(w) is torch.nn.Parameter for w in _linear_weights(loaded.pipe.text_encoder))
    assert all(type(w) is torch.nn.Parameter for w in _linear_weights(plain.denoiser))
    quantized, reference = _image(runtime, model), _image(runtime, f"plain-{MODELS[model]}")
    assert quantized.shape == reference.shape == (64, 64, 3)
    difference = np.abs(quantized - reference)
    assert difference.max() > 0, "int8 weights gave bit-identical pixels: nothing was quantized"
    assert difference.mean() < 3, f"int8 drifted {difference.mean():.2f} levels on average from bf16/fp32"


@pytest.mark.parametrize("setting", ["fp8", "nf4"])
def test_fp8_and_nf4_stop_a_cpu_worker_at_start_before_any_weight_loads(tmp_path, setting):
    from workers.runtime import Runtime

    # A source that does not exist: the refusal comes first, so nothing was read.
    catalog = _catalog(tmp_path, {"big": {"kind": "flux", "source": str(tmp_path / "nowhere"), "device": "cpu",
                                          "quantize": setting}})
    with pytest.raises(quantize.QuantizeUnavailable) as refused:
        Runtime(Settings(worker_tasks="txt2img", worker_models=["big"], data_dir=tmp_path), catalog).load()
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"model big: `quantize: {setting}` needs a CUDA GPU")
    assert message.endswith("the model runs on cpu")


def test_int8_without_torchao_is_refused_naming_it(monkeypatch):
    real = quantize.importlib.util.find_spec
    monkeypatch.setattr(quantize.importlib.util, "find_spec", lambda name: None if name == "torchao" else real(name))
    spec = ModelSpec(name="m", kind="sd3", source="tiny", quantize="int8")
    with pytest.raises(quantize.QuantizeUnavailable, match=r"model m: `quantize: int8` needs torchao .*; "
                                                           r"torchao is not installed"):
        quantize.check_host(spec, torch.device("cpu"))


@pytest.mark.parametrize("entry, words", [
    ({"kind": "flux", "source": "tiny", "quantize": "int4"}, "quantize"),
    ({"kind": "sd3", "source": "tiny", "quantize": "nf4", "memory": "minimal"}, "`quantize: nf4` cannot be "
                                                                                "combined with `memory: minimal`"),
    ({"kind": "sdxl", "source": "tiny", "quantize": "int8", "fuse_qkv": True}, "with `fuse_qkv`"),
    ({"kind": "svd", "source": "tiny", "quantize": "int8"}, "svd models take none"),
])
def test_the_models_file_refuses_what_cannot_work(entry, words):
    with pytest.raises(ValidationError) as refused:
        ModelSpec(name="m", **entry)
    assert words in str(refused.value) and ("model m:" in str(refused.value) or entry["quantize"] == "int4")


def test_int8_blocks_compile_in_one_graph():
    """`compile` with int8: each transformer block traces whole (fullgraph) through torchao's int8 tensors
    and gives the eager model's pixels. (The offload modes with int8, fp8 and nf4, and compile with fp8 and
    nf4, were run on an H200: all but nf4 with `memory: minimal` work, which the models file refuses.)"""
    from workers.models import load_model

    def pixels(**options):
        model = load_model(ModelSpec(name="m", kind="sd3", source="tiny", device="cpu", quantize="int8", **options))
        out = model.pipe(prompt="a fox", num_inference_steps=2, width=64, height=64, output_type="np",
                         generator=torch.Generator().manual_seed(0))
        return out.images

    assert np.abs(pixels(compile=True, compile_backend="eager") - pixels()).max() < 1e-5


def test_a_lora_on_an_int8_model_changes_the_image_and_leaves_no_residue(tmp_path):
    """No delta adds to int8 weights: a quantized denoiser keeps its LoRA layers on (workers/lora_merge.py
    ActiveLoras), and its weights are never written."""
    from safetensors.torch import save_file

    from workers import tiny_adapters
    from workers.runtime import Runtime

    save_file(tiny_adapters.lora(31, family="sd"), str(tmp_path / "sd-style.safetensors"))
    catalog = _catalog(tmp_path, {"q-sd": {"kind": "sd", "source": "tiny", "device": "cpu", "quantize": "int8"}},
                       {"sd-style": {"kind": "lora", "source": "sd-style.safetensors", "base": "sd"}})
    runtime = Runtime(Settings(worker_tasks="txt2img", worker_models=["q-sd"], data_dir=tmp_path), catalog).load()
    lora = [{"name": "sd-style", "scale": 1.0}]
    plain = _image(runtime, "q-sd", guidance_scale=7.5, scheduler="euler")
    styled = _image(runtime, "q-sd", guidance_scale=7.5, scheduler="euler", loras=lora)
    assert (styled != plain).mean() > 0.1
    assert (_image(runtime, "q-sd", guidance_scale=7.5, scheduler="euler") == plain).all()
