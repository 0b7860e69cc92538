"""Diffusers pipelines written as single-file checkpoints in the original layout (CompVis/LDM, SGM,
as A1111 and most shared `.safetensors` models have them), so `from_single_file` can be tested offline.

Why this exists: diffusers ships the key mapping one way only. `diffusers.loaders.single_file_utils`
converts original -> diffusers (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
`convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`); the reverse lives in scripts of the
diffusers repository (`scripts/convert_diffusers_to_original_*.py`) that the package does not install.
So the reverse is derived here from the forward code, and the round trip (tests/workers/
test_original_layout.py) checks it: every tensor comes back equal, the pixels the same.

Layout written (key prefixes as in real checkpoints):

- UNet: `model.diffusion_model.*` (`input_blocks` / `middle_block` / `output_blocks`, resnets as
  `in_layers` / `out_layers` / `emb_layers` / `skip_connection`; SDXL's added text/time embedding as
  `label_emb.0.{0,2}`);
- VAE: `first_stage_model.*` (`encoder.down.N.block.M`, `decoder.up.N` in reverse order, mid-block
  attention as 1x1 convolutions `q` / `k` / `v` / `proj_out`);
- SD 1.x text encoder (CLIP): `cond_stage_model.transformer.text_model.*`; with `open_clip=True` the
  SD 2.x layout instead, OpenCLIP as below under `cond_stage_model.model.*` (no projection);
- SDXL: CLIP-L as `conditioner.embedders.0.transformer.text_model.*`, the OpenCLIP-layout second encoder
  as `conditioner.embedders.1.model.*` (`transformer.resblocks.N` with fused `attn.in_proj_weight`/
  `_bias`, `ln_1` / `ln_2`, `mlp.c_fc` / `c_proj`, `positional_embedding`, `token_embedding`, `ln_final`,
  `text_projection` stored transposed); the refiner (no first encoder) has it as
  `conditioner.embedders.0.model.*`.

Loading it offline (diffusers 0.42, what the round-trip test does):

    save_configs(pipe, config_dir)          # save_pretrained, then weights deleted: configs + tokenizers
    save_single_file(pipe, "model.safetensors")
    StableDiffusionPipeline.from_single_file("model.safetensors", config=str(config_dir),
                                             local_files_only=True, safety_checker=None)
    StableDiffusionXLPipeline.from_single_file(..., config=..., local_files_only=True, add_watermarker=False)
    StableDiffusionXLImg2ImgPipeline.from_single_file(...)                 # the refiner, likewise

At the default log level this prints nothing but tqdm's "Loading pipeline components..." bar.

With `config=` a local directory, diffusers reads `model_index.json`, every component's config, the
scheduler and the tokenizers from it and never looks at the hub; `infer_diffusers_model_type` is not
used (it is only consulted when `config` is None, and would pick a hub repo id). `original_config` (an
LDM YAML) is not needed and must not be given: it makes the UNet/VAE configs come from the YAML instead
of the directory. Components missing from the file are loaded with `from_pretrained` from the config
directory, which is why `save_configs` leaves no weights there: a component absent from the file then
fails loudly (`SingleFileComponentError`) instead of being read from the directory unnoticed. A single
UNet/VAE tensor absent fails too (the parameter stays on the meta device, and diffusers' final move
raises `NotImplementedError`), but one absent from a text encoder is silently left on the meta device
by transformers, and a tensor under the wrong name of the same shape loads silently: only comparing
the tensors (as the test does) catches those.

Limitation (diffusers, not this file): `from_single_file` picks the CLIP weights for a text encoder by
the checkpoint's keys and the encoder's *width*, not by the component's name: an SDXL base whose two
text encoders are equally wide (as `workers.tiny.sdxl_base()` is, both 32) gets the CLIP-L weights in
`text_encoder_2` as well. Real SDXL (768 vs 1280) is unaffected; the test uses an SDXL tiny pipeline
whose second encoder is wider (`sdxl_base()` here). The refiner, with one text encoder, has no such
ambiguity: `workers.tiny.sdxl_refiner()` loads with `StableDiffusionXLImg2ImgPipeline.from_single_file`.

Without `config=`, nothing loads offline: diffusers infers the model type from marker keys
(`infer_diffusers_model_type`) to pick a hub repo for the configs, and the tiny files have none of the
markers of their real families (e.g. SDXL's is `...resblocks.9...`, a 10th text layer), so every
tiny file is taken for "v1" (stable-diffusion-v1-5/stable-diffusion-v1-5). Its configs are not in the
local cache, and diffusers then overrides `local_files_only=True` and tries the hub anyway (warning
"`local_files_only` is True but no local configs were found ... Attempting to download"), failing
here with `LocalEntryNotFoundError`. `original_config=` (an LDM YAML) without `config=` takes the
legacy path instead, which fetches the CLIP config and tokenizer from openai/clip-vit-large-patch14:
`OSError` offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."

# diffusers name of a UNet resnet's layer -> the original's
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _split(key: str, table: dict[str, str]) -> str | None:
    """`table`'s entry for the longest module path that `key` (`<module>.<param>`) starts with."""
    for module in sorted(table, key=len, reverse=True):
        if key.startswith(module + "."):
            return table[module] + key[len(module):]
    return None


