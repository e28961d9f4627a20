"""The rollout seam: what an engine takes and what it gives back.

An engine turns prompts (left-padded token ids) and sampling settings into completions:

    engine.generate(model, prompt_ids (B, P), prompt_mask (B, P), sampling, seeds) -> Rollout

with `sampling.num_samples` completions per prompt (row b * num_samples + g belongs to prompt b)
and the sampler's own log-prob of every sampled token, which the trainer may use as pi_old.
`seeds` are integers (one per prompt), so an engine in another process can take them as well.
Three engines ship: the plain Hugging Face decoding loop (hf_loop.HFEngine), on a CPU the same
loop with grpo/fast's lean decoding step (fast.lean_decode.LeanEngine), and the static engine
(static.StaticEngine: fixed shapes, captured in CUDA graphs on a GPU). Each declares its
`capabilities`; the training step does not change with the engine. Multi-turn episodes
(grpo/envs) call an engine once per model turn and return a Rollout whose `sampled` mask marks the policy's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

Generators = torch.Generator | list[torch.Generator] | None     # one, or one per prompt
Seeds = int | list[int] | None                                    # the same, as integer seeds


def generators_of(seeds: "Seeds | Generators", device) -> Generators:
    """Generators on `device` from integer seeds (one, or one per prompt); generators as they are."""
    if seeds is None or isinstance(seeds, torch.Generator):
        return seeds
    if isinstance(seeds, int):
        return torch.Generator(device=device).manual_seed(seeds)
    return [s if isinstance(s, torch.Generator) else torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@dataclass(frozen=True)
class Capabilities:
    """What an engine gives back beyond the tokens. `exact_logprobs`: the log-probs are the
    sampling distribution's own (softmax(logits / T) at the sampled token), computed from the
    weights being trained; an engine outside this process may give its own approximation, which
    the rollout correction then accounts for. `entropies`: it records per-token entropies
    (top_entropy_quantile needs them)."""
    exact_logprobs: bool = True
    entropies: bool = True


@dataclass
class Rollout:
    prompt_ids: Tensor        # (N, P) left-padded
    prompt_mask: Tensor       # (N, P)
    completion_ids: Tensor    # (N, L) right-padded
    completion_mask: Tensor   # (N, L) bool: sampled tokens up to and including EOS
    logprobs: Tensor          # (N, L) sampling policy's log-probs, 0 where masked
    lengths: Tensor           # (N,) valid completion tokens (EOS included)
    truncated: Tensor         # (N,) bool: no EOS within max_new_tokens
    entropy: Tensor | None = None   # (N, L) entropy of the sampling distribution per token, where asked
    sampled: Tensor | None = None   # (N, L) bool: tokens the policy sampled (None: every valid one). A
                                    # multi-turn trajectory also holds the environment's tokens, which do
                                    # not carry loss (grpo/envs)
    turns: Tensor | None = None     # (N, L) int: the model turn (1, 2, ...) of each sampled token of an
                                    # episode, 0 on the environment's tokens and padding
    turn_rewards: Tensor | None = None   # (N, K) float: each model turn's own reward, NaN where none

    @property
    def loss_tokens(self) -> Tensor:
        """(N, L) bool: the tokens the policy produced, the only ones that may carry loss."""
        return self.completion_mask if self.sampled is None else self.sampled & self.completion_mask

    def select(self, idx: Tensor) -> "Rollout":
        return Rollout(*(None if getattr(self, f.name) is None else getattr(self, f.name)[idx] for f in fields(self)))


def concat(rolls: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts stacked row-wise: prompts left-padded, completions right-padded to the widest."""
    if len(rolls) == 1:
        return rolls[0]
    P = max(r.prompt_ids.shape[1] for r in rolls)
    L = max(r.completion_ids.shape[1] for r in rolls)

    def left(t, value):
        return torch.nn.functional.pad(t, (P - t.shape[1], 0), value=value)

    def right(t, value):
        return None if t is None else torch.nn.functional.pad(t, (0, L - t.shape[1]), value=value)

    with_entropy = all(r.entropy is not None for r in rolls)
    with_sampled = any(r.sampled is not None for r in rolls)
    with_turns = all(r.turns is not None for r in rolls)
    K = max(r.turn_rewards.shape[1] for r in rolls) if with_turns else 0
    return Rollout(prompt_ids=torch.cat([left(r.prompt_ids, pad_id) for r in rolls]),
                   prompt_mask=torch.cat([left(r.prompt_mask, 0) for r in rolls]),
                   completion_ids=torch.cat([right(r.completion_ids, pad_id) for r in rolls]),
                   completion_mask=torch.cat([right(r.completion_mask, False) for r in rolls]),
                   logprobs=torch.cat([right(r.logprobs, 0.0) for r in rolls]),
                   lengths=torch.cat([r.lengths for r in rolls]),
                   truncated=torch.cat([r.truncated for r in rolls]),
                   entropy=torch.cat([right(r.entropy, 0.0) for r in rolls]) if with_entropy else None,
                   sampled=torch.cat([right(r.loss_tokens, False) for r in rolls]) if with_sampled else None,
                   turns=torch.cat([right(r.turns, 0) for r in rolls]) if with_turns else None,
                   turn_rewards=torch.cat([torch.nn.functional.pad(r.turn_rewards, (0, K - r.turn_rewards.shape[1]),
                                                                   value=float("nan")) for r in rolls])
                   if with_turns else None)


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
    record_entropy: bool = False    # also record each step's entropy of softmax(logits / temperature)


class RolloutEngine(Protocol):
    """What the trainer asks of an engine. `capabilities` says what it gives back; an engine that
    takes the weights from the model itself (`owns_weights`: LoRA merged, cast to its decoding
    dtype) is handed the actor as it is, and `sync_weights(model, version)` brings its copy up to
    date (an engine in another process would receive the weights there)."""
    capabilities: Capabilities
    owns_weights: bool

    def generate(self, model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
                 seeds: Seeds | Generators = None) -> Rollout:
        """`sampling.num_samples` completions of every prompt row; see the module docstring.
        `seeds`: one integer seed for all rows, or one per prompt (generators are taken too)."""
        ...

    def sync_weights(self, model, version=None) -> None:
        """Take `model`'s current weights (a no-op when `version` is the one already taken)."""
        ...


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts, EOS and padding removed."""
    out = []
    for ids, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist()):
        out.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return out
