"""`fresco convert SRC DST`: a model with pickled weights rewritten as safetensors.

Many published checkpoints (PAI-Diffusion's Chinese models, older SD 1.x fine-tunes, `.ckpt` files) hold
their weights as pickles, and unpickling can run code: Fresco loads them only with `trust_pickle: true`.
Converted once, they load without it. The pickles are read with torch's restricted unpickler
(`weights_only=True`: tensors and plain containers only, no code), so converting does not trust them
either; a pickle that needs more than that is refused, not run.

SRC is a diffusers-layout directory (every `*.bin` weight file, sharded ones and their index included,
becomes its `.safetensors` twin under the name diffusers and transformers look for; everything else is
copied) or one checkpoint file (`.ckpt`, `.pt`, `.pth`, `.bin`: its `state_dict`, written to DST).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger("fresco.convert")
# transformers names its safetensors weights `model*`, its pickles `pytorch_model*`; diffusers uses
# `diffusion_pytorch_model*` for both.
_RENAMES = ((re.compile(r"^pytorch_model"), "model"),)


def safetensors_name(name: str) -> str:
    """The safetensors file name diffusers or transformers look for in place of the pickle `name`."""
    stem = name[: -len(".bin")]
    for pattern, repl in _RENAMES:
        stem = pattern.sub(repl, stem)
    return stem + ".safetensors"


def read_pickle(path: Path) -> dict:
    """The tensors of a pickled checkpoint, through torch's restricted unpickler."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler met something that is not tensors and containers
        raise ValueError(f"{path}: not a plain tensor pickle ({type(exc).__name__}); refusing to unpickle it "
                         f"with code execution allowed") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint (CompVis / Lightning `.ckpt`)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors")
    return tensors


def write_safetensors(tensors: dict, path: Path) -> None:
    """safetensors refuses tensors that share memory (tied weights): each is written as its own copy."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.contiguous().clone() if key in seen or not tensor.is_contiguous() else tensor
        seen.add(key)
    save_file(out, str(path), metadata={"format": "pt"})


def convert(src: Path, dst: Path) -> list[Path]:
    """Convert `src` to `dst` (see the module docstring); the safetensors files written."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir() if dst.is_dir() else [dst]):
        raise ValueError(f"{dst} exists; give a new path")
    if src.is_file():
        dst = dst if dst.suffix == ".safetensors" else dst.with_suffix(".safetensors")
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(read_pickle(src), dst)
        return [dst]
    if not (src / "model_index.json").is_file() and not (src / "config.json").is_file():
        raise ValueError(f"{src} is no diffusers model directory (no model_index.json or config.json)")
    written = []
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name.endswith(".bin") and not path.name.startswith("training_args"):
            out = target.with_name(safetensors_name(path.name))
            write_safetensors(read_pickle(path), out)
            written.append(out)
            log.info("%s -> %s", path.relative_to(src), out.relative_to(dst))
        elif path.name.endswith(".bin.index.json"):
            index = json.loads(path.read_text())
            index["weight_map"] = {k: safetensors_name(v) for k, v in index.get("weight_map", {}).items()}
            target.with_name(safetensors_name(path.name[: -len(".index.json")]) + ".index.json").write_text(
                json.dumps(index, indent=2))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    if not written:
        raise ValueError(f"{src} holds no pickled (.bin) weights; nothing to convert")
    return written
