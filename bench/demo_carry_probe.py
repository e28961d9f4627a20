"""How the demo's warm-started model splits probability between the right tens digit and the
sloppy teacher's carry-less one, averaged over held-out carry problems with two-digit sums.

    python bench/demo_carry_probe.py [--model PATH]    # default: the cached demo model
"""

from __future__ import annotations

import argparse

import torch

from grpo.demo import ensure_demo_model
from grpo.data.tasks import get_task
from grpo.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    args = ap.parse_args()
    model, tok = load_model(args.model or ensure_demo_model(), torch.device("cpu"))
    right_p = wrong_p = 0.0
    n = 0
    for row in get_task("arithmetic").heldout(2000):
        a, b = (int(x) for x in row["prompt"].rstrip("=").split("+"))
        right, wrong = a + b, (a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10
        if a % 10 + b % 10 < 10 or right >= 100:
            continue
        ids = torch.tensor([tok(row["prompt"], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1], -1)
        right_p += probs[tok.convert_tokens_to_ids(str(right)[0])].item()
        wrong_p += probs[tok.convert_tokens_to_ids(str(wrong)[0])].item()
        n += 1
    print(f"{n} held-out carry problems: p(right tens digit) = {right_p / n:.2f}, "
          f"p(teacher's carry-less digit) = {wrong_p / n:.2f}")


if __name__ == "__main__":
    main()
