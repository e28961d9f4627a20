"""Held-out evaluation: pass@1 (accuracy), pass@k and mean reward on a task's held-out split.

A problem counts as solved by a completion when the task's own verifier (its first reward
function, e.g. exact match or the reasoning-gym scorer) gives it >= 1. With `samples` = k > 1,
each problem gets k sampled completions: accuracy is the mean over all of them (the unbiased
pass@1 estimate) and pass@k the fraction of problems solved by at least one.
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from ..data.prompts import encode_for_model
from ..rewards import score
from ..rollout import HFEngine, RolloutEngine, SamplingSettings, decode


@torch.no_grad()
def evaluate(model, tokenizer, task, *, n: int, batch_size: int, max_new_tokens: int, reward_fns: dict | None = None,
             system_prompt: str | None = None, chat_template: bool = True, samples: int = 1, greedy: bool = True,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             engine: RolloutEngine | None = None) -> dict:
    rows = task.heldout(n)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    fns = reward_fns or {name: (fn, 1.0) for name, fn in task.rewards.items()}
    if not (task.rewards or fns):
        raise ConfigError(f"task {task.name!r} has no verifier to evaluate with; give --reward")
    # "solved" is judged by the task's own verifier when it has one, else by the first reward
    if task.rewards:
        v_name, v_fn = next(iter(task.rewards.items()))
    else:
        v_name, (v_fn, _) = next(iter(fns.items()))
    k = 1 if greedy else samples
    gen = torch.Generator(device=device).manual_seed(seed)
    solved, reward_sum = [], 0.0
    per_batch = max(1, batch_size // k)
    for s in range(0, n, per_batch):
        part = rows[s:s + per_batch]
        ids, mask = encode_for_model(tokenizer, [r["prompt"] for r in part], device,
                                     system_prompt=system_prompt, chat_template=chat_template)
        sampling = SamplingSettings(max_new_tokens=max_new_tokens, num_samples=k, eos_ids=(tokenizer.eos_token_id,),
                                    pad_id=tokenizer.pad_token_id, greedy=greedy, temperature=temperature,
                                    top_p=top_p, top_k=top_k)
        roll = (engine or HFEngine()).generate(model, ids, mask, sampling, gen)
        texts = decode(tokenizer, roll)
        prompts = [r["prompt"] for r in part for _ in range(k)]
        columns = {c: [r[c] for r in part for _ in range(k)] for c in part[0] if c != "prompt"}
        columns["completion_length"] = roll.lengths.tolist()
        total, per_fn, _ = score(fns, prompts, texts, columns)
        if v_name in fns and fns[v_name][0] is v_fn:
            ok = per_fn[v_name]
        else:
            ok, _, _ = score({v_name: (v_fn, 1.0)}, prompts, texts, columns)
        reward_sum += float(total.sum())
        solved.append((ok >= 1.0).view(len(part), k))
    model.train(was_training)
    solved = torch.cat(solved)                                               # (n, k)
    out = {"accuracy": solved.double().mean().item(), "mean_reward": reward_sum / (n * k), "n": n, "samples": k}
    if k > 1:
        out[f"pass@{k}"] = solved.any(1).double().mean().item()
    return out
