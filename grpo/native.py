"""A compiled CPU kernel for decoding's few-row products: W x^T with x of 6 to 32 rows.

Each decoding step multiplies one row per sequence by every weight matrix. BLAS libraries run
such a product as a general matrix multiply: they copy ("pack") the weight into a blocked
layout on every call, so each weight is read from memory, written, and read again, and at 16
rows MKL reaches about a third of its large-matrix rate. The kernel below reads each weight once
in place: a register block of 6 weight rows x 16 columns of x^T (12 AVX2 accumulators, one FMA
per weight element and column), the next blocks' rows prefetched, the rows split between
torch's OpenMP threads. On the 2-core development machine, SmolLM2-135M's 210 layer products
and its LM head at 16 rows took 34.3 + 7.5 ms per token against 50.2 + 17.3 ms through MKL
(`python bench/decode_matmul.py`, docs/performance.md).

The kernel is C, compiled on first use with the system's C compiler into the cache folder
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
import tempfile
from pathlib import Path

import torch
from torch import Tensor

MIN_ROWS, MAX_ROWS = 6, 32   # outside these MKL's product is as fast or faster (bench/decode_matmul.py)
ENABLED = os.environ.get("GRPO_NATIVE", "1") != "0"     # bench/alloc_probe.py turns it off to compare
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]

SOURCE = r"""
#include <immintrin.h>

/* Six weight rows (w0 and the five after it, K floats apart) times 16 columns of xt (row
   stride N), into six rows of y (row stride N). With `fetch`, the weight rows two blocks ahead
   are prefetched, one cache line per row every 16 floats (a prefetch past the end of W is
   harmless: it never faults). */
static inline void block6(const float *restrict w0, const float *restrict xt, float *restrict y,
                          long K, long N, int fetch) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps();
    __m256 c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps();
    __m256 c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K, *w4 = w3 + K, *w5 = w4 + K;
    for (long k = 0; k < K; k++) {
        if (fetch && (k & 15) == 0) {
            const float *p = w0 + 12 * K + k;
            for (int i = 0; i < 6; i++) _mm_prefetch((const char *)(p + i * K), _MM_HINT_T0);
        }
        __m256 b0 = _mm256_loadu_ps(xt + k * N), b1 = _mm256_loadu_ps(xt + k * N + 8), a;
        a = _mm256_broadcast_ss(w0 + k); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(w1 + k); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(w2 + k); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(w3 + k); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(w4 + k); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(w5 + k); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    }
    _mm256_storeu_ps(y, c00); _mm256_storeu_ps(y + 8, c01); y += N;
    _mm256_storeu_ps(y, c10); _mm256_storeu_ps(y + 8, c11); y += N;
    _mm256_storeu_ps(y, c20); _mm256_storeu_ps(y + 8, c21); y += N;
    _mm256_storeu_ps(y, c30); _mm256_storeu_ps(y + 8, c31); y += N;
    _mm256_storeu_ps(y, c40); _mm256_storeu_ps(y + 8, c41); y += N;
    _mm256_storeu_ps(y, c50); _mm256_storeu_ps(y + 8, c51);
}

/* One weight row times 16 columns of xt. */
static inline void block1(const float *restrict w0, const float *restrict xt, float *restrict y,
                          long K, long N) {
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    for (long k = 0; k < K; k++) {
        __m256 a = _mm256_broadcast_ss(w0 + k);
        c0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(xt + k * N), c0);
        c1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(xt + k * N + 8), c1);
    }
    _mm256_storeu_ps(y, c0); _mm256_storeu_ps(y + 8, c1);
}

/* y (O x N) = W (O x K, rows contiguous) @ xt (K x N); N a multiple of 16. Blocks of six weight
   rows are split between the OpenMP threads; each block meets every 16 columns while it is in
   cache. */
void grpo_wxt(const float *W, const float *xt, float *y, long O, long K, long N) {
    long blocks = O / 6;
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < blocks; b++)
        for (long n = 0; n < N; n += 16)
            block6(W + b * 6 * K, xt + n, y + b * 6 * N + n, K, N, n == 0);
    for (long o = blocks * 6; o < O; o++)
        for (long n = 0; n < N; n += 16)
            block1(W + o * K, xt + n, y + o * N + n, K, N);
}
"""

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


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"not Linux on x86-64 ({sys.platform}, {platform.machine()})"
    if not _cpu_has("avx2", "fma"):
        return None, "the CPU lacks AVX2 or FMA"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc or gcc) on PATH"
    tag = hashlib.sha256((SOURCE + " ".join(FLAGS) + cc).encode()).hexdigest()[:16]
    from .demo import cache_root      # the project's cache folder ($GRPO_CACHE or ~/.cache/grpo)
    folder = cache_root() / "native"
    lib = folder / f"few_rows-{tag}.so"
    if not lib.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                src, out = Path(tmp) / "few_rows.c", Path(tmp) / "few_rows.so"
                src.write_text(SOURCE)
                done = subprocess.run([cc, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
                if done.returncode != 0:
                    return None, f"{cc} failed: {done.stderr.strip()[:300]}"
                os.replace(out, lib)      # atomic: processes building at once each land a whole file
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
    if not ENABLED:
        return "switched off (GRPO_NATIVE=0 or native.ENABLED)"
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
