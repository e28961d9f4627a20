"""Process-level memory behaviour for the `grpo` command.

glibc serves large allocations with mmap only up to a threshold that grows each time such a
block is freed; after the first training step, the step's big temporaries (gradients, logits
chunks, activations) come from the heap instead and are kept by the process when freed, so the
resident set stays near the high-water mark of everything ever allocated. Fixing the threshold at
128 KiB makes every large tensor its own mapping, returned to the system on free: on the W1
benchmark (bench/bench.py) peak RSS drops by about 0.8 GB. No effect outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold: int = 128 * 1024) -> bool:
    """Ask glibc to map every allocation above `threshold` bytes on its own. True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
