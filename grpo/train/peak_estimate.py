"""An estimate of a step's memory peak, from the model's sizes and the settings, made before the
first step so that a run that cannot fit says so instead of being killed by the system.

The estimate (fp32 unless the weights say otherwise; docs/models.md lists what it counts):
  weights            every parameter, once (the LoRA reference shares the actor's; a full
                     fine-tune's frozen reference twice, unless it is kept in a file), plus the
                     bf16 copies of LoRA's base weights under lora_base_dtype=bf16
  training state     per trainable parameter: its gradient and AdamW's two moments
  activations        the largest micro-batch's padded tokens x per layer (6 hidden + 3 intermediate
                     values; with gradient checkpointing one hidden value per layer plus one
                     layer's full set), its attention scores and probabilities (rows x heads x
                     width^2 per layer: a padded batch takes attention's plain path), the LM
                     head's softmax kept up to head_keep_mb
  sampling           the KV cache of B x G rows over prompt + max_new_tokens, and their logits
  libraries          a fixed allowance for torch and transformers
The peak is the larger of the update's and sampling's. A guide, not a bound.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..models.loading import hf_model
from ..models.lora import plain_lora_layers
from .microbatch import token_budget

LIBRARIES = 0.45 * 2 ** 30


@dataclass
class Estimate:
    update: float           # bytes at the update's peak
    sampling: float         # bytes at sampling's peak
    tokens: int             # padded tokens of the largest micro-batch
    micro_batches: int      # per minibatch, on this process

    @property
    def peak(self) -> float:
        return max(self.update, self.sampling)


def _sizes(net) -> dict:
    c = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    heads = getattr(c, "num_attention_heads", 1)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return dict(hidden=c.hidden_size, inter=getattr(c, "intermediate_size", 4 * c.hidden_size),
                layers=c.num_hidden_layers, vocab=c.vocab_size, heads=heads,
                kv=(getattr(c, "num_key_value_heads", None) or heads) * head_dim)


def estimate(cfg, actor, prompt_width: int, world_size: int = 1, reference_in_memory: bool = False) -> Estimate:
    """The peaks of one step of `cfg` with `actor` (already built, LoRA included)."""
    net = hf_model(actor)
    s = _sizes(net)
    params = list(actor.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * 4 for p in params if p.requires_grad)
    if cfg.lora_base_dtype == "bf16":               # the bf16 copies of LoRA's base weights
        weights += sum(m.base_layer.weight.numel() * 2 for m in plain_lora_layers(actor))
    seqs = cfg.prompts_per_step // world_size * cfg.group_size // cfg.minibatches
    width = prompt_width + cfg.max_new_tokens
    rows = max(1, -(-seqs // cfg.grad_accum))
    budget = token_budget(cfg.micro_batch_tokens)
    if budget and rows * width > budget:
        rows = max(1, budget // width)
    tokens = rows * width
    per_layer = tokens * 4 * (6 * s["hidden"] + 3 * s["inter"]) + rows * s["heads"] * width ** 2 * 4 * 2
    if cfg.gradient_checkpointing:
        acts = tokens * 4 * s["layers"] * s["hidden"] + per_layer
    else:
        acts = s["layers"] * per_layer
    head = min(rows * cfg.max_new_tokens * s["vocab"] * 4, cfg.head_keep_mb * 2 ** 20)
    head += min(cfg.logprob_chunk, tokens) * s["vocab"] * 4 * 2
    update = LIBRARIES + weights + 3 * trainable + acts + head
    gen_rows = cfg.prompts_per_step // world_size * cfg.group_size
    kv_cache = gen_rows * width * s["layers"] * 2 * s["kv"] * 4
    sampling = LIBRARIES + weights + 2 * trainable + kv_cache + gen_rows * s["vocab"] * 4 * 3
    if reference_in_memory:                        # a full fine-tune's frozen copy, resident throughout
        update, sampling = update + weights, sampling + weights
    return Estimate(update, sampling, tokens, math.ceil(seqs / rows))


def available_bytes() -> float | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident_bytes() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0.0


def advice(cfg) -> str:
    """The settings that lower the update's peak, in the order they help most."""
    tips = []
    budget = token_budget(cfg.micro_batch_tokens)
    if budget == 0 or budget > 1024:
        tips.append(f"--micro-batch-tokens {max(512, (budget or 8192) // 4)}")
    if not cfg.gradient_checkpointing:
        tips.append("--gradient-checkpointing")
    if not cfg.lora_rank:
        tips.append("--lora-rank 16")
    tips.append("fewer --prompts-per-step / --group-size / --max-new-tokens")
    return ", ".join(tips)


def describe(est: Estimate, cfg) -> str:
    gb = 2 ** 30
    return (f"memory: estimated peak {est.peak / gb:.1f} GB (update {est.update / gb:.1f} GB with "
            f"{est.micro_batches} micro-batch{'es' if est.micro_batches > 1 else ''} of up to {est.tokens} padded "
            f"tokens per minibatch; sampling {est.sampling / gb:.1f} GB)")


def available(device=None) -> float | None:
    """Bytes a run may still take on `device`: a GPU's free memory plus what this process holds
    there, or (a CPU, the default) the system's available memory plus this process's resident set."""
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    free = available_bytes()
    return None if free is None else free + resident_bytes()


def check(cfg, actor, prompt_width: int, world_size: int, reference_in_memory: bool, log,
          device=None) -> Estimate:
    """Log the estimate and the micro-batch plan; with `memory_check`, stop (ConfigError) when the
    estimate exceeds what the run may take on `device` (`available`)."""
    from ..config import ConfigError
    est = estimate(cfg, actor, prompt_width, world_size, reference_in_memory)
    log(describe(est, cfg))
    room = available(device)
    if cfg.memory_check and room is not None and est.peak > room:
        gb = 2 ** 30
        raise ConfigError(f"memory: the step needs about {est.peak / gb:.1f} GB, and this machine has "
                          f"{room / gb:.1f} GB for it; lower it with {advice(cfg)} "
                          "(or pass --no-memory-check to try anyway)")
    return est
