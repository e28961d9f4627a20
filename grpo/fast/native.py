"""A compiled CPU kernel for decoding's few-row products: W x^T with x of 6 to 32 rows.

Each decoding step multiplies one row per sequence by every weight matrix. BLAS libraries run
such a product as a general matrix multiply: they copy ("pack") the weight into a blocked
layout on every call, so each weight is read from memory, written, and read again, and at a
handful of rows they reach a fraction of their large-matrix rate. The kernel (few_rows.c, beside
this file) reads each weight once in place: a register block of 6 weight rows x 16 columns of
x^T (12 AVX2 accumulators, one FMA per weight element and column), the next blocks' rows
prefetched, the rows split between torch's OpenMP threads. Measured in docs/performance.md
(`python bench/decode_matmul.py`).

It is compiled on first use with the system's C compiler into the cache folder
(`$GRPO_CACHE/native`, else ~/.cache/grpo/native) and loaded with ctypes; it needs Linux on
x86-64 with AVX2 and FMA, a C compiler with OpenMP, and fp32 contiguous weights. Anything else
(or `GRPO_NATIVE=0` in the environment) leaves the products to torch, with the same results up
to the order of the float sums. `why_not()` says which condition failed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

from ..files import atomic_folder, cache_root

MIN_ROWS, MAX_ROWS = 6, 32   # outside these MKL's product is as fast or faster (bench/decode_matmul.py)
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
SOURCE = Path(__file__).with_name("few_rows.c")

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_lib = None
_reason: str | None = None     # why the kernel is unavailable, once tried
_tried = False


def _cpu_has(*flags: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return all(f in have for f in flags)


class _BuildFailed(Exception):
    """The compiler refused the kernel (its message)."""


def _compile(cc: str, folder: Path) -> None:
    """Build the kernel into `folder`, atomically: processes building at once each land a whole one."""
    with atomic_folder(folder) as tmp:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp / "few_rows.so")], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise _BuildFailed(f"{cc} failed: {done.stderr.strip()[:300]}")


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"not Linux on x86-64 ({sys.platform}, {platform.machine()})"
    if not _cpu_has("avx2", "fma"):
        return None, "the CPU lacks AVX2 or FMA"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc or gcc) on PATH"
    tag = hashlib.sha256((SOURCE.read_text() + " ".join(FLAGS) + cc).encode()).hexdigest()[:16]
    folder = cache_root() / "native" / f"few_rows-{tag}"
    lib = folder / "few_rows.so"
    if not lib.exists():
        try:
            _compile(cc, folder)
        except _BuildFailed as e:
            return None, str(e)
        except OSError as e:
            return None, f"could not build in {folder}: {e}"
    try:
        handle = ctypes.CDLL(str(lib))
    except OSError as e:
        return None, f"could not load {lib}: {e}"
    handle.grpo_wxt.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3
    handle.grpo_wxt.restype = None
    return handle, None


def why_not() -> str | None:
    """Why the kernel cannot run here (building it on first call), or None if it can."""
    global _lib, _reason, _tried
    if os.environ.get("GRPO_NATIVE", "1") == "0":
        return "switched off (GRPO_NATIVE=0)"
    if not _tried:
        _tried = True
        _lib, _reason = _build()
    return _reason


def left_product(weight: Tensor, x: Tensor) -> Tensor | None:
    """x W^T for a 2-D x of MIN_ROWS to MAX_ROWS rows, as a (rows, out) transposed view of the
    kernel's (out, rows) result; None when the kernel does not apply (then use torch)."""
    rows = x.shape[0]
    if (rows < MIN_ROWS or rows > MAX_ROWS or type(weight) not in _PLAIN or type(x) not in _PLAIN   # no DTensor etc.
            or weight.dtype != torch.float32 or x.dtype != torch.float32
            or weight.device.type != "cpu" or x.device.type != "cpu" or weight.dim() != 2
            or not weight.is_contiguous() or weight.numel() == 0
            or torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad) or why_not() is not None):
        return None
    n = (rows + 15) // 16 * 16
    if n == rows and x.t().is_contiguous():
        xt = x.t()          # already laid out as (in, rows): the kernel's own output is
    else:
        xt = x.new_empty(x.shape[1], n)
        xt[:, :rows] = x.t()
        if n > rows:
            xt[:, rows:].zero_()
    y = x.new_empty(weight.shape[0], n)
    _lib.grpo_wxt(weight.data_ptr(), xt.data_ptr(), y.data_ptr(), weight.shape[0], weight.shape[1], n)
    return y.t() if n == rows else y[:, :rows].t()
