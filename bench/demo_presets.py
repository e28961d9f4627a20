"""Held-out accuracy of each preset on the built-in demo, several seeds, same steps.

    python bench/demo_presets.py --seeds 0 1 2 [--steps 150] [--extra "seed:ratio_vs=old"]

"draws/step" is dynamic sampling's mean draws of prompts_per_step prompts; "mismatch KL" the median
of the step's mismatch/kl (the sampler against the trainer).

Prints a Markdown table (the one in docs/algorithm.md). Every run starts from the same cached
warm-started demo model and uses the demo defaults; only the preset (and the seed) change.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile

from grpo.config import PRESETS, resolve
from grpo.train import train


def run(preset: str, seed: int, steps: int, extra: dict) -> dict:
    out = tempfile.mkdtemp(prefix=f"grpo-{preset}-{seed}-")
    cfg = resolve(overrides={"preset": preset, "seed": seed, "max_steps": steps, "output_dir": out,
                             "save_model": False, **extra})
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        summary = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    k = max(1, len(rows) // 10)
    return dict(before=summary["eval_before"]["accuracy"], after=summary["eval_after"]["accuracy"],
                reward_first=statistics.mean(r["reward/mean"] for r in rows[:k]),
                reward_last=statistics.mean(r["reward/mean"] for r in rows[-k:]),
                step_s=statistics.median(r["time/step"] for r in rows),
                mismatch_kl=statistics.median(r.get("mismatch/kl", float("nan")) for r in rows),
                draws=statistics.mean(r.get("dynamic/draws", 1) for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--extra", action="append", default=[],
                    help='an extra row: "PRESET:key=value,key=value", e.g. "seed:ratio_vs=old"')
    args = ap.parse_args()
    variants = [(p, {}) for p in args.presets]
    for spec in args.extra:
        preset, _, kvs = spec.partition(":")
        variants.append((preset, dict(kv.split("=") for kv in kvs.split(","))))
    print("| preset | settings changed | held-out before | held-out after (mean ± sd) | gain (points) | "
          "train reward first→last 10% | s/step | draws/step | mismatch KL |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, extra in variants:
        res = [run(preset, s, args.steps, extra) for s in args.seeds]
        after = [r["after"] for r in res]
        gain = [100 * (r["after"] - r["before"]) for r in res]
        sd = statistics.stdev(after) if len(after) > 1 else 0.0
        changed = ", ".join(f"{k}={v}" for k, v in extra.items()) or "—"
        print(f"| {preset} | {changed} | {res[0]['before']:.3f} | {statistics.mean(after):.3f} ± {sd:.3f} | "
              f"{statistics.mean(gain):+.1f} | {statistics.mean(r['reward_first'] for r in res):.2f} → "
              f"{statistics.mean(r['reward_last'] for r in res):.2f} | {statistics.median(r['step_s'] for r in res):.2f} | "
              f"{statistics.mean(r['draws'] for r in res):.2f} | {statistics.median(r['mismatch_kl'] for r in res):.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
