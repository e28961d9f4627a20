"""Where the speed and memory levers of grpo/fast plug into the seams they serve.

With the `grpo` command's process-wide allocation policy (cli.py), the only place that imports
grpo/fast. `plug(levers, device)` gives each seam its piece: the rollout engine, the LM-head
computation of log-probs, the product LoRA's merged weights sample with, the reference's
file-backed weights, and the heap policy of each training phase. A lever that is off, grpo/fast
missing, or a device the lever does not serve (the CPU levers on a GPU) gives the plain piece.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import Levers
from ..rollout import ENGINES, HFEngine, RolloutEngine

try:                                         # grpo/fast is optional: without it, every lever is off
    from ..fast import file_weights, fused_head, heap, lean_decode
    from ..fast.few_rows import FewRows
except ImportError:
    FewRows = None


def _no_heap_policy(phase: str):
    return contextlib.nullcontext()


@dataclass
class Plugged:
    """What the levers give each seam."""
    engine: RolloutEngine                              # sampling and evaluation
    head: object | None = None                         # models.logprobs.token_stats' `head`
    merged_product: Callable = torch.nn.functional.linear   # models.lora.lora_merged's `product`
    spill: Callable | None = None                      # folder -> Reference.frozen_copy's `spill`
    heap_policy: Callable = _no_heap_policy            # phase name -> context for its allocations


def plug(levers: Levers, device: torch.device | str = "cpu", engine: str = "auto",
         dtype: torch.dtype | None = None) -> Plugged:
    """The pieces `levers` ask for on `device` (the plain ones without grpo/fast). The CPU levers
    (the lean step, few-row products, file-backed reference, heap policy) serve a CPU only;
    elsewhere the plain pieces run. `engine` (the setting): `static` or `hf` as named, `auto` the
    static engine on CUDA and the plain loop with the CPU levers elsewhere. `dtype`: the static
    engine's decoding dtype (None: bf16 under autocast, else the weights')."""
    device = torch.device(device)
    static = engine == "static" or (engine == "auto" and device.type == "cuda")
    head = fused_head.FusedHead(levers.head_keep_mb * 2 ** 20) if FewRows is not None and levers.fused_head else None
    if FewRows is None or device.type != "cpu":
        return Plugged(ENGINES["static"](dtype=dtype) if static else HFEngine(), head=head)
    products = FewRows(levers.few_rows_max, levers.native_kernel)
    if static:
        chosen = ENGINES["static"](dtype=dtype)
    elif levers.lean_decode:
        chosen = lean_decode.LeanEngine(products)
    elif levers.few_rows_max:
        chosen = HFEngine(scope=products.decoding_linears)
    else:
        chosen = HFEngine()
    return Plugged(engine=chosen, head=head,
                   merged_product=products.linear if levers.few_rows_max else torch.nn.functional.linear,
                   spill=file_weights.spill_to if levers.reference_in_file else None,
                   heap_policy=_heap_policy(levers))


def _heap_policy(levers: Levers) -> Callable:
    """Sampling and the reference pass reuse the heap; the update reuses it and trims it every
    `heap_trim_every` seconds (0: fresh mappings there); scoring keeps the process default."""
    if not levers.heap_reuse:
        return _no_heap_policy

    def policy(phase: str):
        if phase in ("generate", "reference"):
            return heap.reuse_freed_memory()
        if phase == "policy" and levers.heap_trim_every:
            return heap.reuse_freed_memory(trim_every=levers.heap_trim_every)
        return contextlib.nullcontext()
    return policy
