"""How step time and memory grow with the completion length and the group size, both sides.

    python bench/growth.py --set reference_dtype=bf16 rollout_dtype=bf16 rollout_correction=tis \
        micro_batch_tokens=1024 lora_base_dtype=bf16

W5's shape (bench.py: SmolLM2-135M-Instruct with LoRA r16, 2 reasoning-gym prompts, natural EOS)
at up to 64, 256 and 1024 new tokens with G = 8, and at G = 4 and 16 with up to 256 new tokens.
Each shape runs our side and TRL's, each in its own process (bench.launch), one counted step
after a warm-up step by default; `--set` changes our side's settings as in bench.py. Prints one
markdown row per shape as it finishes, then the table again at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

SHAPES = [(64, 8), (256, 8), (1024, 8), (256, 4), (256, 16)]   # (new tokens at most, G)
HEADER = ("| new tokens ≤ | G | side | s/step | new tokens/s | peak RSS GB | length mean / max | phases (s) |\n"
          "|---|---|---|---|---|---|---|---|")


def row(new_tokens: int, group: int, side: str, s: dict) -> str:
    """One shape's side, from bench.summarize."""
    phases = ", ".join(f"{k} {v:.1f}" for k, v in s["phases"].items() if k != "score") or "—"
    mean, _, longest, _ = s["lengths"]
    return (f"| {new_tokens} | {group} | {side} | {s['step']:.2f} | {s['tps']:.1f} | {s['rss']:.2f} | "
            f"{mean:.0f} / {longest:.0f} | {phases} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2, help="steps per process; the first is a warm-up")
    ap.add_argument("--sides", nargs="+", default=["grpo", "trl"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra settings for our side")
    ap.add_argument("--shapes", nargs="+", metavar="TOKENS:G", help="instead of the default five shapes")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(bench.THREADS)
    shapes = [tuple(int(x) for x in s.split(":")) for s in args.shapes] if args.shapes else SHAPES
    extra = dict(bench.parse_setting(kv) for kv in args.set)
    model = bench.smollm2_folder()
    lines = []
    print(HEADER, flush=True)
    for new_tokens, group in shapes:
        shape = {"_new_tokens": new_tokens, "_group": group}
        found = {}
        for side in args.sides:
            settings = {**shape, **(extra if side != "trl" else {})}
            found[side] = bench.summarize([bench.launch(side, "W5", model, args.steps, settings)])
            lines.append(row(new_tokens, group, side, found[side]))
            print(lines[-1], flush=True)
        if "grpo" in found and "trl" in found:
            g, t = found["grpo"], found["trl"]
            lines.append(f"| {new_tokens} | {group} | grpo ÷ TRL | {t['step'] / g['step']:.2f}× speed | "
                         f"{g['tps'] / t['tps']:.2f}× | {g['rss'] / t['rss']:.2f}× | | |")
            print(lines[-1], flush=True)
    print("\n" + HEADER + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