def _unet_key(key: str, unet) -> str:
    top = _split(key, _UNET_TOP)
    if top is not None:
        return top
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError("the original layout needs one layers_per_block for every level")
    parts = key.split(".")
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        mapped = _split(rest, _UNET_RESNET) if kind == "resnets" else None
        if mapped:  # resnet, attention, resnet
            return f"middle_block.{2 * index}.{mapped}"
        if kind == "attentions" and index == 0:
            return f"middle_block.1.{rest}"
        return _unknown(key)
    if parts[0] not in ("down_blocks", "up_blocks"):
        return _unknown(key)
    block, kind, rest = int(parts[1]), parts[2], ".".join(parts[4:])
    down = parts[0] == "down_blocks"
    # input_blocks.0 is conv_in; each down level then has `layers` (resnet, attention) pairs and its
    # downsampler; each up level has `layers + 1` pairs, its upsampler beside the last one.
    first = 1 + block * (layers + 1) if down else block * (layers + 1)
    side = "input_blocks" if down else "output_blocks"
    if kind == "resnets":
        mapped = _split(rest, _UNET_RESNET)
        return f"{side}.{first + int(parts[3])}.0.{mapped}" if mapped else _unknown(key)
    if kind == "attentions":
        return f"{side}.{first + int(parts[3])}.1.{rest}"
    if down and kind == "downsamplers" and rest.startswith("conv."):
        return f"input_blocks.{first + layers}.0.op.{rest[len('conv.'):]}"
    if not down and kind == "upsamplers" and rest.startswith("conv."):
        # after the resnet (.0) and, in a cross-attention level, the attention (.1)
        slot = 2 if getattr(unet.up_blocks[block], "attentions", None) else 1
        return f"output_blocks.{first + layers}.{slot}.{rest}"
    return _unknown(key)


def _vae_key(key: str, levels: int) -> str:
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    coder, rest = parts[0], ".".join(parts[1:])
    if coder not in ("encoder", "decoder"):
        return _unknown(key)
    top = _split(rest, _VAE_TOP)
    if top is not None:
        return f"{coder}.{top}"
    parts = rest.split(".")
    if parts[0] == "mid_block":
        kind, index, inner = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"{coder}.mid.block_{index + 1}.{inner.replace('conv_shortcut', 'nin_shortcut')}"
        mapped = _split(inner, _VAE_ATTENTION) if kind == "attentions" and index == 0 else None
        return f"{coder}.mid.attn_1.{mapped}" if mapped else _unknown(key)
    if (coder, parts[0]) in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
        # the original numbers decoder levels from the bottom (latent side) up: diffusers' order reversed
        level = int(parts[1]) if coder == "encoder" else levels - 1 - int(parts[1])
        name = "down" if coder == "encoder" else "up"
        kind, inner = parts[2], ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.{name}.{level}.block.{parts[3]}.{inner.replace('conv_shortcut', 'nin_shortcut')}"
        if kind in ("downsamplers", "upsamplers") and parts[3] == "0":
            return f"{coder}.{name}.{level}.{name}sample.{inner}"
    return _unknown(key)


def _unknown(key: str):
    raise KeyError(f"no original-layout name known for {key!r}")


def _unet(unet) -> dict[str, torch.Tensor]:
    return {UNET_PREFIX + _unet_key(k, unet): v for k, v in unet.state_dict().items()}


