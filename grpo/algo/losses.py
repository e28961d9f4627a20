"""The GRPO loss, per token, then aggregated. Pure tensor functions; no model or I/O.

Per token i,t (all tensors (N, T) unless noted; `mask` marks valid completion tokens):
  log-ratio  l = log pi_theta - log pi_X,  rho = exp(l),  pi_X = pi_ref (article) or pi_old (standard)
  policy     clip:      -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
             reinforce: -A log pi_theta
  KL         k1 log(pi/pi_ref) | k2 1/2 log(pi/pi_ref)^2 | k3 pi_ref/pi - log(pi_ref/pi) - 1 | full sum_v
  total      policy + beta * KL, aggregated by `aggregate`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .registry import Registry


def upcast(x: Tensor) -> Tensor:
    """Half-precision logits to float32 for the softmax; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] without materialising the log-softmax.  (..., V), (...) -> (...)."""
    logits = upcast(logits)
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits).  (..., V) -> (...)."""
    logits = upcast(logits)
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_and_entropy(logits: Tensor, tokens: Tensor, entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """token_logprobs and (detached unless `entropy_grad`) entropy_from_logits from one log-softmax,
    with one extra (..., V) buffer for a detached entropy instead of three.  (..., V), (...) -> (...), (...)."""
    logp_all = torch.log_softmax(upcast(logits), dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if entropy_grad:
        return logp, -(logp_all.exp() * logp_all).sum(-1)
    with torch.no_grad():
        p_logp = logp_all.detach().exp().mul_(logp_all.detach())
        entropy = -p_logp.sum(-1)
    return logp, entropy


def full_kl_from_logits(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(pi_theta || pi_ref) summed over the whole vocabulary.  (..., V), (..., V) -> (...).
    Callers pass chunks of positions so the (tokens x V) tensors of a whole batch never exist."""
    logp = torch.log_softmax(upcast(logits), dim=-1)
    ref_logp = torch.log_softmax(upcast(ref_logits), dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Sampled-token KL estimators.  k1 is unbiased but can be negative; k3 is unbiased and >= 0;
    k2 is biased, >= 0, and its gradient equals the true KL's gradient to first order."""
    log_ratio = logp - ref_logp                                     # log(pi / pi_ref)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        # clamp keeps exp finite when the policy has drifted far from the reference
        neg = (-log_ratio).clamp(max=20.0)                          # log(pi_ref / pi)
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"unknown sampled-token KL estimator {estimator!r} (`full` needs the logits)")


def clipped_policy_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, eps_low: float, eps_high: float):
    """PPO-style clipped surrogate, as a loss (the negated objective).

    Returns (loss, ratio, clipped_low, clipped_high): clipped_low marks tokens where the lower
    bound binds (rho < 1 - eps_low with A < 0), clipped_high where the upper bound binds."""
    ratio = torch.exp(logp - base_logp.detach())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
    return loss, ratio, clipped_low, clipped_high


def reinforce_policy_loss(logp: Tensor, adv: Tensor) -> Tensor:
    """-A log pi_theta: the article's first form (no ratio, no clip)."""
    return -adv * logp


# ---------------------------------------------------------------------- the policy-loss registry
class PolicyTerms(NamedTuple):
    """One policy loss's per-token output, all (n, L)."""
    loss: Tensor              # differentiable through logp
    ratio: Tensor             # detached rho, for the health figures
    clipped_low: Tensor       # bool: the lower clip bound binds
    clipped_high: Tensor      # bool: the upper clip bound binds


# A policy loss: loss(logp, base_logp, adv, mask, settings) -> PolicyTerms, every tensor (n, L);
# base_logp is pi_X of the ratio (reference or sampling policy), `settings` any object with the
# fields the loss reads (a TrainConfig). Adding one: a function registered here, its name in the
# `policy_loss` literal of grpo/config/fields.py, and its tests.
POLICY_LOSSES = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


@register_policy_loss("clip")
def clip_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """`clipped_policy_loss` with epsilon below 1 and epsilon_high (else epsilon) above."""
    eps_high = settings.epsilon_high if settings.epsilon_high is not None else settings.epsilon
    loss, ratio, low, high = clipped_policy_loss(logp, base_logp, adv, settings.epsilon, eps_high)
    return PolicyTerms(loss, ratio.detach(), low, high)


@register_policy_loss("reinforce")
def reinforce_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """`reinforce_policy_loss`; the ratio is still reported, nothing is clipped."""
    never = torch.zeros_like(mask, dtype=torch.bool)
    return PolicyTerms(reinforce_policy_loss(logp, adv), torch.exp(logp.detach() - base_logp), never, never)


def _seq_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over each sequence's valid tokens.  (n, L) -> (n, 1); 0 for a sequence with none."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)


def _bounds(settings) -> tuple[float, float]:
    return settings.epsilon, settings.epsilon_high if settings.epsilon_high is not None else settings.epsilon


@register_policy_loss("gspo")
def gspo_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): one
    importance ratio per sequence, the geometric mean of its token ratios,
        s_i = exp( (1/T_i) sum_t (log pi_theta - log pi_X) ),
    clipped as PPO clips, against the sequence's advantage A_i (the mean of its token advantages:
    A_i itself under uniform token credit):
        loss_i = -min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i),
    written on each of the sequence's tokens, so `seq_mean_token_mean` averages sequences. The
    paper's clip range is eps 3e-4, eps_high 4e-4 (its section 5.1; the `gspo` preset); TRL spells
    this `importance_sampling_level="sequence"`."""
    eps_low, eps_high = _bounds(settings)
    s = torch.exp(_seq_mean(logp - base_logp.detach(), mask))                    # (n, 1)
    a = _seq_mean(adv, mask)                                                      # (n, 1)
    loss = torch.maximum(-a * s, -a * s.clamp(1.0 - eps_low, 1.0 + eps_high)).expand_as(logp)
    low = ((s < 1.0 - eps_low) & (a < 0)).expand_as(mask) & mask
    high = ((s > 1.0 + eps_high) & (a > 0)).expand_as(mask) & mask
    return PolicyTerms(loss, s.detach().expand_as(logp), low, high)


@register_policy_loss("gspo_token")
def gspo_token_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """GSPO-token (the same paper, its section 4.3): the sequence ratio's value with each token's
    own gradient, s_i,t = sg[s_i] * pi_theta(y_t) / sg[pi_theta(y_t)], clipped against the token's
    advantage A_i,t:  loss_t = -min(s_i,t A_t, clip(s_i,t, 1 - eps, 1 + eps_high) A_t). With the
    same advantage on every token (uniform credit) its gradient equals `gspo`'s."""
    eps_low, eps_high = _bounds(settings)
    s = torch.exp(_seq_mean(logp.detach() - base_logp.detach(), mask))          # (n, 1), no gradient
    s_t = s * torch.exp(logp - logp.detach())                                     # value s_i, d/dlogp_t = s_i
    loss = torch.maximum(-adv * s_t, -adv * s_t.clamp(1.0 - eps_low, 1.0 + eps_high))
    low = (s_t.detach() < 1.0 - eps_low) & (adv < 0) & mask
    high = (s_t.detach() > 1.0 + eps_high) & (adv > 0) & mask
    return PolicyTerms(loss, s_t.detach(), low, high)


