"""One decoding-sized product in fp32 and bf16 on this CPU: x (16, 576) times W^T (576 x 1536),
SmolLM2-135M's MLP gate projection for 16 rows, 2 threads. Says whether bf16 products are fast
here (they need AVX-512 BF16, AMX or AVX-NE-CONVERT; torch's capability is printed).

    python bench/bf16_matmul.py
"""

from __future__ import annotations

import time

import torch


def ms(f, n: int = 200) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    torch.set_num_threads(2)
    w, x = torch.randn(1536, 576), torch.randn(16, 576)
    wb, xb = w.bfloat16(), x.bfloat16()
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"fp32 linear: {ms(lambda: torch.nn.functional.linear(x, w)):.3f} ms")
    print(f"bf16 linear: {ms(lambda: torch.nn.functional.linear(xb, wb)):.3f} ms")


if __name__ == "__main__":
    main()
