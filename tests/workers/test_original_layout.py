"""tests/workers/original_layout.py round trip: a tiny pipeline written as an original-layout single
file, loaded back offline with diffusers' `from_single_file` (configs and tokenizers from a directory
without weights), has every tensor equal and makes the same pixels; a wrong or missing key is caught."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, SingleFileComponentError
from PIL import Image

from tests.workers import original_layout
from tests.workers.original_layout import original_state_dict, save_configs, save_single_file
from workers.families.sd import tiny_sd
from workers.families.sdxl import tiny_base, tiny_refiner

SD_MODULES = ("unet", "vae", "text_encoder")
SDXL_MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")


def write(pipe, tmp_path, state=None, open_clip=False):
    """(single file, config directory) for `pipe`; `state`: the file's tensors instead of the pipeline's."""
    configs = save_configs(pipe, tmp_path / "configs")
    path = tmp_path / "model.safetensors"
    if state is None:
        save_single_file(pipe, path, open_clip)
    else:
        safetensors.torch.save_file(state, str(path))
    return path, configs


def load(cls, path, configs, **kwargs):
    return cls.from_single_file(str(path), config=str(configs), local_files_only=True, **kwargs)


def differing(original, loaded, modules) -> list[str]:
    """`module.parameter` names whose loaded tensor is missing, left on the meta device, or not equal."""
    out = []
    for name in modules:
        want, got = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(want) == set(got), name
        out += [f"{name}.{k}" for k, v in want.items() if got[k].is_meta or not torch.equal(v, got[k])]
    return out


def pixels(pipe, **kwargs):
    # The tiny pipelines are built in training mode, `from_single_file` returns eval-mode modules, and a
    # training-mode UNet rounds differently (the tiny refiner's pixels move by 1e-6): compare like with like.
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe(prompt="a red fox", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(7), **kwargs).images


@pytest.mark.parametrize("text_layout", ["clip", "open_clip"])  # SD 1.x, SD 2.x
def test_sd_round_trip(tmp_path, text_layout):
    pipe = tiny_sd()
    path, configs = write(pipe, tmp_path, open_clip=text_layout == "open_clip")
    state = safetensors.torch.load_file(str(path))
    assert CHECKPOINT_KEY_NAMES[text_layout] in state  # how diffusers tells the text encoder's layout
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)
    fused = 4 * pipe.text_encoder.config.num_hidden_layers if text_layout == "open_clip" else 0
    assert len(state) == sum(len(getattr(pipe, m).state_dict()) for m in SD_MODULES) - fused

    loaded = load(StableDiffusionPipeline, path, configs, safety_checker=None)
    assert differing(pipe, loaded, SD_MODULES) == []
    if text_layout == "clip":  # the layouts differ in the text encoder's names only: pixels once
        assert np.array_equal(pixels(pipe), pixels(loaded))


def test_sdxl_round_trip(tmp_path):
    pipe = original_layout.sdxl_base()
    path, configs = write(pipe, tmp_path)
    state = safetensors.torch.load_file(str(path))
    for marker in ("clip_sdxl", "open_clip_sdxl"):
        assert CHECKPOINT_KEY_NAMES[marker] in state
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in state
    fused = 4 * pipe.text_encoder_2.config.num_hidden_layers  # q, k, v weights and biases: 6 tensors -> 2
    assert len(state) == sum(len(getattr(pipe, m).state_dict()) for m in SDXL_MODULES) - fused

    loaded = load(StableDiffusionXLPipeline, path, configs, add_watermarker=False)
    assert differing(pipe, loaded, SDXL_MODULES) == []
    assert np.array_equal(pixels(pipe), pixels(loaded))


def test_sdxl_refiner_round_trip(tmp_path):
    refiner = tiny_refiner(tiny_base())
    path, configs = write(refiner, tmp_path)
    state = safetensors.torch.load_file(str(path))
    assert CHECKPOINT_KEY_NAMES["open_clip_sdxl_refiner"] in state
    assert not any(k.startswith("conditioner.embedders.1.") for k in state)

    loaded = load(StableDiffusionXLImg2ImgPipeline, path, configs, add_watermarker=False)
    assert loaded.text_encoder is None
    assert differing(refiner, loaded, ("unet", "vae", "text_encoder_2")) == []
    image = Image.new("RGB", (64, 64), (180, 40, 40))
    assert np.array_equal(pixels(refiner, image=image, strength=1.0), pixels(loaded, image=image, strength=1.0))


def test_equally_wide_sdxl_text_encoders_are_confused_by_diffusers(tmp_path):
    """Why `original_layout.sdxl_base()` exists: diffusers picks a text encoder's weights by its width, so
    the stock tiny SDXL (both encoders 32 wide) gets CLIP-L's weights in text_encoder_2 too. When this
    fails, diffusers tells the encoders apart by name and `workers.tiny.sdxl_base()` can be used."""
    pipe = tiny_base()
    loaded = load(StableDiffusionXLPipeline, *write(pipe, tmp_path), add_watermarker=False)
    assert differing(pipe, loaded, ("unet", "vae", "text_encoder")) == []
    clip_l = pipe.text_encoder.state_dict()
    second = loaded.text_encoder_2.state_dict()
    assert second["text_projection.weight"].is_meta
    assert all(torch.equal(clip_l[k.removeprefix("text_model.")], v) for k, v in second.items()
               if k != "text_projection.weight")


def test_a_wrong_or_missing_key_is_caught(tmp_path):
    pipe = tiny_sd()
    state = original_state_dict(pipe)
    # two tensors of the same shape exchanged: loads without a word, so only the comparison can tell
    a, b = ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
            "model.diffusion_model.input_blocks.1.0.out_layers.3.weight")
    state[a], state[b] = state[b], state[a]
    # a text encoder tensor left out: transformers leaves that parameter on the meta device, silently
    del state["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    loaded = load(StableDiffusionPipeline, *write(pipe, tmp_path / "wrong", state), safety_checker=None)
    assert differing(pipe, loaded, SD_MODULES) == [
        "unet.down_blocks.0.resnets.0.conv1.weight", "unet.down_blocks.0.resnets.0.conv2.weight",
        "text_encoder.final_layer_norm.weight",
    ]

    # a UNet/VAE tensor left out: diffusers fails moving the meta parameter
    state = original_state_dict(pipe)
    del state["first_stage_model.decoder.mid.attn_1.q.weight"]
    with pytest.raises(NotImplementedError, match="meta"):
        load(StableDiffusionPipeline, *write(pipe, tmp_path / "missing", state), safety_checker=None)

    # a whole component left out: the config directory has no weights to fall back on
    no_vae = {k: v for k, v in original_state_dict(pipe).items() if not k.startswith("first_stage_model.")}
    with pytest.raises(SingleFileComponentError, match="AutoencoderKL"):
        load(StableDiffusionPipeline, *write(pipe, tmp_path / "no-vae", no_vae), safety_checker=None)


def test_unknown_modules_are_refused():
    pipe = tiny_sd()
    pipe.unet.register_buffer("extra", torch.zeros(1))
    with pytest.raises(KeyError, match="extra"):
        original_state_dict(pipe)
