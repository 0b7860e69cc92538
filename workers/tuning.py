"""Process tuning for a worker, called explicitly at its start, before torch is imported
(`service/cli/serve.py` `cmd_worker`; the benches call it too, to time the pipeline as a worker runs it).
Each setting is left alone where the operator set their own:

- glibc malloc keeps freed memory for the next job instead of unmapping it: by default each tensor of
  a few MB or more is a fresh mmap that the kernel zero-fills page by page, on every job, so a tiny
  Turbo 512² job took ~9,000-11,000 page faults and ~20-30% longer on this CPU (0 to 1 with this).
  A worker's working set is the same job after job, so RSS settles at its peak and stays there; two
  malloc arenas (not 8 per core) keep the encoder threads from each growing a heap of their own.
- torch's OpenMP threads busy-wait for work after each parallel region, by default for 300,000
  spins (some milliseconds) holding a core; on a small CPU that steals the core the encoder threads
  need right after inference (a 512² PNG took 8 ms instead of 5 here). 50,000 spins still bridge the
  gaps between the ops of one pipeline call. (libgomp reads GOMP_SPINCOUNT when torch loads it.)
"""

from __future__ import annotations

import ctypes
import os
import sys

_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
               "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # mallopt's options (malloc.h)


def keep_freed_memory() -> bool:
    """glibc's malloc keeps freed memory (no mmap per large block, no trimming, two arenas); False when
    the operator tuned malloc through the environment, or this is not glibc."""
    if any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    return all(mallopt(option, value) for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30),
                                                             (_M_ARENA_MAX, 2)))


def short_openmp_spin() -> bool:
    """OpenMP threads spin 50,000 times, not 300,000, before sleeping; False when the operator set a
    wait policy, or torch (and so libgomp) is already loaded and it is too late."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return False
    os.environ["GOMP_SPINCOUNT"] = "50000"
    return True


def tune_process() -> dict[str, bool]:
    """Both, as a worker process starts; what was applied."""
    return {"malloc": keep_freed_memory(), "openmp_spin": short_openmp_spin()}
