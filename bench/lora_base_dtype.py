"""The policy pass alone with LoRA's base products in fp32 and in bf16 (lora_base_dtype): the
completion log-probs' forward and backward over W4-sized rows (8 rows, a 60-token prompt, up to
256 completion tokens of random ids) on SmolLM2-135M-Instruct with LoRA r16, the two settings
alternating, 2 threads; prints each pass, the medians, and the log-prob difference.

    python bench/lora_base_dtype.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import THREADS, smollm2_folder  # noqa: E402

from grpo.config import resolve  # noqa: E402
from grpo.models.loading import load_model  # noqa: E402
from grpo.models.logprobs import token_stats  # noqa: E402
from grpo.models.lora import add_lora  # noqa: E402
from grpo.rollout.base import Rollout  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    folder = smollm2_folder()
    g = torch.Generator().manual_seed(0)
    N, P, L = args.rows, 60, args.max_new_tokens
    lengths = torch.randint(6, L + 1, (N,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    roll = Rollout(torch.randint(100, 40000, (N, P), generator=g), torch.ones(N, P, dtype=torch.bool),
                   torch.randint(100, 40000, (N, L), generator=g), mask, torch.zeros(N, L), lengths, lengths == L)
    models = {}
    for dtype in ("fp32", "bf16"):
        m, _ = load_model(folder, torch.device("cpu"))
        cfg = resolve(overrides={"model": folder, "lora_rank": 16, "lora_base_dtype": dtype,
                                 "output_dir": str(Path(folder).parent / "lora-base-dtype-bench")})
        torch.manual_seed(0)
        m = add_lora(m, cfg)
        with torch.no_grad():              # an adapter away from its zero start
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
        models[dtype] = m
    times = {d: [] for d in models}
    for r in range(args.rounds):
        for d, m in models.items():
            t = time.perf_counter()
            st = token_stats(m, roll, temperature=1.0, chunk=256)
            (st.logp * mask).sum().backward()
            times[d].append(time.perf_counter() - t)
            print(f"round {r} {d}: {times[d][-1]:.2f} s", flush=True)
    with torch.no_grad():
        a, b = (token_stats(models[d], roll, temperature=1.0, chunk=256).logp for d in ("fp32", "bf16"))
    diff = (a - b)[mask].abs()
    print(f"median fp32 {statistics.median(times['fp32']):.2f} s, bf16 {statistics.median(times['bf16']):.2f} s; "
          f"|d logp| mean {diff.mean():.3g}, max {diff.max():.3g} (random ids: far from the model's text)")


if __name__ == "__main__":
    main()
