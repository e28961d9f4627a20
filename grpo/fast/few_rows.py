"""Decoding's products with the weight on the left.

Decoding multiplies a handful of rows (one token per sequence) by every weight matrix, so it
streams the weights from memory once per token. MKL does that far better with the weight as the
left operand, W x^T, than as x W^T; from native.MIN_ROWS to native.MAX_ROWS rows the compiled
kernel does it faster still (docs/performance.md). The same products up to rounding; the result
is a transposed view, which the following ops accept.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import compat
from . import native


class FewRows:
    """x W^T as (W x^T)^T for inputs of at most `max_rows` rows on a CPU (0: never); through the
    compiled kernel where it applies when `use_native`."""

    def __init__(self, max_rows: int = 128, use_native: bool = True):
        self.max_rows, self.use_native = max_rows, use_native

    def applies(self, rows: int) -> bool:
        return 0 < rows <= self.max_rows

    def left_product(self, weight: Tensor, x: Tensor) -> Tensor:
        """x W^T for a 2-D x on a CPU, as a transposed view of W x^T."""
        out = native.left_product(weight, x) if self.use_native else None
        return out if out is not None else torch.mm(weight, x.t()).t()

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """x W^T + b, the weight on the left where it applies, else torch's linear."""
        rows = x.numel() // x.shape[-1] if x.numel() else 0
        if not self.applies(rows) or x.device.type != "cpu" or x.dtype != weight.dtype:
            return torch.nn.functional.linear(x, weight, bias)
        out = self.left_product(weight, x.reshape(rows, x.shape[-1]))              # (rows, out)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @contextlib.contextmanager
    def decoding_linears(self, model):
        """Inside: every plain nn.Linear of `model` (and any layer already given a fixed-weight
        forward) computes through `linear`. For sampling only (no gradients are taken inside). A
        model off the CPU is left as it is."""
        patched = []
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        for m in model.modules() if on_cpu else ():
            if type(m) is torch.nn.Linear and compat.own_forward(m) is None:
                compat.set_forward(m, compat.FixedLinear(m.weight, m.bias, self.linear))
                patched.append(m)
        try:
            yield model
        finally:
            for m in patched:
                compat.restore_forward(m)
