"""The per-token loss of GRPO and its relatives: the one function the trainer's update
(grpo/train/update.py) and `grpo explain` both call, so what explain prints is what the trainer
computes.

For each token t of completion i, with l = log pi_theta - log pi_X (pi_X: pi_ref or pi_old, by
`ratio_vs`):

    policy_t   = the registered policy loss (`policy_loss`) at l and the token's advantage,
                 times the rollout-correction weight w_t (`rollout_correction`: pi_old as the trainer
                 computes it over pi_sampler, truncated or masked) and the entropy-selection mask
                 (top_entropy_quantile)
    kl_t       = the KL estimate against pi_ref (`kl_estimator`, clamped by `kl_clamp`; `full` is
                 the exact KL over the vocabulary, computed by the caller and never clamped), times
                 pi_theta / pi_old where `kl_ratio_weight`
    per_token  = policy_t + beta kl_t - entropy_coef H_t

All tensors are (N, T); `settings` is anything with the run's setting names (a TrainConfig).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .losses import RolloutWeights, kl_estimate, policy_loss, rollout_weights


@dataclass(frozen=True)
class TokenLoss:
    """One batch's per-token loss and its parts, all (N, T)."""
    per_token: Tensor                   # policy + beta * kl - entropy_coef * entropy: what is aggregated
    policy: Tensor                      # the policy loss, rollout-corrected and entropy-masked
    kl: Tensor | None                   # None without a reference
    ratio: Tensor                       # pi_theta / pi_X as the policy loss uses it
    clipped_low: Tensor                 # bool: the clip binds below / above
    clipped_high: Tensor
    mismatch: RolloutWeights | None     # sampler vs trainer, where the trainer's pi_old is known
    entropy: Tensor | None              # the policy's entropy, detached, where given


def token_loss(settings, logp: Tensor, adv: Tensor, mask: Tensor, *, sampler_logp: Tensor, beta: float,
               old_logp: Tensor | None = None, ref_logp: Tensor | None = None, full_kl: Tensor | None = None,
               entropy: Tensor | None = None, keep: Tensor | None = None,
               bounds: tuple[float | None, float | None] = (None, None), loss: str | None = None) -> TokenLoss:
    """The per-token loss. `logp`: the policy's log-probs (differentiable); `sampler_logp`: the
    sampler's; `old_logp`: pi_old as the trainer computes it, where known (None: the sampler's
    stands in, and there is no rollout correction); `ref_logp`: pi_ref's (None: no reference, no
    KL term unless `full_kl`); `full_kl`: the exact per-token KL (`kl_estimator: full`);
    `entropy`: the policy's entropy per token (the bonus); `keep`: the tokens the entropy selection
    keeps; `bounds`: the rollout-correction weight's (low, high); `loss`: a registered policy loss
    in place of `settings.policy_loss`."""
    name = loss or settings.policy_loss
    old = old_logp if old_logp is not None else sampler_logp
    base = ref_logp if settings.ratio_vs == "ref" else old
    terms = policy_loss(name)(logp, base, adv, mask, settings)
    policy = terms.loss
    mismatch = None
    if old_logp is not None:
        mismatch = rollout_weights(old_logp, sampler_logp, mask, settings.rollout_correction, *bounds)
        if settings.rollout_correction != "none":
            policy = policy * mismatch.weight.to(policy.dtype)
    if keep is not None:
        policy = policy * keep.to(policy.dtype)
    kl = None
    if full_kl is not None or ref_logp is not None:
        kl = full_kl if full_kl is not None else kl_estimate(logp, ref_logp, settings.kl_estimator)
        if settings.kl_clamp is not None and full_kl is None:
            kl = kl.clamp(-settings.kl_clamp, settings.kl_clamp)
        if settings.kl_ratio_weight:               # the estimate's importance weight pi / pi_old, differentiable
            kl = kl * torch.exp(log_ratio(name, logp, old, mask))
    per_token = policy + beta * kl if (kl is not None and beta > 0) else policy
    if settings.entropy_coef > 0 and entropy is not None:    # the bonus: its gradient raises each token's entropy
        per_token = per_token - settings.entropy_coef * entropy
    return TokenLoss(per_token, policy, kl, terms.ratio, terms.clipped_low, terms.clipped_high, mismatch,
                     None if entropy is None else entropy.detach())


def log_ratio(loss: str, logp: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    """log pi / pi_old per token (N, T), or each sequence's mean over its tokens (N, 1) for gspo."""
    lr = logp - old.detach()
    if loss == "gspo":
        m = mask.to(lr.dtype)
        return (lr * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    return lr
