"""Held-out evaluation on a task's held-out split: the run's reward, each reward function's pass
rate, and, where the task defines one, its accuracy.

  mean_reward     the mean of the run's reward (the weighted sum of its functions), what it trains for
  pass/<name>     the fraction of completions given full credit by that function: a score >= 1
                  (every built-in scores full credit as 1; a 0/1 reward passes when it is 1)
  accuracy        only for tasks that define one (`Task.accuracy`: the demo's exact match,
                  reasoning-gym's scorer; not a dataset's default exact match): the fraction of
                  completions that verifier gives full credit
With `samples` = k > 1 each problem gets k sampled completions: the figures are means over all of
them (the unbiased pass@1 estimates) and pass@k is the fraction of problems solved by at least one
(by the task's verifier, else by the first reward function).
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from ..data.prompts import encode_for_model
from ..rewards.scoring import score_rows
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
    if not fns:
        raise ConfigError(f"task {task.name!r} has no verifier to evaluate with; give --reward")
    checks = dict(fns)                                  # the task's verifier too, when the run does not use it
    verifier = getattr(task, "accuracy", None)
    if verifier is not None and (verifier not in fns or fns[verifier][0] is not task.rewards[verifier]):
        checks["task verifier"] = (task.rewards[verifier], 0.0)
        verifier = "task verifier"
    k = 1 if greedy else samples
    gen = torch.Generator(device=device).manual_seed(seed)
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, num_samples=k, eos_ids=(tokenizer.eos_token_id,),
                                pad_id=tokenizer.pad_token_id, greedy=greedy, temperature=temperature,
                                top_p=top_p, top_k=top_k)
    totals, scores = [], {name: [] for name in checks}
    per_batch = max(1, batch_size // k)
    for s in range(0, n, per_batch):
        part = rows[s:s + per_batch]
        ids, mask = encode_for_model(tokenizer, [r["prompt"] for r in part], device,
                                     system_prompt=system_prompt, chat_template=chat_template)
        roll = (engine or HFEngine()).generate(model, ids, mask, sampling, gen)
        total, per_fn, _, _ = score_rows(checks, part, k, decode(tokenizer, roll), roll,
                                         failure=getattr(fns, "failure", None))
        totals.append(total)                  # the task verifier, when added, weighs 0
        for name in checks:
            scores[name].append(per_fn[name].view(len(part), k))
    model.train(was_training)
    return _summary(torch.cat(totals), {k_: torch.cat(v) for k_, v in scores.items()}, fns, verifier, n, k)


def _summary(totals, scores: dict, fns: dict, verifier: str | None, n: int, k: int) -> dict:
    """The figures of the module docstring from the totals (n*k,) and each check's scores (n, k)."""
    out = {"mean_reward": totals.double().mean().item()}
    for name in fns:
        out[f"pass/{name}"] = (scores[name] >= 1.0).double().mean().item()
    if verifier is not None:
        out["accuracy"] = (scores[verifier] >= 1.0).double().mean().item()
    out.update(n=n, samples=k)
    if k > 1:
        solved = scores[verifier if verifier is not None else next(iter(fns))] >= 1.0       # (n, k)
        out[f"pass@{k}"] = solved.any(1).double().mean().item()
    return out


def headline(result: dict) -> str:
    """What the console prints of an evaluation: the run's reward, and the accuracy where the task has one."""
    text = f"reward {result['mean_reward']:.3f}"
    if "success" in result:
        text += f", success {result['success']:.3f}, {result['turns']:.2f} turns"
    if "accuracy" in result:
        text += f", accuracy {result['accuracy']:.3f}"
    return text + f" (n={result['n']})"


@torch.no_grad()
def evaluate_episodes(model, tokenizer, task, env_class, *, n: int, batch_size: int, max_new_tokens: int, limits,
                      system_prompt: str | None = None, chat_template: bool = True, seed: int = 0,
                      engine: RolloutEngine | None = None, samples: int = 1, greedy: bool = True,
                      temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> dict:
    """Held-out episodes in the run's environment: the mean episode reward, `success` (the fraction
    whose reward is >= 1, full credit) and the mean number of model turns. Greedy by default; with
    `greedy=False`, `samples` sampled episodes per problem (each its own generator, seeded by
    `seed` and its index) and pass@k, the fraction of problems with at least one success."""
    from ..envs import run_episodes
    k = 1 if greedy else samples
    rows = [row for row in task.heldout(n) for _ in range(k)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, eos_ids=(tokenizer.eos_token_id,),
                                pad_id=tokenizer.pad_token_id, greedy=greedy, temperature=temperature,
                                top_p=top_p, top_k=top_k)
    rewards, turns = [], []
    step = max(1, batch_size) * k
    for s in range(0, len(rows), step):
        part = rows[s:s + step]
        gens = None if greedy else [torch.Generator(device=device).manual_seed(seed * 1_000_003 + s + i)
                                    for i in range(len(part))]
        _, eps, _ = run_episodes(engine or HFEngine(), model, tokenizer, [env_class() for _ in part], part, sampling,
                                 gens, limits, system_prompt=system_prompt, chat_template=chat_template,
                                 tools=getattr(env_class, "tools", None) or None, device=device)
        rewards += [0.0 if e.reward is None else e.reward for e in eps]
        turns += [e.turns for e in eps]
    model.train(was_training)
    r = torch.tensor(rewards, dtype=torch.float64)
    out = {"mean_reward": r.mean().item(), "success": (r >= 1.0).double().mean().item(),
           "turns": sum(turns) / max(1, len(turns)), "n": n, "samples": k}
    if k > 1:
        out[f"pass@{k}"] = (r.view(-1, k) >= 1.0).any(1).double().mean().item()
    return out
