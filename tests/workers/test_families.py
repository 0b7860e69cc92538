"""Model families through `load_model`: SD 1.x/2.x directories (the scheduler config decides v-prediction),
PAI-Diffusion-style Chinese models (BERT tokenizer, pickled weights only with `trust_pickle`, or after
`fresco convert`), single-file checkpoints with `config`, and a worker that loads only the models
FRESCO_WORKER_MODELS names."""

from __future__ import annotations

import pytest
import torch

from service.catalog import Catalog, ModelSpec
from service.settings import Settings
from tests.workers import model_dirs
from workers.models import load_model, make_scheduler
from workers.pipelines.base import prompt_warnings


def cpu(**fields) -> ModelSpec:
    return ModelSpec(**{"name": "m", "dtype": "float32", "device": "cpu", **fields})


def pixels(pipe, prompt="a cat", seed=3):
    return pipe(prompt, num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(seed),
                output_type="np").images[0]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {"sd": model_dirs.save_sd(root / "sd"), "pai": model_dirs.save_pai(root / "pai"),
            "v": model_dirs.save_sd(root / "v", prediction_type="v_prediction"), "root": root}


def test_sd_directory_loads_as_an_sd_pipeline(dirs):
    model = load_model(cpu(kind="sd", source=str(dirs["sd"])))
    assert type(model.pipe).__name__ == "StableDiffusionPipeline" and model.pipe.safety_checker is None
    assert model.spec.size == (512, 512)  # the UNet's sample size 64 × the VAE's 8
    from workers.families.sd import tiny_sd

    assert (pixels(model.pipe) == pixels(tiny_sd())).all()
    assert type(model.img2img()).__name__ == "StableDiffusionImg2ImgPipeline"
    assert model.img2img().unet is model.pipe.unet


def test_v_prediction_comes_from_the_scheduler_config(dirs):
    model = load_model(cpu(kind="sd", source=str(dirs["v"])))
    for name in ("euler", "dpmpp_2m", "ddim"):
        assert make_scheduler(name, model.scheduler_config).config.prediction_type == "v_prediction"
    plain = load_model(cpu(kind="sd", source=str(dirs["sd"])))
    assert make_scheduler("euler", plain.scheduler_config).config.prediction_type == "epsilon"


def test_pickled_weights_are_refused_without_trust_pickle(dirs):
    with pytest.raises(ValueError, match="trust_pickle: true") as caught:
        load_model(cpu(kind="sd", source=str(dirs["pai"])))
    assert "fresco convert" in str(caught.value) and "text_encoder" in str(caught.value)


def test_pai_model_runs_chinese_prompts_with_its_bert_tokenizer(dirs):
    model = load_model(cpu(kind="sd", source=str(dirs["pai"]), trust_pickle=True))
    assert type(model.pipe.tokenizer).__name__ == "BertTokenizer"
    assert model.pipe.tokenizer.tokenize("一只猫") == ["一", "只", "猫"]
    from workers.families.sd import tiny_pai

    assert (pixels(model.pipe, "一只猫在草地上") == pixels(tiny_pai(), "一只猫在草地上")).all()
    assert (pixels(model.pipe, "一只猫") != pixels(model.pipe, "一只狗")).any()  # the characters matter
    # The prompt-length warning counts BERT tokens ([CLS], one per character, [SEP]): 75 characters fit.
    assert prompt_warnings(model.pipe, prompt="猫" * 75) == []
    assert prompt_warnings(model.pipe, prompt="猫" * 76) == [
        "prompt is longer than the text encoder's 77 tokens; the rest was truncated"]


