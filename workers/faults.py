"""Faults on demand, for the fault tests: only when FRESCO_FAULT_INJECTION is on (never in production).

A job asks for one with a prompt starting `fresco-fault:<name>`:
- `oom`: CUDA out of memory at the first denoising step (the GPU path, reached on a CPU);
- `sticky`: a sticky CUDA error (illegal memory access) at the first step;
- `slow`: each denoising step takes an extra second (to pass a timeout);
- `slow-store`: storing the job's files takes an extra 20 seconds (to kill a worker while it stores).
A full disk needs no hook: the fault tests give the worker a tiny real filesystem.
"""

from __future__ import annotations

import time

import torch

PREFIX = "fresco-fault:"
SLOW_STORE_S = 20.0
STICKY_MARKERS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                  "CUBLAS_STATUS_EXECUTION_FAILED", "cudaErrorLaunchFailure", "misaligned address")


def requested(params: dict, enabled: bool) -> str | None:
    prompt = params.get("prompt") or ""
    if enabled and prompt.startswith(PREFIX):
        return prompt[len(PREFIX):].split()[0] if prompt[len(PREFIX):].strip() else None
    return None


def at_step(fault: str | None, step: int) -> None:
    if fault == "oom" and step == 1:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fault injection)")
    if fault == "sticky" and step == 1:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (fault injection)")
    if fault == "slow":
        time.sleep(1.0)


def before_store(fault: str | None) -> None:
    if fault == "slow-store":
        time.sleep(SLOW_STORE_S)


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """Errors after which the CUDA context is unusable: only a new process recovers."""
    text = str(exc)
    return any(marker in text for marker in STICKY_MARKERS) and "out of memory" not in text
