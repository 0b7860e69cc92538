"""A pipeline's images leaving the device without holding it up.

The pipelines ask diffusers for tensors (`output_type="pt"`: (n, 3, h, w) in [0, 1] on the execution
device) and hand them to `host_images`:

- on CUDA the pixels become uint8 on the device, then go into pinned host memory by a non-blocking
  copy on the current stream, whose end an event marks. The pipeline call returns while the copy runs,
  the worker takes the next job and its kernels queue behind the copy at once; only the thread that
  encodes the images (workers/finishing.py) waits for the event, when it first reads a pixel;
- elsewhere the float tensor is kept as it is and made uint8 when first read, on the encoding thread,
  by diffusers' own arithmetic in numpy (`x * 255` in float32, rounded half to even): the pixels
  `output_type="pil"` gives. (On CUDA `torch.round` rounds half to even as well.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


class HostImages(Sequence):
    """A batch's images as PIL images, read lazily: `len()` costs nothing, an index waits for the copy
    (if any) and converts that image, a slice is a view (one job's share of a batch)."""

    def __init__(self, pixels: torch.Tensor, ready=None):
        # uint8 (n, h, w, 3) in pinned memory (from CUDA), or the pipeline's float (n, 3, h, w)
        self._pixels, self._ready = pixels, ready

    def __len__(self) -> int:
        return int(self._pixels.shape[0])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return HostImages(self._pixels[index], self._ready)
        return Image.fromarray(self.array(index))

    def array(self, index: int) -> np.ndarray:
        """Image `index` as uint8 (h, w, 3)."""
        if self._ready is not None:
            self._ready.synchronize()  # the copy has landed (a no-op once it has)
        image = self._pixels[index]
        if image.dtype == torch.uint8:
            return image.numpy()
        # diffusers' own arithmetic (pt_to_numpy, numpy_to_pil), in numpy: no torch op on this thread, whose
        # OpenMP team would compete with the main thread's for the cores
        return (image.detach().cpu().permute(1, 2, 0).float().numpy() * 255).round().astype(np.uint8)


def host_images(decoded: torch.Tensor) -> HostImages:
    """`decoded`: what a diffusers pipeline returns with `output_type="pt"`."""
    if decoded.device.type != "cuda":
        return HostImages(decoded)
    pixels = (decoded.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()  # on the current stream, after the copy
    # `pixels` is freed on return: the caching allocator hands its memory only to later work on the same
    # stream, which runs after the copy.
    return HostImages(host, ready)
