"""Does a change keep the runs the same? Three runs with this checkout and with another one (e.g. a
former commit: `git worktree add /tmp/old COMMIT`), their metrics.jsonl and completions.jsonl
compared row by row, timing fields aside:

    python bench/same_runs.py /tmp/old [--threads 1]

  demo   `grpo train --max-steps 40 --eval-size 100 --seed 0` (the built-in demo)
  lora   a tiny random Llama with LoRA, preset deepseekmath, a dense file reward
  full   the same model fully fine-tuned, preset seed, updates_per_batch 2, minibatches 2
Each run is its own `python -m grpo` process, importing the package of its checkout. The demo's
warm start is the cached one (built on first use). `--threads N` runs every process with N threads
(OMP_NUM_THREADS): with more than one, the training pass's own figures (entropy, grad_norm,
mismatch/*) can differ in their last digits between two runs of the same code, so an exact
comparison runs with one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
REWARD = '''import zlib
def crc(prompts, completions, **_):
    return [(zlib.crc32(c.encode()) % 97) / 96 for c in completions]
'''
TINY = ["--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8", "--eval-size", "16",
        "--device", "cpu", "--max-steps", "6"]


def runs(work: Path) -> dict[str, list[str]]:
    model, reward = str(work / "tiny"), f"{work / 'reward.py'}:crc"
    return {
        "demo": ["--max-steps", "40", "--eval-size", "100", "--seed", "0"],
        "lora": ["--model", model, "--lora-rank", "4", "--preset", "deepseekmath", "--reward", reward,
                 "--lr", "5e-2", *TINY],
        "full": ["--model", model, "--preset", "seed", "--reward", reward, "--lr", "1e-2",
                 "--updates-per-batch", "2", "--minibatches", "2", *TINY],
    }


def prepare(work: Path) -> None:
    """The tiny model (the demo's architecture and tokenizer, shrunk) and the reward file."""
    (work / "reward.py").write_text(REWARD)
    sys.path.insert(0, str(HERE))
    from grpo import demo
    tok = demo.build_tokenizer()
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = demo.build_model(tok, {**demo.RECIPE, **sizes})
    model.save_pretrained(work / "tiny")
    tok.save_pretrained(work / "tiny")


def run(checkout: Path, args: list[str], out: Path, threads: int | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, "-m", "grpo", "train", *args, "--output-dir", str(out)], cwd=checkout,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: grpo train {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
            for x in path.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="the other checkout (its root folder)")
    ap.add_argument("--threads", type=int, default=None, help="threads per run (OMP_NUM_THREADS); default: torch's")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="same-runs-"))
    prepare(work)
    same = True
    for name, argv in runs(work).items():
        for side, checkout in (("other", Path(args.other).resolve()), ("this", HERE)):
            run(checkout, argv, work / side / name, args.threads)
        for f in ("metrics.jsonl", "completions.jsonl"):
            a, b = rows(work / "other" / name / f), rows(work / "this" / name / f)
            same &= a == b
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            print(f"{name}/{f}: {len(a)} and {len(b)} rows, " +
                  ("identical" if a == b else f"differ (first at row {first})"))
    print("the runs are the same" if same else "the runs differ")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
