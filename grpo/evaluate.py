"""Held-out evaluation: greedy decoding, the task's verifier, accuracy."""

from __future__ import annotations

import torch

from . import rewards as rewards_mod
from .prompts import encode_for_model
from .rollout import decode, generate


@torch.no_grad()
def evaluate(model, tokenizer, task, *, n: int, batch_size: int, max_new_tokens: int, reward_fns: dict | None = None,
             system_prompt: str | None = None, chat_template: bool = True) -> dict:
    """Greedy pass@1 on the first `n` held-out problems: {"accuracy", "mean_reward", "n"}.
    A problem counts as solved when the task's first reward function (its verifier) gives >= 1."""
    rows = task.heldout(n)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    fns = reward_fns or {name: (fn, 1.0) for name, fn in task.rewards.items()}
    for s in range(0, n, batch_size):
        part = rows[s:s + batch_size]
        ids, mask = encode_for_model(tokenizer, [r["prompt"] for r in part], device,
                                     system_prompt=system_prompt, chat_template=chat_template)
        roll = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_ids=[tokenizer.eos_token_id],
                        pad_id=tokenizer.pad_token_id, greedy=True)
        texts = decode(tokenizer, roll)
        columns = {k: [r[k] for r in part] for k in part[0] if k != "prompt"}
        score, per_fn, _ = rewards_mod.score(fns, [r["prompt"] for r in part], texts, columns)
        total += float(score.sum())
        correct += int((next(iter(per_fn.values())) >= 1.0).sum())
    model.train(was_training)
    return {"accuracy": correct / n, "mean_reward": total / n, "n": n}
