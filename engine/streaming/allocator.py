"""Keep freed blocks' memory returned to the system during a streamed run.

glibc serves large allocations with mmap and returns them to the system when freed, but each
time such a block is freed it raises its mmap threshold (up to 32 MiB), after which tensors
below the new threshold come from the heap, which fragments and seldom shrinks. Streaming
reads and frees one block after another: measured on a synthetic 1 GB Llama (22 blocks of
45 MB, tensors of 1-12 MB), RSS grew by ~20 MB per block that way and stayed flat with the
threshold fixed. Fixing it (mallopt M_MMAP_THRESHOLD, which also turns the adjustment off)
keeps every tensor of 1 MiB or more mmapped. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
THRESHOLD = 1 << 20


def fix_mmap_threshold() -> bool:
    """Whether the threshold was set (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
