"""Which curves the report draws, grouped into charts; the HTML page and the PNG files share them.

A chart names metric keys exactly or by prefix (`reward/*/mean`: one series per reward function);
keys of metrics.jsonl that no chart names go to charts of their own under "other", so a metric
added to the trainer shows up without touching this list.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from .run import RunFiles


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    keys: tuple[str, ...]          # metric keys or fnmatch patterns, in legend order
    source: str = "metrics"        # metrics (metrics.jsonl) or eval (eval.jsonl)


CHARTS = [
    Chart("reward", "Reward (mean over the batch), overall and per function", ("reward/mean", "reward/*/mean")),
    Chart("eval", "Held-out evaluations: mean reward, pass rates, accuracy",
          ("mean_reward", "pass/*", "pass@*", "accuracy"), source="eval"),
    Chart("kl", "KL to the reference", ("kl",)),
    Chart("beta", "β (KL coefficient)", ("beta",)),
    Chart("entropy", "Entropy of the sampled tokens", ("entropy",)),
    Chart("length", "Completion length (tokens)", ("length/mean", "length/min", "length/max")),
    Chart("truncated", "Truncated completions (fraction)", ("length/truncated_frac",)),
    Chart("clip", "Clipped tokens (fraction)", ("clip/low_frac", "clip/high_frac")),
    Chart("ratio", "Importance ratio π/π_old", ("ratio/mean", "ratio/min", "ratio/max")),
    Chart("grad_norm", "Gradient norm (before clipping)", ("grad_norm",)),
    Chart("loss", "Loss", ("loss", "policy_loss")),
    Chart("groups", "Groups with zero reward variance (fraction)", ("groups/zero_variance_frac",)),
    Chart("time", "Step time per phase (s)", ("time/step", "time/generate", "time/score", "time/reference", "time/policy",
                                              "time/*")),
    Chart("throughput", "New tokens per second", ("time/tokens_per_sec",)),
    Chart("lr", "Learning rate", ("lr",)),
    Chart("skipped", "Updates skipped (non-finite loss or gradient)", ("updates/*",)),
]
_NOT_CURVES = {"step", "when", "n", "samples"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _match(keys: list[str], patterns: tuple[str, ...], exact: set[str]) -> list[str]:
    """The keys a chart names, in its order; a pattern takes no key that some chart names exactly."""
    out: list[str] = []
    for p in patterns:
        out += [k for k in keys if k not in out and (k == p or ("*" in p and k not in exact and fnmatch.fnmatchcase(k, p)))]
    return out


def chart_series(run: RunFiles) -> list[dict]:
    """Each chart that has data: {id, title, series: [{name, x: [step], y: [value or None]}]}."""
    rows = {"metrics": run.metrics, "eval": run.evals}
    keys = {src: list(dict.fromkeys(k for r in rs for k, v in r.items() if _number(v) and k not in _NOT_CURVES))
            for src, rs in rows.items()}
    charts, named = [], {"metrics": set(), "eval": set()}
    exact = {k for c in CHARTS for k in c.keys if "*" not in k}
    for c in CHARTS:
        chosen = _match(keys[c.source], c.keys, exact)
        named[c.source].update(chosen)
        if chosen:
            charts.append(_chart(c.id, c.title, chosen, rows[c.source]))
    for k in keys["metrics"]:
        if k not in named["metrics"] and not k.endswith("/std"):
            charts.append(_chart("other-" + k.replace("/", "-"), f"{k} (other)", [k], rows["metrics"]))
    return charts


def _chart(id: str, title: str, keys: list[str], rows: list[dict]) -> dict:
    series = []
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        series.append({"name": k, "x": [s for s, _ in pts],
                       "y": [v if _number(v) and math.isfinite(v) else None for _, v in pts]})
    return {"id": id, "title": title, "series": series}
