"""Process-level memory behaviour for the `grpo` command (glibc's heap).

glibc serves large allocations with mmap only up to a threshold that grows each time such a
block is freed; after the first training step, the step's big temporaries (gradients, logits
chunks, activations) come from the heap instead and are kept by the process when freed, so the
resident set stays near the high-water mark of everything ever allocated. The command fixes the
threshold at 1 MiB (`return_freed_memory`): every large tensor is then its own mapping, returned
to the system on free. But a fresh mapping costs a page fault per 4 KiB touched, hundreds of
thousands in one reference forward of a 135M-parameter model. So sampling and the reference
forward, which sit below the step's memory peak, run inside `reuse_freed_memory`: their
large blocks come from the heap and are reused from one layer, chunk or token to the next, and
the free heap is handed back when the phase ends. The update, where the peak is, reuses the heap
too but hands its free pages back at an interval (`trim_every`): from the heap alone its peak
grows (blocks of many sizes, freed in a different order than allocated, leave holes the next
block does not fit), and with fresh mappings alone it pays a page fault per 4 KiB touched. The
figures are in docs/performance.md (`python bench/alloc_probe.py`). No effect outside glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_libc = None
_threshold = None          # the mmap threshold set by return_freed_memory, once applied


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return _libc


def return_freed_memory(threshold: int = 1024 * 1024) -> bool:
    """Ask glibc to map every allocation above `threshold` bytes on its own. True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    global _threshold
    try:
        ok = bool(_c().mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
    _threshold = threshold if ok else None
    return ok


@contextlib.contextmanager
def reuse_freed_memory(limit: int = 32 * 1024 * 1024, trim_every: float | None = None):
    """Inside: allocations up to `limit` bytes (glibc allows 32 MiB at most) come from the heap,
    and freed heap memory is kept for the next allocation instead of being handed back; on exit
    the threshold is restored and the free heap trimmed. With `trim_every` (seconds), a helper
    thread also trims the free heap at that interval while inside, which bounds the holes the
    heap can gather. Does nothing unless `return_freed_memory` was applied (a library user's
    process keeps glibc's own behaviour)."""
    if _threshold is None:
        yield
        return
    lib = _c()
    lib.mallopt(M_TRIM_THRESHOLD, limit)
    lib.mallopt(M_MMAP_THRESHOLD, limit)
    stop = threading.Event()
    trimmer = None
    if trim_every:
        def run():
            while not stop.wait(trim_every):
                trim()
        trimmer = threading.Thread(target=run, name="grpo-heap-trim", daemon=True)
        trimmer.start()
    try:
        yield
    finally:
        stop.set()
        if trimmer is not None:
            trimmer.join()
        lib.mallopt(M_MMAP_THRESHOLD, _threshold)
        lib.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        trim()


def trim() -> None:
    """Hand the free pages inside glibc's heap back to the system (the small allocations of a
    step leave the heap holed; without this the resident set keeps those holes)."""
    if sys.platform.startswith("linux"):
        try:
            _c().malloc_trim(0)
        except (OSError, AttributeError):
            pass
