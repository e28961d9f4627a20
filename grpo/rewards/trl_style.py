"""Reward functions written for TRL's GRPOTrainer, called the way grpo calls rewards.

TRL calls `f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
log_metric=..., **dataset_columns)`, every argument by keyword, with completions as text for
standard prompts and as `[{"role": "assistant", "content": text}]` for conversational ones (a
prompt that is a list of messages). `TRLStyle` wraps such a function into grpo's form
`f(prompts, completions, **columns)`. Torch-free, so that a reward worker can wrap the function it
loads (worker.py: a target written `trl:module:function`).
"""

from __future__ import annotations

from typing import Callable

PREFIX = "trl:"          # a reward worker's target for a TRL-style function


class TRLStyle:
    wants_completion_ids = True

    def __init__(self, fn: Callable, name: str | None = None, state=None, log_metric=None, log_extra=None):
        self.fn, self.state = fn, state
        self.__name__ = name or getattr(fn, "__name__", type(fn).__name__)
        self.log_metric = log_metric or (lambda name, value: None)
        self.log_extra = log_extra or (lambda column, values: None)

    def __call__(self, prompts, completions, completion_length=None, completion_ids=None, **columns):
        conversational = bool(prompts) and isinstance(prompts[0], (list, tuple))
        if conversational:
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        return self.fn(prompts=list(prompts), completions=list(completions), completion_ids=completion_ids,
                       trainer_state=self.state, log_extra=self.log_extra, log_metric=self.log_metric, **columns)

    def __repr__(self) -> str:
        return f"TRLStyle({self.__name__})"
