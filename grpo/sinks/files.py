"""The sinks that write the run folder's JSONL files: metrics, completions, evaluations."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .base import Sink


class _Lines(Sink):
    """One JSON object per line, flushed at once so a crash loses nothing already written."""

    def __init__(self, path: str | Path):
        self.fh = open(path, "a")

    def write(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()

    def close(self, summary: dict | None = None) -> None:
        self.fh.close()


class JsonlSink(_Lines):
    """metrics.jsonl: each step's metrics."""

    def log(self, metrics: dict, samples: list[dict] | None = None) -> None:
        self.write(metrics)


class CompletionsSink(_Lines):
    """completions.jsonl: each step's logged completions, one per line, with the step."""

    def log(self, metrics: dict, samples: list[dict]) -> None:
        for s in samples:
            self.write({"step": metrics["step"], **s})


class EvalSink(_Lines):
    """eval.jsonl: each held-out evaluation, with its step and when (before, during, after)."""

    def log_eval(self, step: int, when: str, result: dict) -> None:
        self.write({"step": step, "when": when, **result})
