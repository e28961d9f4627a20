"""The rollout seam: what an engine takes and what it gives back.

An engine turns prompts (left-padded token ids) and sampling settings into completions:

    engine.generate(model, prompt_ids (B, P), prompt_mask (B, P), sampling, generator) -> Rollout

with `sampling.num_samples` completions per prompt (row b * num_samples + g belongs to prompt b)
and the sampler's own log-prob of every sampled token, which the trainer may use as pi_old. Two
engines ship: the plain Hugging Face decoding loop (hf_loop.HFEngine) and, on a CPU, the same loop
with grpo/fast's lean decoding step (fast.lean_decode.LeanEngine). A multi-turn driver or a GPU
engine implements the same call; the training step does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

Generators = torch.Generator | list[torch.Generator] | None     # one, or one per prompt


@dataclass
class Rollout:
    prompt_ids: Tensor        # (N, P) left-padded
    prompt_mask: Tensor       # (N, P)
    completion_ids: Tensor    # (N, L) right-padded
    completion_mask: Tensor   # (N, L) bool: sampled tokens up to and including EOS
    logprobs: Tensor          # (N, L) sampling policy's log-probs, 0 where masked
    lengths: Tensor           # (N,) valid completion tokens (EOS included)
    truncated: Tensor         # (N,) bool: no EOS within max_new_tokens

    def select(self, idx: Tensor) -> "Rollout":
        return Rollout(*(getattr(self, f.name)[idx] for f in fields(self)))


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample. Log-probs are those of softmax(logits / temperature), before top-k/top-p
    truncation and before the min_new_tokens EOS ban: the distribution the trainer's log-probs use."""
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0
    greedy: bool = False


class RolloutEngine(Protocol):
    def generate(self, model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
                 generator: Generators = None) -> Rollout:
        """`sampling.num_samples` completions of every prompt row; see the module docstring."""
        ...


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts, EOS and padding removed."""
    out = []
    for ids, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist()):
        out.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return out
