"""Supervised fine-tuning on (prompt, answer) pairs: the warm start GRPO builds on.

The loss is cross-entropy on the answer tokens and the closing EOS only; prompt tokens are
context. A row may instead hold `segments`, a multi-turn episode: the model's turns are trained,
the environment's text between them is context. Used by the demo (`grpo sft`) to turn a randomly initialised model into one that
answers in the right format and is sometimes right, which is where GRPO has something to work on.
"""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm


def sft_batch(tokenizer, rows: list[dict], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    seqs, labels = [], []
    for r in rows:
        # a row is (prompt, answer), or `segments`: (text, trained, EOS after it) in order, the
        # trained ones the model's turns (a multi-turn episode's, with the environment's between)
        parts = r.get("segments") or [(r["prompt"], False, False), (r["answer"], True, True)]
        seq, lab = [], []
        for text, trained, eos in parts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
            seq += ids
            lab += ids if trained else [-100] * len(ids)
        seqs.append(seq)
        labels.append(lab)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    lab = torch.tensor([l + [-100] * (width - len(l)) for l in labels], device=device)
    return ids, mask, lab


def supervised_finetune(model, tokenizer, sample_rows, *, steps: int, batch_size: int, lr: float,
                        seed: int = 0, desc: str = "sft") -> list[float]:
    """Train `model` in place for `steps` AdamW steps; `sample_rows(rng, n)` yields training rows.
    Returns the loss of each step."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, dynamic_ncols=True)
    for step in bar:
        ids, mask, labels = sft_batch(tokenizer, sample_rows(rng, batch_size), device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]      # (n, W-1, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses
