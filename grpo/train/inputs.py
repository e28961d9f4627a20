"""What a Python caller hands the trainer besides its settings: objects that take the place of a
setting (a dataset instead of --dataset, functions instead of --reward module:function, a loaded
model instead of --model, an environment class instead of --env), and callbacks.

The command line passes none of these; `grpo.fit` (grpo/api) builds them from Python objects.
A callback is any object with some of these methods (the others are not called):

    on_train_begin(info)                 info: {"output_dir", "max_steps", "step" (> 0 on resume), "model"
                                         (the model being trained, LoRA-wrapped where asked), "tokenizer"}
    on_step_begin(step)                  before step `step` samples
    on_step_end(step, metrics) -> bool   the step's metrics (metrics.jsonl's row); True stops the run
                                         after this step (a checkpoint is written when checkpointing is on)
    on_evaluate(step, when, result)      a held-out evaluation ("before", "during", "after")
    on_save(step, path)                  a checkpoint was written
    on_train_end(summary)                the run's summary (summary.json)

Callbacks run on the main process only (rank 0 under torchrun).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

EVENTS = ("on_train_begin", "on_step_begin", "on_step_end", "on_evaluate", "on_save", "on_train_end")


@dataclass
class Inputs:
    task: Any = None                   # data.tasks.Task: the prompts and held-out rows (instead of --dataset/--task)
    rewards: list[tuple[str, Callable, float]] = field(default_factory=list)   # (name, fn, weight), added to --reward's
    model: Any = None                  # a loaded causal LM (instead of --model)
    tokenizer: Any = None              # its tokenizer (default: loaded from the model's name_or_path)
    env: Any = None                    # an environment class, or anything that makes one episode's object
    callbacks: list = field(default_factory=list)


class Callbacks:
    """The run's callbacks, each event called on every callback that has it, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def _call(self, event: str, *args) -> list:
        return [getattr(cb, event)(*args) for cb in self.callbacks if callable(getattr(cb, event, None))]

    def train_begin(self, info: dict) -> None:
        self._call("on_train_begin", info)

    def step_begin(self, step: int) -> None:
        self._call("on_step_begin", step)

    def step_end(self, step: int, metrics: dict) -> bool:
        """True when a callback asks to stop."""
        return any(bool(r) for r in self._call("on_step_end", step, dict(metrics)))

    def evaluate(self, step: int, when: str, result: dict) -> None:
        self._call("on_evaluate", step, when, dict(result))

    def save(self, step: int, path) -> None:
        self._call("on_save", step, path)

    def train_end(self, summary: dict) -> None:
        self._call("on_train_end", dict(summary))
