"""What every stage shares and none owns: the cache folder, the device, writing a folder atomically.

Imports nothing of the package: any module may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from .errors import DeviceError  # noqa: F401  (re-exported)


def cache_root() -> Path:
    """The project's cache folder: `$GRPO_CACHE`, else ~/.cache/grpo (the demo model, de-quantised
    GGUF files, the compiled kernel)."""
    return Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo"))


def pick_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else the CPU; anything else as torch spells it, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device: {name!r} is not a device name (expected auto, cpu, cuda, cuda:N, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device: {name!r} asked for, but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device: {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device: {name!r} asked for, but MPS is not available here; use --device cpu or auto")
    return device


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (the AVX-512 BF16 or AMX BF16 flags in Linux's
    cpuinfo); False where the file cannot be read (another OS: unknown, so not claimed)."""
    try:
        with open(cpuinfo) as f:                 # every core lists the same flags: the first line will do
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def atomic_folder(final: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden folder beside `final`; when the block ends without an error, that folder
    becomes `final` in one rename, so no reader ever sees it half-written and a crash leaves only
    the hidden folder, which is removed. `replace`: an existing `final` is removed first (a
    checkpoint written again); otherwise, when another process renamed its own folder into place
    first (two ranks building the same cache entry), theirs is kept."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if replace or not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_line(indent: int | None = None, **fields) -> str:
    """`fields` as one JSON line (newline included), or indented JSON without the newline."""
    return json.dumps(fields, indent=indent) + ("\n" if indent is None else "")
