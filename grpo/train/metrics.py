"""The metrics dict of one step: namespaced keys, one value each (README, "What a run writes")."""

from __future__ import annotations

import dataclasses

from ..algo import advantages as adv_mod


def step_metrics(cfg, step: int, batch, u, beta: float, lr: float, times: dict, skipped_total: int) -> dict:
    """The metrics of step `step` from its batch (step.StepBatch) and update (update.UpdateStats)."""
    r, lengths = batch.rewards.flatten(), batch.lengths.float()
    m = {
        "step": step,
        "loss": u.loss,
        "policy_loss": u.policy_loss,
        "kl": u.kl,
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
        "clip/low_frac": u.clip_low_frac,
        "clip/high_frac": u.clip_high_frac,
        "ratio/mean": u.ratio_mean,
        "ratio/min": u.ratio_min,
        "ratio/max": u.ratio_max,
        "entropy": u.entropy,
        "length/mean": lengths.mean().item(),
        "length/min": int(lengths.min().item()),
        "length/max": int(lengths.max().item()),
        "length/truncated_frac": batch.truncated.float().mean().item(),
        "grad_norm": u.grad_norm,
        "lr": lr,
        "updates/skipped_nonfinite": skipped_total,
    })
    if cfg.dynamic_sampling:
        m["dynamic/draws"] = batch.draws
        m["dynamic/short_groups"] = batch.short
    if u.mismatch is not None:           # sampler vs trainer (where the trainer's pi_old is known)
        m.update({f"mismatch/{k}": v for k, v in dataclasses.asdict(u.mismatch).items()})
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
