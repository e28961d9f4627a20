"""Process-level memory behaviour for the `grpo` command.

glibc serves large allocations with mmap only up to a threshold that grows each time such a
block is freed; after the first training step, the step's big temporaries (gradients, logits
chunks, activations) come from the heap instead and are kept by the process when freed, so the
resident set stays near the high-water mark of everything ever allocated. Fixing the threshold at
1 MiB makes every large tensor its own mapping, returned to the system on free: on the W1
benchmark (bench/bench.py) peak RSS drops from 3.97 to 3.18 GB. A lower threshold saves no more
there and makes the many small per-token allocations of decoding page-fault (128 KiB doubled the
demo's step time; 1 MiB costs it about 20%). No effect outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc


def return_freed_memory(threshold: int = 1024 * 1024) -> bool:
    """Ask glibc to map every allocation above `threshold` bytes on its own. True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_c().mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def trim() -> None:
    """Hand the free pages inside glibc's heap back to the system (the small allocations of a
    step leave the heap holed; without this the resident set keeps ~0.2 GB of holes on W1)."""
    if sys.platform.startswith("linux"):
        try:
            _c().malloc_trim(0)
        except (OSError, AttributeError):
            pass
