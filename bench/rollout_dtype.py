"""Sampling in bf16 against fp32 on W1 (bench/bench.py's workload: SmolLM2-135M-Instruct, full
fine-tuning, 2 prompts x G=8, 64 new tokens), side by side in one invocation.

    python bench/rollout_dtype.py --rounds 2 --steps 3

Each side runs in its own process (bench.py's `launch`), sides alternating within a round and
the first step of each process not counted. Prints the median generate and step seconds, the
peak RSS, and the sampler/trainer mismatch the trainer logs (mismatch/*: k3 KL of the sampler to
the trainer, the largest |log pi_train - log pi_sampler|, the mean weight of the correction).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

SIDES = {
    "fp32": {"rollout_dtype": "fp32"},
    "bf16": {"rollout_dtype": "bf16"},
    "bf16+tis": {"rollout_dtype": "bf16", "rollout_correction": "tis"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    args = ap.parse_args()
    model = bench.smollm2_folder()
    runs: dict[str, list[dict]] = {s: [] for s in args.sides}
    for r in range(args.rounds):
        order = args.sides[r % len(args.sides):] + args.sides[:r % len(args.sides)]
        for side in order:
            res = bench.launch("grpo", "W1", model, args.steps + 1, SIDES[side])
            runs[side].append(res)
            print(f"round {r + 1} {side}: step {res['step_s'][1:]}", flush=True)
    print("| sampling | generate s | step s | peak RSS GB | mismatch/kl | mismatch/logp_diff_max | "
          "mismatch/weight_mean |")
    print("|---|---|---|---|---|---|---|")
    for side, res in runs.items():
        def med(values):
            return statistics.median(values)
        gen = med([v for x in res for v in x["phases"]["generate"][1:]])
        step = med([v for x in res for v in x["step_s"][1:]])
        rss = max(x["peak_rss_gb"] for x in res)
        mm = bench.mismatch(res)
        print(f"| {side} | {gen:.2f} | {step:.2f} | {rss:.2f} | {mm.get('mismatch/kl', float('nan')):.2e} | "
              f"{mm.get('mismatch/logp_diff_max', float('nan')):.3f} | {mm.get('mismatch/weight_mean', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
