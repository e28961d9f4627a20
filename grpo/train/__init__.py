"""Training: the loop (loop.py) over steps (step.py), each step's update (update.py) and metrics
(metrics.py), the phases' context (phases.py), the run state and checkpoints (state.py,
checkpoint.py), evaluation (evaluate.py), set-up and results (setup.py), and the one place the
CPU levers of grpo/fast plug in (levers.py)."""

from ..config import needs_reference
from .loop import build_run, train
from .step import Run, StepBatch, build_batch, collect_batch, train_step
from .update import update_policy

__all__ = ["train", "build_run", "train_step", "Run", "StepBatch", "build_batch", "collect_batch", "update_policy",
           "needs_reference"]
