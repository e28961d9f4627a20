"""One readable line per step, printed above the progress bar."""

from __future__ import annotations

from tqdm.auto import tqdm

from .base import Sink


class ConsoleSink(Sink):
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