def _vae(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original's attention projections are 1x1 convolutions
        out[VAE_PREFIX + new] = value
    return out


def _clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP layout under `prefix`; transformers >= 5.6 flattens `CLIPTextModel` (no `text_model.`)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        if key == "text_projection.weight":
            raise KeyError("a projection in the CLIP-L slot: the original layout has no place for it")
        out[prefix + (key if key.startswith("text_model.") else "text_model." + key)] = value
    return out


def _open_clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP layout (SD 2.x's `FrozenOpenCLIPEmbedder`, SGM's `...Embedder2`): fused q/k/v, the
    projection (SDXL only) as a matrix."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        # nn.Linear keeps (out, in); OpenCLIP multiplies x @ text_projection, so (in, out)
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    for index in range(text_encoder.config.num_hidden_layers):
        layer, block = f"encoder.layers.{index}.", f"{prefix}transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{layer}self_attn.{p}_proj.{kind}") for p in "qkv"])
            for diffusers_name, original_name in _OPEN_CLIP_LAYER.items():
                out[f"{block}{original_name}.{kind}"] = state.pop(f"{layer}{diffusers_name}.{kind}")
    if state:
        raise KeyError(f"no original-layout name known for {sorted(state)}")
    return out


def original_state_dict(pipe, open_clip: bool = False) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder(s) as one state dict in the original layout: a
    `StableDiffusionPipeline` (text encoder as SD 1.x's CLIP, or with `open_clip` as SD 2.x's OpenCLIP),
    an SDXL base, or an SDXL refiner (second encoder only)."""
    parts = [_unet(pipe.unet), _vae(pipe.vae)]
    text_encoder = getattr(pipe, "text_encoder", None)
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    if text_encoder_2 is not None:
        if text_encoder is not None:
            parts += [_clip(text_encoder, SDXL_CLIP_PREFIX), _open_clip(text_encoder_2, SDXL_OPEN_CLIP_PREFIX)]
        else:
            parts.append(_open_clip(text_encoder_2, REFINER_OPEN_CLIP_PREFIX))
    elif text_encoder is not None:
        if not type(text_encoder).__name__ == "CLIPTextModel":
            raise TypeError(f"an SD 1.x CLIP text encoder expected, not {type(text_encoder).__name__}")
        parts.append(_open_clip(text_encoder, SD2_OPEN_CLIP_PREFIX) if open_clip
                     else _clip(text_encoder, SD_CLIP_PREFIX))
    state: dict[str, torch.Tensor] = {}
    for part in parts:
        for key, value in part.items():
            if key in state:
                raise KeyError(f"two tensors mapped to {key!r}")
            state[key] = value.detach().to("cpu").contiguous()
    return state


def save_single_file(pipe, path, open_clip: bool = False) -> Path:
    """Write `original_state_dict(pipe, open_clip)` to `path` as safetensors; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(original_state_dict(pipe, open_clip), str(path))
    return path


def save_configs(pipe, directory) -> Path:
    """The `config=` directory for `from_single_file`: `save_pretrained` without its weight files
    (model_index.json, the components' configs, scheduler, tokenizers)."""
    directory = Path(directory)
    pipe.save_pretrained(directory)
    for weights in [*directory.rglob("*.safetensors"), *directory.rglob("*.bin")]:
        weights.unlink()
    return directory


# The second text encoder of `sdxl_base()`: wider than CLIP-L's 32, so diffusers can tell them apart.
SDXL_TEXT_ENCODER_2_WIDTH = 64


def sdxl_base(seed: int = 0):
    """`workers.tiny.sdxl_base()` with a 64-wide second text encoder (pooled output still 32, so the added
    embedding keeps its size; the UNet's cross-attention takes 32 + 64): the tiny SDXL base that
    `StableDiffusionXLPipeline.from_single_file` can load back (see the module docstring)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from workers import tiny
    from workers.families.sdxl import SDXL_UNET, SDXL_VAE

    torch.manual_seed(seed)
    width = SDXL_TEXT_ENCODER_2_WIDTH
    context = tiny.TEXT_ENCODER["hidden_size"] + width  # the two encoders' hidden states, concatenated
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SDXL_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny.TEXT_ENCODER)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**{**tiny.TEXT_ENCODER, "hidden_size": width})),
        tokenizer=tiny.tokenizer(),
        tokenizer_2=tiny.tokenizer(),
        unet=UNet2DConditionModel(**{**SDXL_UNET, "cross_attention_dim": context}),
        scheduler=EulerDiscreteScheduler(**tiny.SCHEDULER),
        add_watermarker=False,
    )
