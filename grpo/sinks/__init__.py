"""Where a run's record goes: metrics sinks behind one interface.

A sink hears the run's configuration once, then each step's metrics (one flat dict of namespaced
keys) with a few of its sampled completions, each held-out evaluation, and at the end the run's
summary (None when the run stopped early or failed):

    sink.start(config: dict, step: int) -> None               # step: where a resumed run continues
    sink.log(metrics: dict, samples: list[dict]) -> None      # samples: one dict per completion
    sink.log_eval(step: int, when: str, result: dict) -> None   # when: before, during, after
    sink.close(summary: dict | None) -> None

`Sink` is a base class whose methods do nothing, so a sink writes only what it keeps. Always on:
`JsonlSink` (metrics.jsonl), `CompletionsSink` (completions.jsonl), `EvalSink` (eval.jsonl) and
`ConsoleSink`. `--report-to` adds the trackers of `trackers.py` (TensorBoard, Weights & Biases,
MLflow, trackio), each an optional install. Rank 0 alone opens sinks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import Sink, Sinks, flat_numbers
from .console import ConsoleSink
from .files import CompletionsSink, EvalSink, JsonlSink

# --report-to NAME -> (class in trackers.py, the module it needs, the extra that installs it)
TRACKERS = {"tensorboard": ("TensorBoardSink", "tensorboard", "tensorboard"),
            "wandb": ("WandbSink", "wandb", "wandb"),
            "mlflow": ("MlflowSink", "mlflow", "mlflow"),
            "trackio": ("TrackioSink", "trackio", "trackio")}
REPORT_TO = (*TRACKERS, "none")

__all__ = ["Sink", "Sinks", "JsonlSink", "CompletionsSink", "EvalSink", "ConsoleSink", "REPORT_TO", "TRACKERS",
           "missing_package", "open_trackers", "flat_numbers"]


def missing_package(name: str) -> str | None:
    """For a tracker whose package is not installed, the line that says how to install it."""
    _, module, extra = TRACKERS[name]
    if importlib.util.find_spec(module) is None:
        return f"{name} needs the {module} package: pip install 'grpo[{extra}]'"
    return None


def open_trackers(names: list[str], out: Path, project: str, run_name: str, resuming: bool, log) -> list[Sink]:
    """The trackers `names` asks for (none for `none`), each named once."""
    from . import trackers
    return [getattr(trackers, TRACKERS[n][0])(out, project, run_name, resuming, log)
            for n in dict.fromkeys(names) if n != "none"]
