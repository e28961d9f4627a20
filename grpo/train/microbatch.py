"""How a minibatch is cut into micro-batches: by a token budget, sequences of similar length together.

A micro-batch's forward and backward hold activations for every position of its padded rows:
rows x (prompt width + its longest completion). `plan` keeps that product within
`micro_batch_tokens`: the minibatch's sequences sorted by completion length, longest first, are
packed greedily, so each micro-batch is padded only to its own longest row (`trim` cuts the
columns past it). `grad_accum` is the least number of micro-batches; while the budget does not
bind, the minibatch is split `grad_accum` ways in its own order, as before the budget existed. The
loss's normalisers are the minibatch's own counts (update.py), so any plan gives the same loss and
gradients up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rollout import Rollout

AUTO_BUDGETS = (4096, 2048, 1024)      # what micro_batch_tokens auto tries, in turn (train/hardware.py)


def token_budget(micro_batch_tokens: int | None) -> int:
    """The budget a `micro_batch_tokens` setting gives: left to auto and not resolved (outside a
    run), the largest auto takes."""
    return AUTO_BUDGETS[0] if micro_batch_tokens is None else micro_batch_tokens


def padded_tokens(rows: int, prompt_width: int, longest: int) -> int:
    return rows * (prompt_width + longest)


def plan(seqs: Tensor, lengths: Tensor, prompt_width: int, budget: int | None, least: int = 1) -> list[Tensor]:
    """Micro-batches (index tensors into the rollout) of `seqs`; `lengths` (N,) the completion
    lengths of every sequence of the rollout; `budget` 0: no token budget."""
    budget = token_budget(budget)
    n = len(seqs)
    if n == 0:
        return []
    own = lengths[seqs]
    if not budget or padded_tokens(-(-n // least), prompt_width, int(own.max())) <= budget:
        return [m for m in torch.tensor_split(seqs, least) if len(m)]          # the budget does not bind
    order = seqs[torch.argsort(own, descending=True, stable=True)]
    parts, start = [], 0
    while start < n:
        longest = int(lengths[order[start]])              # sorted: the first row is the longest
        rows = max(1, min(n - start, budget // (prompt_width + longest)))
        parts.append(order[start:start + rows])
        start += rows
    while len(parts) < least:                            # fewer parts than asked for: split the largest
        big = max(range(len(parts)), key=lambda i: len(parts[i]))
        if len(parts[big]) < 2:
            break
        parts[big:big + 1] = list(torch.tensor_split(parts[big], 2))
    return parts


def trim(roll: Rollout) -> tuple[Rollout, int]:
    """`roll` with its completion columns cut to its own longest completion; (the rollout, width)."""
    width = max(int(roll.lengths.max()), 1) if roll.lengths.numel() else roll.completion_ids.shape[1]
    if width >= roll.completion_ids.shape[1]:
        return roll, roll.completion_ids.shape[1]
    return Rollout(roll.prompt_ids, roll.prompt_mask, roll.completion_ids[:, :width], roll.completion_mask[:, :width],
                   roll.logprobs[:, :width], roll.lengths, roll.truncated,
                   None if roll.entropy is None else roll.entropy[:, :width],
                   None if roll.sampled is None else roll.sampled[:, :width]), width