def test_fresco_convert_makes_a_pickled_model_load_without_trust(dirs, capsys):
    from service.cli import main

    out = dirs["root"] / "pai-safe"
    assert main(["convert", str(dirs["pai"]), str(out)]) == 0
    assert "loads without trust_pickle" in capsys.readouterr().out
    assert not list(out.rglob("*.bin")) and (out / "text_encoder" / "model.safetensors").is_file()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "tokenizer" / "vocab.txt").is_file()
    converted = load_model(cpu(kind="sd", source=str(out)))
    trusted = load_model(cpu(kind="sd", source=str(dirs["pai"]), trust_pickle=True))
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(converted.pipe, name).state_dict(), getattr(trusted.pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert main(["convert", str(dirs["pai"]), str(out)]) == 2  # never over an existing directory
    assert main(["convert", str(dirs["sd"]), str(dirs["root"] / "nothing")]) == 2  # no pickles in it


def test_convert_refuses_a_pickle_that_runs_code(tmp_path):
    import pickle

    from workers.convert import convert

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": Boom()}))
    with pytest.raises(ValueError, match="not a plain tensor pickle"):
        convert(bad, tmp_path / "bad.safetensors")


def test_single_file_checkpoint_loads_with_its_config(tmp_path):
    path, config = model_dirs.save_single_file(tmp_path / "finetune.safetensors", tmp_path / "sd-config", seed=6)
    model = load_model(cpu(kind="sd", source=str(path), config=str(config)))
    assert model.spec.single_file and type(model.pipe).__name__ == "StableDiffusionPipeline"
    from workers.families.sd import tiny_sd

    assert (pixels(model.pipe) == pixels(tiny_sd(seed=6))).all()


def test_worker_models_loads_only_what_it_names(tmp_path):
    from workers.runtime import Runtime

    catalog = Catalog(models={
        "a-sdxl": {"kind": "sdxl", "source": "tiny", "device": "cpu"},
        "a-turbo": {"kind": "turbo", "source": "tiny", "device": "cpu"},
        "a-sd": {"kind": "sd", "source": "tiny", "device": "cpu"}})
    settings = Settings(worker_models="a-sdxl", data_dir=tmp_path)
    runtime = Runtime(settings, catalog)
    assert runtime.plan() == [("sdxl", "a-sdxl"), ("img2img", "a-sdxl"), ("txt2img", "a-sdxl"), ("inpaint", "a-sdxl"),
                              ("upscale", "lanczos"), ("train", "a-sdxl")]  # lanczos: built in, no weights
    # Without it, a worker for img2img loads every model img2img runs on, Turbo and SD too.
    assert Runtime(Settings(worker_tasks="img2img"), catalog).plan() == \
        [("img2img", "a-sdxl"), ("img2img", "a-turbo"), ("img2img", "a-sd")]
    assert Runtime(Settings(worker_tasks="sdxl,img2img", worker_models="a-sdxl,a-sd"), catalog).plan() == \
        [("sdxl", "a-sdxl"), ("img2img", "a-sdxl"), ("img2img", "a-sd")]
    runtime.load()
    assert set(runtime.models) == {"a-sdxl"}
    with pytest.raises(ValueError, match="does not have"):
        Runtime(Settings(worker_models="a-sdxl,nope"), catalog).plan()


def test_loras_on_an_sd_model(tmp_path):
    """LoRAs for SD 1.x models (one text encoder) load, change the image, and leave it when off."""
    import numpy as np
    from safetensors.torch import save_file

    from service.catalog import load_catalog
    from workers import tiny_adapters
    from workers.progress import Progress
    from workers.runtime import Runtime

    save_file(tiny_adapters.lora(31, family="sd"), str(tmp_path / "sd-style.safetensors"))
    (tmp_path / "models.yaml").write_text(
        "models:\n  m: {kind: sd, source: tiny, device: cpu}\n"
        "adapters:\n  sd-style: {kind: lora, source: sd-style.safetensors, base: sd}\n")
    runtime = Runtime(Settings(worker_tasks="txt2img", data_dir=tmp_path),
                      load_catalog(tmp_path / "models.yaml")).load()
    pipeline = runtime.pipeline("txt2img", "m")
    p = {"prompt": "a", "negative_prompt": "", "seed": 1, "num_images": 1, "steps": 2, "width": 256, "height": 256,
         "guidance_scale": 7.5, "scheduler": "euler"}

    def image(loras):
        q = dict(p, loras=loras)
        used = pipeline.use_adapters(q)
        with torch.inference_mode():
            out = pipeline.run_batch([q], Progress(lambda s: False, pipeline.plan(q)))
        return np.asarray(out[0].images[0]), used

    plain, _ = image([])
    styled, used = image([{"name": "sd-style", "scale": 1.0}])
    assert used[0]["digest"].startswith("sha256:") and (styled != plain).mean() > 0.1
    assert (image([])[0] == plain).all()


def test_sdxl_single_file_checkpoint_loads_with_its_config(tmp_path):
    """An SDXL fine-tune as one file (the tiny SDXL with a wider second text encoder: diffusers tells the two
    encoders apart by width, as real SDXL's 768 and 1280 are; tests/workers/original_layout.py)."""
    from tests.workers.original_layout import save_configs, save_single_file, sdxl_base

    save_configs(sdxl_base(seed=7), tmp_path / "sdxl-config")
    save_single_file(sdxl_base(seed=7), tmp_path / "sdxl-finetune.safetensors")
    model = load_model(cpu(kind="sdxl", source=str(tmp_path / "sdxl-finetune.safetensors"),
                           config=str(tmp_path / "sdxl-config")))
    assert type(model.pipe).__name__ == "StableDiffusionXLPipeline" and model.spec.size == (1024, 1024)
    # The same weights; the loaded model is frozen and in eval mode, which rounds a little differently on
    # the CPU (about 1e-6 here), so pixels within a hundredth of an 8-bit level.
    assert abs(pixels(model.pipe) - pixels(sdxl_base(seed=7))).max() < 4e-5


def test_a_pickled_controlnet_directory_needs_trust_pickle(tmp_path):
    from service.catalog import ControlNetSpec
    from workers import tiny
    from workers.families.sd import tiny_sd
    from workers.control import load_controlnet

    tiny.controlnet(tiny_sd().unet, 9).save_pretrained(tmp_path / "canny", safe_serialization=False)
    assert (tmp_path / "canny" / "diffusion_pytorch_model.bin").is_file()
    spec = ControlNetSpec(name="c", kind="canny", source=str(tmp_path / "canny"), base=["sd"])
    with pytest.raises(ValueError, match=r"controlnet c: .* pickled weights only \(canny: .bin files\)"):
        load_controlnet(spec, "sd", torch.device("cpu"), torch.float32)
    trusted = load_controlnet(spec.model_copy(update={"trust_pickle": True}), "sd", torch.device("cpu"), torch.float32)
    assert type(trusted).__name__ == "ControlNetModel"


@pytest.fixture(scope="module")
def transformer_dirs(tmp_path_factory):
    """Tiny SD 3.5 and FLUX.1-dev pipelines in the hub layout, and a models file naming them."""
    root = tmp_path_factory.mktemp("transformer-families")
    model_dirs.save_transformer_family(root / "sd3", "sd3")
    model_dirs.save_transformer_family(root / "flux", "flux")
    (root / "models.yaml").write_text(
        "models:\n"
        "  sd35: {kind: sd3, source: sd3, dtype: float32, device: cpu}\n"
        "  sd35-no-t5: {kind: sd3, source: sd3, t5: false, dtype: float32, device: cpu}\n"
        "  flux-dev: {kind: flux, source: flux, dtype: float32, device: cpu}\n")
    return root


@pytest.mark.parametrize("name, family, tiny", [
    ("sd35", "sd3", {}), ("flux-dev", "flux", {}), ("sd35-no-t5", "sd3", {"t5": False})])
def test_transformer_family_directories_load_through_the_models_file(transformer_dirs, name, family, tiny):
    """SD 3.5 and FLUX.1 in the hub layout (model_index.json, transformer/, three or two text encoders, T5's
    tokenizer.json) load with from_pretrained as their family's pipeline, the same pixels as the tiny builder
    gives; img2img and inpainting share the transformer; `t5: false` loads SD 3 without T5-XXL."""
    from service.catalog import load_catalog
    from workers.families import FAMILIES
    from workers.families.flux import tiny_flux
    from workers.families.sd3 import tiny_sd3

    model = load_model(load_catalog(transformer_dirs / "models.yaml").spec(name))
    assert type(model.pipe).__name__ == FAMILIES[family].pipelines["txt2img"]
    assert model.denoiser is model.pipe.transformer
    assert model.img2img().transformer is model.inpaint().transformer is model.pipe.transformer
    built = (tiny_sd3 if family == "sd3" else tiny_flux)(**tiny)
    assert abs(pixels(model.pipe) - pixels(built)).max() < 4e-5
    if name == "sd35-no-t5":
        assert model.pipe.text_encoder_3 is None and model.pipe.tokenizer_3 is None
        assert abs(pixels(model.pipe) - pixels(tiny_sd3())).max() > 1e-3  # T5's tokens were in the image


def test_t5_false_is_only_for_models_that_run_without_it():
    with pytest.raises(ValueError, match="`t5: false` is for sd3 models"):
        cpu(kind="flux", source="tiny", t5=False)
    assert cpu(kind="sd3", source="tiny", t5=False).t5 is False


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_prompt_warnings_count_each_text_encoders_own_tokens(model):
    """CLIP reads 77 tokens, T5 the job's max_sequence_length: each truncation is its own warning, and FLUX
    says that it ignores a negative prompt."""
    from service.catalog import tiny_catalog
    from workers.pipelines.base import text_warnings

    loaded = load_model(tiny_catalog().spec(model))
    p = {"prompt": "a cat " * 20, "negative_prompt": "", "max_sequence_length": 256}  # 120 CLIP, ~100 T5 tokens
    clip = "prompt is longer than the CLIP text encoder's 77 tokens; the rest was truncated for it"
    t5 = "prompt is longer than the T5 text encoder's 64 tokens; the rest was truncated for it"
    assert text_warnings(loaded, loaded.pipe, p) == [clip]
    assert text_warnings(loaded, loaded.pipe, dict(p, max_sequence_length=64)) == [clip, t5]
    assert text_warnings(loaded, loaded.pipe, dict(p, prompt="a cat")) == []
    ignored = text_warnings(loaded, loaded.pipe, dict(p, prompt="a cat", negative_prompt="dogs"))
    assert ignored == ([] if model == "tiny-sd3" else [loaded.family.no_negative_prompt])
