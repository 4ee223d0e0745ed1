"""Keep freed memory in the process: glibc's malloc hands large blocks back to the OS when they are freed
(blocks over M_MMAP_THRESHOLD are mmap'ed and munmap'ed, and the heap is trimmed past M_TRIM_THRESHOLD). A CPU
model that allocates its activations anew on every forward pass then pays fresh page faults for them each time:
20 conv passes took 65,943 page faults with glibc's defaults and 539 after this call (tests/test_malloc.py).
Measured on the 2-vCPU machine, a fresh process ran `onade.inpaint` on `small` at batch 8 at 5.5 images/s over
repeated calls; after this call it ran at 8.2 (bench/serve.py, docs/benchmarks.md "Serving").
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the dynamic threshold (64-bit)
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; False where the C library has no mallopt (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
