"""Keep freed tensor memory in the process on CPU, so big activations are not page-faulted in again.

glibc serves an allocation above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap`` and returns it with ``munmap`` when freed; the next allocation of that size is new memory
the kernel zero-fills page by page. A VGG-16 activation of a batch (64 channels at 384 x 384 x 4
images: 151 MB) is far above that threshold, so on CPU every layer of every forward pays those page
faults: bench/ measured 0.6 s of system time in a 3.6 s batch-4 forward. Raising the threshold (and
the trim threshold with it) lets the heap keep and reuse the memory: the batched forward then costs
what batch 1 costs per image. The memory stays with the process (its peak resident size is what it
was anyway). ``wsss.tasks.trainer.build_trainer`` calls ``retain_freed_memory`` for every stage whose
Trainer runs on the CPU (the one call site).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 30
"""1 GiB: tensors up to this size come from the reusable heap."""
INT_MAX = 2**31 - 1  # mallopt takes a C int


GLIBC_MAX_DYNAMIC = 32 << 20
"""The highest mmap threshold glibc's own adjustment reaches (64-bit): its steady state for big tensors."""


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes) for this process; False when this is not glibc."""
    for value in (mmap_threshold, trim_threshold):
        if not 0 < value <= INT_MAX:
            raise ValueError(f"malloc threshold {value} bytes; give 1 .. {INT_MAX}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(
        mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(M_TRIM_THRESHOLD, int(trim_threshold))
    )


def retain_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve tensors up to ``threshold`` bytes from the heap and keep up to twice that (at most
    2 GiB - 1) of freed memory before trimming, for this process.

    Returns True when set; False (nothing changed) off glibc or when glibc refuses the value.
    Safe to call more than once.
    """
    return set_malloc_thresholds(threshold, min(2 * int(threshold), INT_MAX))
