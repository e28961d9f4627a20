"""Per-step metrics: one flat dict with namespaced keys, sent to swappable sinks."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm


class JsonlSink:
    """One JSON object per line; flushed every step so a crash loses nothing already logged."""

    def __init__(self, path: str | Path):
        self.fh = open(path, "a")

    def log(self, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.fh.write(json.dumps(clean) + "\n")
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

    def log(self, metrics: dict) -> None:
        parts = [f"step {metrics['step']:>{self.width}}"]
        for key, label, fmt in self.KEYS:
            v = metrics.get(key)
            if v is not None:
                parts.append(f"{label} {fmt.format(v)}")
        tqdm.write("  ".join(parts))

    def close(self) -> None:
        pass
