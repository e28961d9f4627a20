"""Scoring completions: reward functions called in batches, combined with weights.

A reward function takes `(prompts, completions, **columns)` (lists, one entry per completion;
`columns` are the data row's other fields, e.g. `answer`) and returns one float per completion,
or None for "cannot score" (counted, and treated as 0).
"""

from __future__ import annotations

import math
from typing import Callable

import torch


class RewardError(RuntimeError):
    """A reward function raised, or returned something other than one number per completion."""


def _call(name: str, fn: Callable, prompts, completions, columns) -> list:
    try:
        return list(fn(prompts, completions, **columns))
    except Exception as batch_error:
        # find the first sample that fails on its own, to name it
        for i in range(len(completions)):
            try:
                fn(prompts[i:i + 1], completions[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})
            except Exception as e:
                raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {e} on sample {i} "
                                  f"(prompt {prompts[i]!r}, completion {completions[i]!r})") from e
        raise RewardError(f"reward function {name!r} raised {type(batch_error).__name__}: {batch_error} "
                          f"on a batch of {len(completions)} completions") from batch_error


def score(reward_fns: dict[str, tuple[Callable, float]], prompts: list[str], completions: list[str],
          columns: dict[str, list]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Weighted sum of every reward function.  Returns (total (N,), per-function (N,) each, unscorable count)."""
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    per_fn, unscorable = {}, 0
    for name, (fn, weight) in reward_fns.items():
        values = _call(name, fn, prompts, completions, columns)
        if len(values) != n:
            raise RewardError(f"reward function {name!r} returned {len(values)} values for {n} completions")
        clean = []
        for i, v in enumerate(values):
            if v is None:
                unscorable += 1
                clean.append(0.0)
                continue
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise RewardError(f"reward function {name!r} returned {v!r} for sample {i}; "
                                  "expected a finite number or None")
            clean.append(float(v))
        per_fn[name] = torch.tensor(clean, dtype=torch.float32)
        total += weight * per_fn[name]
    return total, per_fn, unscorable


def build_reward_fns(cfg, task, device=None) -> dict[str, tuple[Callable, float]]:
    """The run's weighted reward functions: --reward specs (default: the task's own rewards),
    plus --reward-model and the overlong penalty when configured."""
    return {name: (fn, 1.0) for name, fn in task.rewards.items()}
