"""A frozen module's weights kept in a file mapped into memory, resident only while it runs: the
reference policy of a full fine-tune on a CPU (`reference_in_file`)."""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import torch


class FileBackedWeights:
    """A frozen module's parameters and buffers, moved into one file that is mapped into memory.

    The frozen reference is read once per step, in its own forward pass, and sits idle through the
    update, which is the step's memory peak. Mapped from a file, its pages can be dropped after
    each use (`release`) and are read back from the page cache, or the disk, on the next forward:
    the process holds one copy of the weights fewer at the peak (docs/performance.md). The
    mapping is private and the file is unlinked as soon as it is mapped, so nothing stays on disk
    after the process ends, however it ends."""

    ALIGN = 64

    def __init__(self, module: torch.nn.Module, folder: str | Path):
        tensors, seen = [], set()
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() and id(t) not in seen:       # tied weights are stored once
                seen.add(id(t))
                tensors.append(t)
        offsets, size = [], 0
        for t in tensors:
            size += (-size) % self.ALIGN
            offsets.append(size)
            size += t.numel() * t.element_size()
        fd, path = tempfile.mkstemp(prefix=".grpo-reference-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                for t, off in zip(tensors, offsets):
                    fh.seek(off)
                    fh.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
                fh.truncate(size)
            with open(path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)   # private: never written back
        finally:
            os.unlink(path)
        raw = torch.frombuffer(self._map, dtype=torch.uint8)
        with torch.no_grad():
            for t, off in zip(tensors, offsets):
                n = t.numel() * t.element_size()
                t.data = raw[off:off + n].view(t.dtype).view(t.shape)

    def release(self) -> None:
        """Drop the resident pages (the next read maps them back in from the file)."""
        self._map.madvise(mmap.MADV_DONTNEED)


def spill_to(folder: str | Path):
    """A `spill` function for models.reference.Reference.frozen_copy: moves a module's weights into
    a file in `folder`."""
    return lambda module: FileBackedWeights(module, folder)
