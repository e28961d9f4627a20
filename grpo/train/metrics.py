"""The metrics dict of one step: namespaced keys, one value each (README, "What a run writes")."""

from __future__ import annotations

import math

from ..algo import advantages as adv_mod
from ..config import needs_reference


def step_metrics(cfg, step: int, batch, acc, beta: float, lr: float, times: dict, skipped_total: int) -> dict:
    """The metrics of step `step` from its batch (step.StepBatch) and update tally (update.Tally)."""
    n_up, tok = max(acc.n_updates, 1), max(acc.tokens, 1.0)
    r, lengths = batch.rewards.flatten(), batch.lengths.float()
    m = {
        "step": step,
        "loss": acc.loss / n_up if acc.n_updates else None,
        "policy_loss": acc.pg / tok,
        "kl": acc.kl / tok if needs_reference(cfg) else None,
        "beta": beta,
        "reward/mean": r.mean().item(),
        "reward/std": r.std(unbiased=False).item(),
    }
    for name, v in batch.per_fn.items():
        m[f"reward/{name}/mean"] = v.mean().item()
        m[f"reward/{name}/std"] = v.std(unbiased=False).item()
        if cfg.reward_failure == "unscorable" and name in batch.failed:
            m[f"reward/{name}/failed"] = int(batch.failed[name].sum().item())
    m.update({
        "groups/zero_variance_frac": adv_mod.zero_variance_groups(batch.rewards).float().mean().item(),
        "clip/low_frac": acc.clip_low / tok,
        "clip/high_frac": acc.clip_high / tok,
        "ratio/mean": acc.ratio / tok,
        "ratio/min": acc.ratio_min if math.isfinite(acc.ratio_min) else None,
        "ratio/max": acc.ratio_max if math.isfinite(acc.ratio_max) else None,
        "entropy": acc.ent / tok,
        "length/mean": lengths.mean().item(),
        "length/min": int(lengths.min().item()),
        "length/max": int(lengths.max().item()),
        "length/truncated_frac": batch.truncated.float().mean().item(),
        "grad_norm": acc.grad_norm / n_up if acc.n_updates else None,
        "lr": lr,
        "updates/skipped_nonfinite": skipped_total,
    })
    if cfg.dynamic_sampling:
        m["dynamic/draws"] = batch.draws
        m["dynamic/short_groups"] = batch.short
    if acc.mm_tokens:                    # sampler vs trainer (where the trainer's pi_old is known)
        mm = acc.mm_tokens
        m.update({"mismatch/kl": acc.mm_kl / mm, "mismatch/logp_diff_mean": acc.mm_abs_diff / mm,
                  "mismatch/logp_diff_max": acc.mm_abs_diff_max, "mismatch/weight_mean": acc.mm_weight / mm,
                  "mismatch/weight_max": acc.mm_weight_max, "mismatch/masked_frac": acc.mm_masked / mm})
    if batch.episodes:                  # --env: summed over ranks
        e = batch.episodes
        n = max(1.0, e["episodes"])
        m.update({"env/turns_mean": e["turns"] / n, "env/tool_calls": e["tool_calls"], "env/tool_errors": e["tool_errors"],
                  "env/env_tokens_frac": e["env_tokens"] / max(1.0, batch.lengths.sum().item()),
                  "env/ended_by_env_frac": e["ended_by_env"] / n, "time/environment": round(e["env_seconds"], 4)})
    if batch.entropy_mask is not None:
        m["entropy/kept_frac"] = (batch.entropy_mask.sum() / batch.loss_mask.sum().clamp(min=1)).item()
    m.update({f"time/{k}": round(v, 4) for k, v in times.items()})
    m["time/tokens_per_sec"] = round(batch.lengths.sum().item() / max(times["step"], 1e-9), 1)
    return m
