"""Model directories as they are published, written from the tiny pipelines for the loading tests:
an SD 1.x diffusers directory, a PAI-Diffusion-style Chinese one (pickled `.bin` weights, a BERT
`tokenizer/vocab.txt`, as alibaba-pai/pai-diffusion-artist-large-zh has them), a ControlNet directory,
and a single-file checkpoint with its diffusers-layout config directory (tests/workers/original_layout.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workers import tiny
from workers.families.sd import chinese_vocab, tiny_pai, tiny_sd


def save_sd(path: Path, seed: int = 4, **scheduler) -> Path:
    tiny_sd(seed=seed, scheduler=scheduler or None).save_pretrained(path)
    return path


def save_pai(path: Path, pickled: bool = True) -> Path:
    """The tiny PAI-style pipeline in the hub repository's layout: `model_index.json` naming a BertTokenizer
    and a CLIPTextModel, `tokenizer/vocab.txt` (one token a line) and its config, weights as `.bin` pickles."""
    tiny_pai().save_pretrained(path, safe_serialization=not pickled)
    if pickled:  # transformers 5 writes safetensors whatever it is told: the text encoder as PAI ships it
        import torch
        from safetensors.torch import load_file

        encoder = path / "text_encoder"
        torch.save(load_file(encoder / "model.safetensors"), encoder / "pytorch_model.bin")
        (encoder / "model.safetensors").unlink()
    tokenizer = path / "tokenizer"
    shutil.rmtree(tokenizer)
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("\n".join(chinese_vocab()) + "\n", encoding="utf-8")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 77,
         "tokenize_chinese_chars": True}))
    index = json.loads((path / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "BertTokenizer"], index
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"], index
    return path


def save_controlnet(path: Path, seed: int = 21) -> Path:
    tiny.controlnet(tiny_sd().unet, seed).save_pretrained(path)
    return path


def save_single_file(path: Path, config_dir: Path, seed: int = 6) -> tuple[Path, Path]:
    """An SD 1.x fine-tune as one `.safetensors` file in the original layout, and the diffusers-layout
    directory of its architecture (configs and tokenizers, no weights)."""
    from tests.workers.original_layout import save_configs, save_single_file as write

    pipe = tiny_sd(seed=seed)
    save_configs(pipe, config_dir)
    write(pipe, path)
    return path, config_dir


def save_transformer_family(path: Path, kind: str, **options) -> Path:
    """A tiny SD 3.5 (`sd3`) or FLUX.1 (`flux`; `schnell=True`: no guidance embedding) pipeline in the hub
    repository's layout: `model_index.json`, `transformer/`, `vae/`, the text encoders and tokenizers (T5's
    as a fast tokenizer's tokenizer.json, as the hub repositories ship it), `scheduler/`."""
    from workers.families.flux import tiny_flux
    from workers.families.sd3 import tiny_sd3

    (tiny_sd3 if kind == "sd3" else tiny_flux)(**options).save_pretrained(path)
    return path
