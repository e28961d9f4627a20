"""Where a step's record goes: metrics sinks behind one interface.

A sink takes each step's metrics (one flat dict of namespaced keys) and a few of its sampled
completions, and is closed when the run ends:

    sink.log(metrics: dict, samples: list[dict]) -> None     # samples: {"prompt", "completion", "reward"}
    sink.close() -> None

Shipped: `JsonlSink` (metrics.jsonl), `CompletionsSink` (completions.jsonl) and `ConsoleSink`
(one line per step above the progress bar). Rank 0 alone logs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm


class Sink(Protocol):
    def log(self, metrics: dict, samples: list[dict]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line; flushed every step so a crash loses nothing already logged."""

    def __init__(self, path: str | Path):
        self.fh = open(path, "a")

    def log(self, metrics: dict, samples: list[dict] | None = None) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class CompletionsSink:
    """Each step's logged completions, one JSON object per line: step, prompt, completion, reward."""

    def __init__(self, path: str | Path):
        self.fh = open(path, "a")

    def log(self, metrics: dict, samples: list[dict]) -> None:
        for s in samples:
            self.fh.write(json.dumps({"step": metrics["step"], **s}) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class ConsoleSink:
    """One readable line per step, printed above the progress bar."""

    KEYS = [("reward/mean", "reward", "{:.3f}"), ("loss", "loss", "{:+.4f}"), ("kl", "kl", "{:.4f}"),
            ("beta", "beta", "{:.3g}"), ("length/mean", "len", "{:.1f}"), ("clip/high_frac", "clip+", "{:.2f}"),
            ("entropy", "ent", "{:.2f}"), ("time/step", "s", "{:.2f}")]

    def __init__(self, total_steps: int):
        self.width = len(str(total_steps))

    def log(self, metrics: dict, samples: list[dict] | None = None) -> None:
        parts = [f"step {metrics['step']:>{self.width}}"]
        for key, label, fmt in self.KEYS:
            v = metrics.get(key)
            if v is not None:
                parts.append(f"{label} {fmt.format(v)}")
        tqdm.write("  ".join(parts))

    def close(self) -> None:
        pass