@register_policy_loss("cispo")
def cispo_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """CISPO (MiniMax-M1, 2025, arXiv 2506.13585): clip the importance weight, not the update;
    the clipped weight is a constant (stop-gradient) that scales a REINFORCE term,
        loss_t = -sg[min(rho_t, eps_max)] A_t log pi_theta(y_t),
    so every token keeps a gradient. The cap is `cispo_max` (eps_max of ScaleRL, Khatri et al. 2025,
    recommended 5.0; TRL's `epsilon_high` under loss_type="cispo"); as there, no lower bound. The
    paper pairs it with token-level averaging (`loss_aggregation token_mean`)."""
    ratio = torch.exp(logp.detach() - base_logp.detach())
    weight = ratio.clamp(max=settings.cispo_max)
    never = torch.zeros_like(mask, dtype=torch.bool)
    return PolicyTerms(-weight * adv * logp, ratio, never, (ratio > settings.cispo_max) & (adv > 0) & mask)


@register_policy_loss("dual_clip")
def dual_clip_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    Reinforcement Learning", arXiv 1912.09729): the clipped surrogate, and for A < 0 a second bound
    that keeps a huge ratio from making the loss unbounded,
        A >= 0: loss = max(-rho A, -clip(rho) A)            (as `clip`)
        A <  0: loss = min(max(-rho A, -clip(rho) A), -c A)
    with c = `dual_clip_c` > 1 (3.0, verl's clip_ratio_c default). Tokens where c binds count as
    clipped below."""
    eps_low, eps_high = _bounds(settings)
    loss, ratio, low, high = clipped_policy_loss(logp, base_logp, adv, eps_low, eps_high)
    c = settings.dual_clip_c
    bound = -c * adv
    dual = (adv < 0) & (loss > bound)
    loss = torch.where(dual, bound, loss)
    return PolicyTerms(loss, ratio.detach(), low | (dual & mask), high)


@register_policy_loss("sapo")
def sapo_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv 2511.20347): a smooth gate
    instead of a hard clip,
        loss_t = -(4 / tau) sigmoid(tau (rho_t - 1)) A_t,   tau = tau_pos if A_t > 0 else tau_neg,
    whose gradient weight 4 sigmoid (1 - sigmoid) rho is 1 at rho = 1 and fades smoothly as rho
    leaves 1, faster for negative advantages (`sapo_temperature_pos` 1.0, `sapo_temperature_neg`
    1.05: the paper's, and TRL's, defaults). Nothing is clipped."""
    ratio = torch.exp(logp - base_logp.detach())
    tau = torch.where(adv > 0, torch.as_tensor(settings.sapo_temperature_pos, dtype=ratio.dtype),
                      torch.as_tensor(settings.sapo_temperature_neg, dtype=ratio.dtype))
    loss = -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * adv
    never = torch.zeros_like(mask, dtype=torch.bool)
    return PolicyTerms(loss, ratio.detach(), never, never)


@register_policy_loss("gmpo")
def gmpo_loss(logp: Tensor, base_logp: Tensor, adv: Tensor, mask: Tensor, settings) -> PolicyTerms:
    """GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization", arXiv 2507.20673): the geometric
    mean of the token terms instead of their arithmetic mean, each token's log-ratio clipped in log
    space to [-eps, eps] (`gmpo_epsilon`, 0.4 in the paper) on the pessimistic side, as PPO:
        l_t = sgn(A) min(sgn(A) log rho_t, sgn(A) clip(log rho_t, -eps, eps))
        loss_i = -A_i exp( (1/T_i) sum_t l_t ),
    written on each token of the sequence (A_i: the mean of its token advantages)."""
    eps = settings.gmpo_epsilon
    a = _seq_mean(adv, mask)                                                      # (n, 1)
    sgn = torch.sign(a)
    l = logp - base_logp.detach()
    bounded = sgn * torch.minimum(sgn * l, sgn * l.clamp(-eps, eps))
    s = torch.exp(_seq_mean(bounded, mask))                                       # (n, 1)
    loss = (-a * s).expand_as(logp)
    low = (l.detach() < -eps) & (adv < 0) & mask
    high = (l.detach() > eps) & (adv > 0) & mask
    return PolicyTerms(loss, torch.exp(_seq_mean(l.detach(), mask)).expand_as(logp), low, high)


def policy_loss(name: str):
    """The registered policy loss `name`."""
    return POLICY_LOSSES[name]


# ------------------------------------------------------------ rollout-mismatch correction
class RolloutWeights(NamedTuple):
    """The importance weight of each token for the sampler/trainer mismatch, and what it masked."""
    weight: Tensor           # (N, T) w >= 0, detached; 1 where there is nothing to correct
    masked: Tensor           # (N, T) bool: valid tokens whose weight the mode set to 0
    log_ratio: Tensor        # (N, T) log pi_train_old - log pi_sampler, 0 where masked


def rollout_weights(train_logp: Tensor, sampler_logp: Tensor, mask: Tensor, mode: str,
                    low: float | None, high: float | None) -> RolloutWeights:
    """w = pi_train_old / pi_sampler per token (`tis`, `icepop`) or per sequence, the product of its
    tokens' ratios (`seq_tis`, `mis`); truncated to [low, high] (`tis`, `seq_tis`: Yao et al. 2025's
    TIS) or zeroed outside it (`icepop`: Ring-1T's IcePop; `mis`: masked IS, TRL's sequence_mask).
    A bound of None is no bound. The policy loss of each token is multiplied by w."""
    with torch.no_grad():
        valid = mask.bool()
        log_ratio = torch.where(valid, upcast(train_logp) - upcast(sampler_logp), 0.0)
        if mode in ("seq_tis", "mis"):
            # the sequence's log-ratio, bounded above so that exp stays finite (its weight is then
            # truncated or masked anyway)
            ratio = log_ratio.sum(-1, keepdim=True).clamp(max=20.0).exp().expand_as(log_ratio)
        else:
            ratio = log_ratio.exp()
        if mode in ("tis", "seq_tis"):
            weight = ratio.clamp(min=low, max=high) if (low is not None or high is not None) else ratio
            out = torch.zeros_like(valid)
        elif mode in ("icepop", "mis"):
            out = torch.zeros_like(valid)
            if low is not None:
                out |= ratio < low
            if high is not None:
                out |= ratio > high
            out &= valid
            weight = ratio.masked_fill(out, 0.0)
        elif mode == "none":
            weight, out = torch.ones_like(ratio), torch.zeros_like(valid)
        else:
            raise ValueError(f"unknown rollout_correction {mode!r}")
        return RolloutWeights(torch.where(valid, weight, 1.0), out, log_ratio)


def mismatch_kl(log_ratio: Tensor) -> Tensor:
    """k3 estimate of KL(pi_sampler || pi_train) per token from d = log pi_train - log pi_sampler at
    tokens drawn by the sampler: e^d - 1 - d (>= 0, 0 where d = 0)."""
    return log_ratio.exp() - 1.0 - log_ratio


# ------------------------------------------------------------------- token selection
def high_entropy_mask(entropy: Tensor, mask: Tensor, rho: float, pool: Tensor | None = None) -> Tensor:
    """Tokens whose entropy is at or above the (1 - rho) quantile of the valid tokens' entropies,
    or of `pool` (every process's, under data parallelism) when given (Wang et al. 2025, "Beyond
    the 80/20 rule": train on the top-rho forking tokens). rho = 1 keeps every valid token."""
    valid = mask.bool()
    pool = entropy[valid] if pool is None else pool
    if rho >= 1.0 or pool.numel() == 0:
        return valid if rho >= 1.0 else torch.zeros_like(valid)
    return valid & (entropy.double() >= quantile(pool.double(), 1.0 - rho))


def quantile(values: Tensor, q: float) -> Tensor:
    """torch.quantile's linear interpolation (values (n,), n >= 1), without its input-size limit."""
    v = values.sort().values
    pos = q * (v.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def sequence_count(mask: Tensor) -> Tensor:
    """Sequences with at least one valid token (filtered groups have none)."""
    return (mask.sum(-1) > 0).sum()


def aggregate(values: Tensor, mask: Tensor, mode: str, max_new_tokens: int,
              num_seqs: Tensor | float | None = None, num_tokens: Tensor | float | None = None) -> Tensor:
    """Reduce per-token values (N, T) to a scalar.

    seq_mean_token_mean      (1/N_seq) sum_i (1/T_i) sum_t v     (article, DeepSeekMath)
    token_mean               sum_{i,t} v / sum_i T_i            (DAPO, TRL and verl default)
    seq_mean_token_sum_norm  sum_{i,t} v / (N_seq * max_new_tokens)   (Dr. GRPO)

    `num_seqs` / `num_tokens` override the normalisers so that micro-batches (or processes) that
    each see part of a batch add up to the loss of the whole batch; by default they are this
    batch's own counts."""
    mask = mask.to(values.dtype)
    if num_seqs is None:
        num_seqs = sequence_count(mask)
    if num_tokens is None:
        num_tokens = mask.sum()
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(float(num_seqs), 1.0)
    if mode == "token_mean":
        return (values * mask).sum() / max(float(num_tokens), 1.0)
    if mode == "seq_mean_token_sum_norm":
        return (values * mask).sum() / (max(float(num_seqs), 1.0) * max_new_tokens)
    raise ValueError(f"unknown loss aggregation {mode!r}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
