"""The machine a run uses: the device a `--device` name means (checked to exist), and whether this
CPU multiplies bf16 natively. Imports nothing of the package but its errors."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DeviceError


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
