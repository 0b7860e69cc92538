"""Where a resident pipeline runs, said once instead of searched for on every call.

diffusers finds the device a pipeline's inputs must go to by walking every module of every component,
looking for offloading hooks: `DiffusionPipeline._execution_device` (twice per SDXL call, over the
text encoders, UNet and VAE) and `get_module_execution_device` (per text encoder, per VAE decode),
each walk twice (group-offload hooks, then Accelerate's). A worker's pipelines never change device
after load and Fresco knows it, so a pinned pipeline and its components answer at once: on the tiny
Turbo job this took a quarter of the job's time (41 -> 31 ms a job on this CPU), and the walk grows
with every module a LoRA adds. Pipelines that are not pinned (offloaded ones) keep diffusers' search.

`install()` wraps the two diffusers entry points once per process (workers only); `pin()` marks one
pipeline and its modules.
"""

from __future__ import annotations

import sys

import torch

from workers.families import FAMILIES

ATTRIBUTE = "_fresco_execution_device"
_installed = False


def install() -> None:
    """Answer pinned pipelines' and modules' device from the pin; everything else as diffusers does."""
    global _installed
    if _installed:
        return
    import diffusers
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline
    from diffusers.utils import torch_utils

    for family in FAMILIES.values():  # every class a family runs, imported now, so the scan below finds
        for name in family.class_names():  # the name their modules imported
            getattr(diffusers, name)

    searched_pipeline = DiffusionPipeline._execution_device
    searched_module = torch_utils.get_module_execution_device

    def pipeline_device(self):
        pinned = self.__dict__.get(ATTRIBUTE)
        return pinned if pinned is not None else searched_pipeline.fget(self)

    def module_device(module):
        pinned = module.__dict__.get(ATTRIBUTE)
        return pinned if pinned is not None else searched_module(module)

    DiffusionPipeline._execution_device = property(pipeline_device, doc=searched_pipeline.__doc__)
    torch_utils.get_module_execution_device = module_device
    # Pipeline modules imported the function by name: rebind it in each (Fresco's are imported above).
    for name, module in list(sys.modules.items()):
        if name.startswith("diffusers") and getattr(module, "get_module_execution_device", None) is searched_module:
            module.get_module_execution_device = module_device
    _installed = True


def pin(pipe, device: torch.device) -> None:
    """`pipe` and each of its modules run on `device` from now on (no offloading)."""
    if pipe is None:
        return
    install()
    object.__setattr__(pipe, ATTRIBUTE, torch.device(device))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.__dict__[ATTRIBUTE] = torch.device(device)
