"""`fresco convert SRC DST`: a model with pickled weights rewritten as safetensors.

Many published checkpoints (PAI-Diffusion's Chinese models, older SD 1.x fine-tunes, `.ckpt` files) hold
their weights as pickles, and unpickling can run code: Fresco loads them only with `trust_pickle: true`.
Converted once, they load without it. The pickles are read with torch's restricted unpickler
(`weights_only=True`: tensors and plain containers only, no code), so converting does not trust them
either; a pickle that needs more than that is refused, not run.

SRC is a diffusers-layout directory (every `*.bin` weight file, sharded ones and their index included,
becomes its `.safetensors` twin under the name diffusers and transformers look for; everything else is
copied) or one checkpoint file (`.ckpt`, `.pt`, `.pth`, `.bin`: its state dict, written to DST).

A checkpoint file's state dict is unwrapped as spandrel unwraps it (`WRAPPERS`: a Lightning `.ckpt`'s
`state_dict`, BasicSR's and Real-ESRGAN's `params_ema` or `params`...), so an upscaler's `.pth` (ESRGAN,
Real-ESRGAN, SwinIR, HAT...) becomes a `.safetensors` file the models file's `upscalers:` section takes
without `trust_pickle`. When spandrel recognises the keys as an upscaler's, the written file is loaded
back through spandrel (workers/upscalers.py's loader) before it counts as converted, and the command says
what it is (architecture and factor: the `scale` its entry needs).
"""

from __future__ import annotations

import json
import logging
import os
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


# Where training code keeps the weights inside a checkpoint, in the order spandrel's canonicalize_state_dict
# looks (a training `.ckpt`'s `state_dict`; BasicSR's EMA `params_ema` before its plain `params`).
WRAPPERS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net")


def unwrap(state: dict) -> dict:
    """The state dict inside a checkpoint's wrapper (`WRAPPERS`, or a lone key), as spandrel finds it."""
    for key in WRAPPERS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))
    return state


def upscaler_of(tensors: dict, path: Path) -> str | None:
    """What the converted file `path` is when its `tensors` are an upscaler's (spandrel recognises the
    keys): "<architecture> x<scale>", after loading it back through spandrel; None for any other model."""
    try:
        from workers.spandrel_import import spandrel

        sp = spandrel()
    except ImportError:  # spandrel not installed: no upscaler check
        return None
    if not any(arch.detect(tensors) for arch in sp.MAIN_REGISTRY.architectures()):
        return None
    try:
        descriptor = sp.ModelLoader().load_from_file(path)
    except Exception as exc:
        raise ValueError(f"spandrel recognises an upscaler's keys but cannot load the converted file "
                         f"({type(exc).__name__}: {exc})") from None
    return f"{descriptor.architecture.name} x{descriptor.scale}"


def read_pickle(path: Path) -> dict:
    """The tensors of a pickled checkpoint, through torch's restricted unpickler."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler met something that is not tensors and containers
        raise ValueError(f"{path}: not a plain tensor pickle ({type(exc).__name__}); refusing to unpickle it "
                         f"with code execution allowed") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds no state dict")
    state = unwrap(state)
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


def convert(src: Path, dst: Path, notes: list[str] | None = None) -> list[Path]:
    """Convert `src` to `dst` (see the module docstring); the safetensors files written. `notes` gets what
    an upscaler's file was found to be. Everything is written into a temporary sibling of `dst` that is
    renamed into place only once the whole conversion succeeded: a refused or failed one leaves no `dst`
    (nor the folders made for it) behind."""
    src, dst = Path(src), Path(dst)
    if src.is_file() and dst.suffix != ".safetensors":
        dst = dst.with_suffix(".safetensors")
    if dst.exists() and any(dst.iterdir() if dst.is_dir() else [dst]):
        raise ValueError(f"{dst} exists; give a new path")
    if not src.is_file() and not (src / "model_index.json").is_file() and not (src / "config.json").is_file():
        raise ValueError(f"{src} is no diffusers model directory (no model_index.json or config.json)")
    made = next((p for p in reversed(dst.parents) if not p.exists()), None)  # the first folder made for dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling (same filesystem: the rename is atomic), named like the file for spandrel's loader.
    partial = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")
    try:
        written = (_convert_file if src.is_file() else _convert_directory)(src, partial, notes)
        os.replace(partial, dst)  # onto nothing, or onto an empty directory
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return [dst / path.relative_to(partial) for path in written] if src.is_dir() else [dst]


def _convert_file(src: Path, out: Path, notes: list[str] | None) -> list[Path]:
    tensors = read_pickle(src)
    write_safetensors(tensors, out)
    try:
        upscaler = upscaler_of(tensors, out)
    except ValueError as exc:
        raise ValueError(f"{src.name}: {exc}") from None
    if upscaler is not None and notes is not None:
        notes.append(f"an upscaler spandrel loads: {upscaler} (its `upscalers:` entry: "
                     f"scale: {upscaler.rsplit('x', 1)[1]})")
    return [out]


def _convert_directory(src: Path, out: Path, notes: list[str] | None) -> list[Path]:
    out.mkdir()
    written = []
    for path in sorted(src.rglob("*")):
        target = out / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name.endswith(".bin") and not path.name.startswith("training_args"):
            converted = target.with_name(safetensors_name(path.name))
            write_safetensors(read_pickle(path), converted)
            written.append(converted)
            log.info("%s -> %s", path.relative_to(src), converted.relative_to(out))
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
