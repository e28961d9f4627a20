"""Defaults chosen from the hardware: the settings a run leaves at `auto`, resolved once for its
device and model.

Precision (before the model is wrapped: `resolve_precision`). Where the hardware multiplies bf16
natively (a CUDA GPU that supports it; a CPU with AVX-512 BF16 or AMX, for a model of at least
BF16_MIN_PARAMS parameters, where the weights' bytes set the pace), the passes that do not train
run in bf16: sampling (`rollout_dtype`, with `rollout_correction tis` where the preset corrects
nothing, since the sampler's log-probs then differ from the trainer's), the reference pass
(`reference_dtype`) and, with LoRA, the frozen base products (`lora_base_dtype`). On CUDA the
forward passes also run under bf16 autocast (`bf16`), the master weights staying fp32. Elsewhere
each stays fp32, which is exact to the formula; every one is a flag away either way. Under
--fsdp the sampling and LoRA-base copies are refused, so `auto` gives fp32 there.

Memory (once the model is built: `resolve_memory`), from the memory the run may take
(peak_estimate.available: the GPU's free memory on CUDA, the system's available memory on a CPU).
`micro_batch_tokens` auto: the first of 4096, 2048, 1024 tokens whose estimated update peak
(train/peak_estimate.py) stays within 80% of that memory, so the update's products stay large; on a CPU
also within 10% of the 1024-token peak, so a larger micro-batch is taken only where it costs
little memory (a checkpointed full fine-tune: fewer, larger products ran faster; LoRA without
checkpointing: larger micro-batches held a third more memory and ran no faster;
docs/performance.md). `gradient_checkpointing`
auto: on only where the estimated peak without it does not fit (checkpointing costs a recomputed
forward), off elsewhere.
"""

from __future__ import annotations

import torch

from ..device import cpu_has_bf16
from ..config import needs_reference
from .microbatch import AUTO_BUDGETS

BF16_MIN_PARAMS = 50_000_000       # below this, sampling a CPU model is not bound by its weights' bytes
AUTO = ("bf16", "rollout_dtype", "reference_dtype", "lora_base_dtype", "gradient_checkpointing", "micro_batch_tokens")
CPU_PEAK_ALLOWANCE = 1.1        # on a CPU, a larger micro-batch only where its peak is within 10% of the smallest's


def native_bf16(device: torch.device, n_params: int, has_bf16=cpu_has_bf16) -> bool:
    """Whether bf16 pays on `device` for a model of `n_params` parameters."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and n_params >= BF16_MIN_PARAMS and has_bf16()


def resolve_precision(cfg, device, n_params: int, sharded: bool = False, has_bf16=cpu_has_bf16) -> str | None:
    """Resolve the `auto` precision settings of `cfg` in place; a line saying what `auto` chose
    (None when nothing was left at auto)."""
    device = torch.device(device)
    native = native_bf16(device, n_params, has_bf16)
    chosen = []
    if cfg.bf16 is None:
        cfg.bf16 = device.type == "cuda" and native
        chosen.append(f"bf16 autocast {'on' if cfg.bf16 else 'off'}")
    bf16_sampling_by_auto = cfg.rollout_dtype == "auto" and native and not sharded
    for name, allowed in (("rollout_dtype", not sharded), ("reference_dtype", needs_reference(cfg)),
                          ("lora_base_dtype", bool(cfg.lora_rank) and not sharded)):
        if getattr(cfg, name) == "auto":
            setattr(cfg, name, "bf16" if native and allowed else "fp32")
            if allowed:
                chosen.append(f"{name} {getattr(cfg, name)}")
    if bf16_sampling_by_auto and cfg.rollout_correction == "none":
        cfg.rollout_correction = "tis"
        chosen.append("rollout_correction tis")
    if not chosen:
        return None
    if native:
        why = f"the {'GPU' if device.type == 'cuda' else 'CPU'} multiplies bf16 natively"
    elif device.type == "cpu" and has_bf16():
        why = f"a model under {BF16_MIN_PARAMS / 1e6:.0f}M parameters"
    else:
        why = "no native bf16 products here"
    return f"precision (auto; {why}): " + ", ".join(chosen)


def unresolved(cfg, key: str) -> bool:
    """`key` is a setting `auto` resolves that `cfg` still leaves to it (so a value resolved
    earlier, as a checkpoint records it, is not a change); rollout_correction counts while
    rollout_dtype is left to auto, which may switch it on."""
    if key == "rollout_correction":
        return cfg.rollout_dtype == "auto"
    return key in AUTO and getattr(cfg, key) in (None, "auto")


def resolve_memory(cfg, device, estimate_with, log) -> list[str]:
    """Resolve `micro_batch_tokens` and `gradient_checkpointing` left at auto, in place.
    `estimate_with(**settings)` gives memory.Estimate of the run with those settings changed.
    Returns what was chosen (and logs it)."""
    from .peak_estimate import available
    device = torch.device(device)
    room = available(device)
    chosen = []
    if cfg.micro_batch_tokens is None:
        gc = bool(cfg.gradient_checkpointing)
        peaks = {t: estimate_with(micro_batch_tokens=t, gradient_checkpointing=gc).update for t in AUTO_BUDGETS}
        least = peaks[AUTO_BUDGETS[-1]]
        fits = [t for t in AUTO_BUDGETS if (room is None or peaks[t] <= 0.8 * room)
                and (device.type == "cuda" or peaks[t] <= CPU_PEAK_ALLOWANCE * least)]
        cfg.micro_batch_tokens = (fits or AUTO_BUDGETS[-1:])[0]
        chosen.append(f"micro_batch_tokens {cfg.micro_batch_tokens}")
    if cfg.gradient_checkpointing is None:
        without = estimate_with(gradient_checkpointing=False)
        cfg.gradient_checkpointing = room is not None and without.peak > room
        chosen.append(f"gradient_checkpointing {'on' if cfg.gradient_checkpointing else 'off'} (the estimate without "
                      f"it: {without.peak / 2 ** 30:.1f} GB{f' of {room / 2 ** 30:.1f} GB' if room else ''})")
    if chosen:
        log("memory (auto): " + ", ".join(chosen))
    return chosen
