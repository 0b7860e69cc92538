"""The GPU worker side of Fresco: resident models, task pipelines, encoding (see workers/worker.py).

Two process-wide settings, made as this package is imported, before torch does any work, each left
alone where the operator set its own:

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

import ctypes
import os

_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _keep_freed_memory() -> bool:
    if any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(mallopt(option, value) for option, value in ((m_mmap_max, 0), (m_trim_threshold, 1 << 30),
                                                             (m_arena_max, 2)))


MALLOC_TUNED = _keep_freed_memory()
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "50000")
