"""Decoding's matmuls alone: SmolLM2-135M's 210 layer weights and its LM head (random values, same
shapes), multiplied by a few rows at a time the way one decoding step does, as x W^T (what
nn.Linear runs), as (W x^T)^T through MKL (what grpo/fast/few_rows.py runs outside
native.MIN_ROWS..native.MAX_ROWS rows, or where the compiled kernel is unavailable) and through
grpo/fast/native.py's compiled kernel (from native.MIN_ROWS to native.MAX_ROWS rows).

    python bench/decode_matmul.py

The 30 layers' weights (0.43 GB) do not fit in any cache, so each token streams them from memory,
as in real decoding.
"""

from __future__ import annotations

import time

import torch

from grpo.fast import native

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]   # q k v o gate up down
HEAD = (49152, 576)


def per_token(f, weights, head, rows: int, reps: int = 4) -> tuple[float, float]:
    xs = {k: torch.randn(rows, k) for k in (576, 1536)}
    for w in weights:
        f(xs[w.shape[1]], w)
    t = time.perf_counter()
    for _ in range(reps):
        for w in weights:
            f(xs[w.shape[1]], w)
    layers = (time.perf_counter() - t) / reps
    f(xs[576], head)
    t = time.perf_counter()
    for _ in range(2):
        f(xs[576], head)
    return layers, (time.perf_counter() - t) / 2


def main() -> None:
    torch.set_num_threads(2)
    weights = [torch.randn(o, i) for _ in range(30) for o, i in LAYER]
    head = torch.randn(*HEAD)
    ways = {"x W^T": lambda x, w: torch.nn.functional.linear(x, w),
            "(W x^T)^T": lambda x, w: torch.mm(w, x.t()).t()}
    if native.why_not() is None:
        ways["kernel"] = lambda x, w: native.left_product(w, x)
    else:
        print(f"compiled kernel unavailable: {native.why_not()}")
    print("rows  way          210 layer matmuls   LM head   (ms per decoding step, fp32, 2 threads)")
    for rows in (1, 4, 8, 16, 32, 64, 128):
        for name, f in ways.items():
            if name == "kernel" and not native.MIN_ROWS <= rows <= native.MAX_ROWS:
                continue
            layers, h = per_token(f, weights, head, rows)
            print(f"{rows:4d}  {name:11s}  {layers * 1e3:17.1f}  {h * 1e3:8.1f}")


if __name__ == "__main__":
    main()
