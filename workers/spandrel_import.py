"""`import spandrel` on hosts without a working torchvision.

spandrel (the upscalers' loader: ESRGAN, Real-ESRGAN, SwinIR, HAT... detected from their weights) imports
every architecture it knows when it is imported, and two of them, neither an upscaler, import torchvision
at that moment: RestoreFormer (face restoration: `torchvision.transforms.functional.normalize`) and LaMa
(inpainting: `rotate`, `InterpolationMode`). Its wheel therefore requires torchvision, which Fresco cannot
take: PyPI's torchvision matches only PyPI's torch build (beside the CPU build of torch it fails to import:
"operator torchvision::nms does not exist"), and unpinned it drags gigabytes of CUDA packages in. So
spandrel is installed with `--no-deps` (Makefile, Dockerfile), and `spandrel()` here imports it:

- where torchvision imports, with it (a CUDA host may install the torchvision that matches its torch);
- else with stand-ins of just those three names, in sys.modules only for the duration of the import, then
  removed, so nothing else sees a torchvision (transformers and diffusers check whether one is there).
  `normalize` is the real computation; `rotate` raises: LaMa and RestoreFormer are never loaded here
  (workers/upscalers.py refuses weights that are not an upscaler before they would run).
"""

from __future__ import annotations

import enum
import importlib
import sys
import threading
import types

_LOCK = threading.Lock()
_FAKE_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


class InterpolationMode(enum.Enum):
    """torchvision's enum, by its values (LaMa passes BILINEAR to `rotate`)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def normalize(tensor, mean, std, inplace: bool = False):
    """torchvision's `normalize`: (tensor - mean) / std per channel of a (..., C, H, W) tensor."""
    import torch

    out = tensor if inplace else tensor.clone()
    mean = torch.as_tensor(mean, dtype=out.dtype, device=out.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=out.dtype, device=out.device).view(-1, 1, 1)
    return out.sub_(mean).div_(std)


def rotate(*args, **kwargs):
    raise RuntimeError("this spandrel architecture (LaMa) needs torchvision, which is not installed here; "
                       "Fresco loads upscalers only")


def _torchvision_works() -> bool:
    try:
        import torchvision.transforms.functional  # noqa: F401
        return True
    except Exception:  # missing, or built for another torch ("operator torchvision::nms does not exist")
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # what a failed import left half-made
        return False


def _fakes() -> dict[str, types.ModuleType]:
    root, transforms, functional = (types.ModuleType(name) for name in _FAKE_NAMES)
    root.__path__, transforms.__path__ = [], []  # packages, so `import torchvision.transforms...` works
    root.transforms, transforms.functional = transforms, functional
    functional.normalize, functional.rotate, functional.InterpolationMode = normalize, rotate, InterpolationMode
    transforms.InterpolationMode = InterpolationMode
    return dict(zip(_FAKE_NAMES, (root, transforms, functional)))


def spandrel():
    """The `spandrel` module, imported as the module docstring says."""
    with _LOCK:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if _torchvision_works():
            return importlib.import_module("spandrel")
        fakes = _fakes()
        sys.modules.update(fakes)
        try:
            return importlib.import_module("spandrel")
        finally:
            for name, module in fakes.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
