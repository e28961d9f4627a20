"""`grpo explain`'s numbers: one batch of rewards through the registered advantage estimator
(grpo/algo/advantages.py) and, on given per-token log-probs, through the trainer's own per-token
loss (grpo/algo/token_loss.py) under every registered policy loss, in float64 so that what is
printed is exact. Only the intermediate sums those functions do not return are added here."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..algo.advantages import _zscore, baseline_values, estimator, zero_variance_groups
from ..algo.losses import (POLICY_LOSSES, aggregate, clipped_policy_loss, high_entropy_mask, kl_estimate,
                           policy_loss, reinforce_policy_loss, sequence_count)
from ..algo.token_loss import token_loss
from ..config import ConfigError, TrainConfig, rollout_is_bounds
from .parse import TokenInputs, check_shapes, check_tokens

def explain(cfg: TrainConfig, rewards: list[list[float]], lengths: list[list[int]],
            logp_theta: float = -1.5, logp_ref: float = -1.6, *, tokens: TokenInputs | None = None,
            components: dict[str, tuple[list[list[float]], float]] | None = None) -> dict[str, Any]:
    """Every number of the advantage pipeline for this batch, and of the loss: at sequence 1, token 1
    (`loss`, from `logp_theta` and `logp_ref`), or with `tokens` on every token under every
    registered policy loss (`all_losses`; `loss` is then None).

    `components` ({name: (scores (B, G), weight)}) are the reward functions' parts of `rewards`,
    read by the `gdpo` estimator. Sequences are numbered in group order (group 1's completions
    first). Group indices in `zero_variance_groups` and `dropped_groups` are 0-based. The keys are
    the same for every estimator; the `grpo` pipeline's stages are None under the others, whose own
    stages are in `estimator_steps`."""
    check_shapes(rewards, lengths, components)
    if tokens is not None:
        check_tokens(tokens, rewards, lengths)
    name = cfg.advantage_estimator
    grpo = name == "grpo"
    B, G = len(rewards), len(rewards[0])
    r = torch.tensor(rewards, dtype=torch.float64)                        # (B, G)
    T = torch.tensor(lengths, dtype=torch.int64).reshape(B * G)           # (N,)
    max_len = int(T.max())
    parts = None if components is None else {k: (torch.tensor(v, dtype=torch.float64), w)
                                             for k, (v, w) in components.items()}
    adv = estimator(name)(r, T, max_len, cfg, history=[], components=parts)
    zero_var = zero_variance_groups(r)                                    # (B,)
    dropped = zero_var & cfg.filter_zero_variance_groups                  # (B,)
    valid = adv.token[adv.mask]                                           # (sum T_i,)
    weights = [[cfg.gamma ** (T_i - t) for t in range(1, T_i + 1)] for T_i in T.tolist()]
    out: dict[str, Any] = {
        "preset": cfg.preset,
        "settings": _settings(cfg),
        "advantage_estimator": name,
        "rewards": [[float(x) for x in g] for g in rewards],
        "lengths": [[int(x) for x in g] for g in lengths],
        "components": None if components is None else {
            k: {"weight": float(w), "scores": [[float(x) for x in g] for g in v]} for k, (v, w) in components.items()},
        "rewards_are_final": True,
        **(_scaling_stats(r, cfg.reward_scaling) if grpo else {"scaling_means": None, "scaling_stds": None}),
        "scaled_rewards": adv.scaled_rewards.tolist(),
        "baseline_values": _baselines(adv.scaled_rewards, cfg.baseline) if grpo else None,
        "zero_variance_groups": [b for b in range(B) if zero_var[b]],
        "dropped_groups": [b for b in range(B) if dropped[b]],
        "sequence_advantages": adv.sequence.tolist(),
        "discount_weights": weights if grpo else None,
        "discount_sums": [math.fsum(w) for w in weights] if grpo else None,
        "credit_denominators": _credit_denominators(cfg, weights) if grpo else None,
        "token_advantages": _rows(adv.token, T),
        "token_mean": float(valid.mean()) if grpo else None,
        "token_std": float(valid.std(unbiased=False)) if grpo else None,
        "normalized_token_advantages": _rows(adv.normalized, T),
        "estimator_steps": None if grpo else _estimator_steps(name, r, adv, parts),
    }
    if tokens is None:
        out["loss"] = _first_token_loss(cfg, adv, zero_var, G, logp_theta, logp_ref)
        out["all_losses"] = None
    else:
        out["loss"] = None
        out["all_losses"] = _every_loss(cfg, adv, dropped.repeat_interleave(G), T, tokens)
    return out


def _estimator_steps(name: str, r: torch.Tensor, adv, parts: dict | None) -> dict[str, Any]:
    """The intermediate numbers of a non-`grpo` estimator (its final advantages are the registered
    function's, in `adv`): the means and standard deviations it divides by."""
    valid = adv.token[adv.mask]                                           # each token's value before whitening
    whiten = {"token_count": int(adv.mask.sum()), "token_mean": float(valid.mean()),
              "token_std": float(valid.std(unbiased=False)), "all_equal": bool(valid.max() == valid.min())}
    if name == "reinforce_pp":
        return {"kind": name, "returns": r.tolist(), **whiten}
    if name == "reinforce_pp_baseline":
        return {"kind": name, "group_means": r.mean(1).tolist(), "centered": adv.sequence.tolist(), **whiten}
    if name == "gdpo":
        used = parts or {"reward": (r, 1.0)}
        comps = {}
        for k, (scores, w) in used.items():
            comps[k] = {"weight": float(w), "scores": scores.tolist(), "group_means": scores.mean(1).tolist(),
                        "group_stds": scores.std(1, unbiased=False).tolist(), "z": _zscore(scores, dim=1).tolist()}
        total = sum(w * _zscore(scores, dim=1) for scores, w in used.values())
        return {"kind": name, "components_given": parts is not None, "components": comps,
                "weighted_sum": total.tolist(), "batch_mean": float(total.mean()),
                "batch_std": float(total.std(unbiased=False)), "all_equal": bool(total.max() == total.min())}
    return {"kind": name}            # a newly registered estimator: its final numbers only


def _every_loss(cfg: TrainConfig, adv, dropped: torch.Tensor, T: torch.Tensor, tokens: TokenInputs) -> dict[str, Any]:
    """Every registered policy loss on every token of `tokens`, by the trainer's own per-token loss
    (grpo/algo/token_loss.py, which grpo/train/update.py calls): pi_X by ratio_vs, the rollout
    correction, the entropy selection, beta * KL and the entropy bonus, aggregated over the tokens
    of the groups kept in the loss. L (max_new_tokens of seq_mean_token_sum_norm) is the longest
    given length; the entropy selection's quantile is over this batch."""
    mask = adv.mask                                                       # (N, L) valid tokens
    N, L = mask.shape
    t = _token_tensors(cfg, tokens, L)
    if tokens.advantages is not None:
        A = torch.tensor([a for g in tokens.advantages for a in g], dtype=torch.float64)   # (N,)
        A = torch.where(mask, A[:, None].expand(N, L), torch.zeros(N, L, dtype=torch.float64))
    else:
        A = adv.normalized.to(torch.float64)
    loss_mask = mask & ~dropped[:, None]                                  # (N, L)
    keep = (high_entropy_mask(t["entropy"], loss_mask, cfg.top_entropy_quantile)
            if cfg.top_entropy_quantile < 1.0 else None)
    # the exact KL over the vocabulary needs the logits: k1 stands in for it, unclamped as the trainer leaves it
    full_kl = kl_estimate(t["logp"], t["ref"], "k1") if (cfg.kl_estimator == "full" and t["ref"] is not None) else None
    losses: dict[str, Any] = {}
    for name in POLICY_LOSSES.names():
        terms = token_loss(cfg, t["logp"], A, mask, sampler_logp=t["sampler"], beta=cfg.beta, old_logp=t["old"],
                           ref_logp=t["ref"], full_kl=full_kl, entropy=t["entropy"], keep=keep,
                           bounds=rollout_is_bounds(cfg), loss=name)
        losses[name] = _loss_entry(cfg, name, terms, mask, loss_mask, T, L)
    return _every_loss_result(cfg, tokens, t, A, mask, loss_mask, keep, full_kl, dropped, losses, T)


def _token_tensors(cfg: TrainConfig, tokens: TokenInputs, L: int) -> dict[str, torch.Tensor | None]:
    """The per-token inputs as (N, L) float64: pi_old = pi_theta where not given (the first update),
    the sampler's = pi_old's where not given; the settings that need one refused without it."""
    logp = _pad(tokens.logp, L)
    old = _pad(tokens.old_logp, L) if tokens.old_logp is not None else logp.clone()
    t = {"logp": logp, "old": old, "ref": _pad(tokens.ref_logp, L) if tokens.ref_logp is not None else None,
         "sampler": _pad(tokens.sampler_logp, L) if tokens.sampler_logp is not None else old.clone(),
         "entropy": _pad(tokens.entropy, L) if tokens.entropy is not None else None}
    if cfg.ratio_vs == "ref" and t["ref"] is None:
        raise ConfigError("--ref-logp: ratio_vs=ref takes the ratio against pi_ref, so the loss needs its log-probs; "
                          "give --ref-logp, or --ratio-vs old")
    if t["entropy"] is None and (cfg.entropy_coef > 0 or cfg.top_entropy_quantile < 1.0):
        raise ConfigError("--entropy: entropy_coef and top_entropy_quantile read each token's entropy; give "
                          "--entropy, one sequence per completion")
    return t


def _every_loss_result(cfg: TrainConfig, tokens: TokenInputs, t: dict, A, mask, loss_mask, keep, full_kl, dropped,
                       losses: dict, T) -> dict[str, Any]:
    """The every-token step's JSON: its inputs, the terms every loss shares, and each loss's entry."""
    ref = t["ref"]
    first = next(iter(losses.values()))
    l = t["logp"] - (ref if cfg.ratio_vs == "ref" else t["old"])
    m = mask.to(torch.float64)
    counts = m.sum(1).clamp(min=1.0)
    kl = None if ref is None else (full_kl if full_kl is not None else _plain_kl(cfg, t["logp"], ref))
    return {
        "builtin": tokens.builtin, "logp": _rows(t["logp"], T), "old_logp": _rows(t["old"], T),
        "old_logp_given": tokens.old_logp is not None, "ref_logp": None if ref is None else _rows(ref, T),
        "sampler_logp": _rows(t["sampler"], T), "sampler_logp_given": tokens.sampler_logp is not None,
        "ratio_vs": cfg.ratio_vs, "log_ratio": _rows(l, T), "advantages": _rows(A, T),
        "advantages_from": "--advantages" if tokens.advantages is not None else "estimator",
        "sequence_log_ratio_means": ((l * m).sum(1) / counts).tolist(),
        "sequence_advantage_means": ((A * m).sum(1) / counts).tolist(),
        "rollout_correction": cfg.rollout_correction, "rollout_bounds": list(rollout_is_bounds(cfg)),
        "rollout_log_ratio": first["mismatch_log_ratio"], "rollout_weights": first["mismatch_weight"],
        "rollout_masked": first["mismatch_masked"],
        "entropy": None if t["entropy"] is None else _rows(t["entropy"], T),
        "entropy_kept": None if keep is None else _rows(keep, T),
        "top_entropy_quantile": cfg.top_entropy_quantile, "entropy_coef": cfg.entropy_coef,
        "kl_estimator": None if ref is None else ("k1" if full_kl is not None else cfg.kl_estimator),
        "kl": None if kl is None else _rows(kl, T), "kl_in_loss": ref is not None and cfg.beta > 0,
        "kl_ratio_weight": cfg.kl_ratio_weight, "beta": cfg.beta, "kl_clamp": cfg.kl_clamp,
        "total_differs": (ref is not None and cfg.beta > 0) or (cfg.entropy_coef > 0 and t["entropy"] is not None),
        "aggregation": cfg.loss_aggregation, "in_loss": [not bool(d) for d in dropped],
        "num_seqs": int(sequence_count(loss_mask)), "num_tokens": int(loss_mask.sum()), "max_new_tokens": mask.shape[1],
        "losses": {k: {f: v for f, v in lo.items() if not f.startswith("mismatch_")} for k, lo in losses.items()},
    }


def _plain_kl(cfg: TrainConfig, logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The KL estimate per token as the loss uses it before any importance weight: clamped by kl_clamp."""
    kl = kl_estimate(logp, ref, cfg.kl_estimator)
    return kl.clamp(-cfg.kl_clamp, cfg.kl_clamp) if cfg.kl_clamp is not None else kl


def _loss_entry(cfg: TrainConfig, name: str, terms, mask, loss_mask, T, L: int) -> dict[str, Any]:
    """One policy loss's per-token terms and aggregates, as lists of each sequence's tokens."""
    pol, total = terms.policy.detach(), terms.per_token.detach()
    mm = terms.mismatch
    return {
        "configured": name == cfg.policy_loss,
        "ratio": _rows(terms.ratio.detach().expand_as(pol), T),
        "clipped_low": _rows((terms.clipped_low & mask).expand_as(mask), T),
        "clipped_high": _rows((terms.clipped_high & mask).expand_as(mask), T),
        "policy": _rows(pol, T),
        "kl": None if terms.kl is None else _rows(terms.kl.detach(), T),
        "total": _rows(total, T),
        "policy_aggregate": float(aggregate(pol, loss_mask, cfg.loss_aggregation, max_new_tokens=L)),
        "loss": float(aggregate(total, loss_mask, cfg.loss_aggregation, max_new_tokens=L)),
        "mismatch_log_ratio": _rows(mm.log_ratio, T),
        "mismatch_weight": _rows(mm.weight, T),
        "mismatch_masked": _rows(mm.masked, T),
    }


def _pad(rows: list[list[float]], L: int) -> torch.Tensor:
    """Ragged rows -> (N, L) float64, 0 past each row's end (masked out everywhere)."""
    out = torch.zeros(len(rows), L, dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    return out


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    names = ["advantage_estimator", "reward_scaling", "baseline", "baseline_window", "token_credit", "gamma",
             "token_norm", "filter_zero_variance_groups", "overlong_penalty", "policy_loss", "ratio_vs", "epsilon",
             "epsilon_high", "cispo_max", "dual_clip_c", "sapo_temperature_pos", "sapo_temperature_neg",
             "gmpo_epsilon", "kl_estimator", "beta", "kl_clamp", "kl_ratio_weight", "rollout_correction",
             "rollout_is_min", "rollout_is_max", "top_entropy_quantile", "entropy_coef", "loss_aggregation"]
    return {k: getattr(cfg, k) for k in names}


def _rows(x: torch.Tensor, T: torch.Tensor) -> list[list[float]]:
    """(N, T) padded -> N lists of T_i floats."""
    return [x[i, :T_i].tolist() for i, T_i in enumerate(T.tolist())]


def _scaling_stats(r: torch.Tensor, mode: str) -> dict[str, Any]:
    """Mean and population std that `reward_scaling` divides by: one per group, or one for the batch."""
    if mode == "group":
        return {"scaling_means": r.mean(1).tolist(), "scaling_stds": r.std(1, unbiased=False).tolist()}
    if mode == "batch":
        return {"scaling_means": [float(r.mean())], "scaling_stds": [float(r.std(unbiased=False))]}
    return {"scaling_means": None, "scaling_stds": None}


def _baselines(scaled: torch.Tensor, baseline: str) -> list:
    """r_bar for each group (B,), or for each sequence (B, G) with `leave_one_out`. explain has no
    earlier batches, so `window` holds this batch only."""
    if baseline == "leave_one_out":
        return baseline_values(scaled, baseline).tolist()
    if baseline == "group":
        return scaled.mean(1).tolist()
    return [float(scaled.mean())] * scaled.shape[0]


def _credit_denominators(cfg: TrainConfig, weights: list[list[float]]) -> list[float]:
    if cfg.token_credit == "discounted":
        return [math.fsum(w) for w in weights]
    if cfg.token_credit in ("mean", "discounted_over_length"):
        return [float(len(w)) for w in weights]
    return [1.0] * len(weights)


def _first_token_loss(cfg: TrainConfig, adv, zero_var: torch.Tensor, G: int,
                      logp_theta: float, logp_ref: float) -> dict[str, Any]:
    """Policy term, KL term and aggregation weight of sequence 1's first token."""
    f64 = lambda v: torch.tensor([v], dtype=torch.float64)              # noqa: E731  (1,)
    A = adv.normalized[0, 0].reshape(1)                                   # (1,)
    logp, ref = f64(logp_theta), f64(logp_ref)
    base = logp if cfg.ratio_vs == "old" else ref      # first update: pi_old = pi_theta
    eps_low = cfg.epsilon
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    out: dict[str, Any] = {"advantage": float(A), "logp_theta": logp_theta, "logp_ref": logp_ref,
                           "logp_base": float(base), "log_ratio": float(logp - base),
                           "eps_low": eps_low, "eps_high": eps_high}
    if cfg.policy_loss == "clip":
        loss, ratio, low, high = clipped_policy_loss(logp, base, A, eps_low, eps_high)
        clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
        out.update(ratio=float(ratio), clipped_ratio=float(clipped), surrogate=float(ratio * A),
                   clipped_surrogate=float(clipped * A), clip_binds_low=bool(low), clip_binds_high=bool(high),
                   policy_loss=float(loss))
    elif cfg.policy_loss == "reinforce":
        out.update(ratio=None, clipped_ratio=None, surrogate=float(A * logp), clipped_surrogate=None,
                   clip_binds_low=False, clip_binds_high=False, policy_loss=float(reinforce_policy_loss(logp, A)))
    else:       # the other registered losses, on this one token (a one-token sequence)
        terms = policy_loss(cfg.policy_loss)(logp[None], base[None], A[None], torch.ones(1, 1, dtype=torch.bool), cfg)
        out.update(ratio=float(terms.ratio), clipped_ratio=None, surrogate=None, clipped_surrogate=None,
                   clip_binds_low=bool(terms.clipped_low), clip_binds_high=bool(terms.clipped_high),
                   policy_loss=float(terms.loss))
    # the token's loss as the trainer computes it (first update: pi_old = pi_sampler = pi_theta)
    full, k1, one = cfg.kl_estimator == "full", kl_estimate(logp, ref, "k1"), (lambda x: x.view(1, 1))
    terms = token_loss(cfg, one(logp), one(A), torch.ones(1, 1, dtype=torch.bool), sampler_logp=one(logp),
                       beta=cfg.beta, old_logp=one(logp), ref_logp=one(ref), full_kl=one(k1) if full else None,
                       bounds=rollout_is_bounds(cfg))
    out.update(kl=None if full else float(terms.kl), kl_k1=float(k1), beta=cfg.beta,
               kl_estimate=None if full else float(kl_estimate(logp, ref, cfg.kl_estimator)))   # before kl_clamp
    out["beta_kl"] = cfg.beta * float(terms.kl)
    out["total"] = float(terms.per_token)
    out.update(_aggregation_weight(cfg, adv.mask, zero_var, G))
    out["contribution"] = out["weight"] * out["total"]
    return out


def _aggregation_weight(cfg: TrainConfig, mask: torch.Tensor, zero_var: torch.Tensor, G: int) -> dict[str, Any]:
    """The factor token (1, 1) gets in the aggregated loss: aggregate a one-hot (N, T) tensor."""
    dropped = zero_var.repeat_interleave(G) & cfg.filter_zero_variance_groups   # (N,)
    loss_mask = mask & ~dropped[:, None]                                  # (N, T)
    L = mask.shape[1]                                                     # max_new_tokens := longest given length
    onehot = torch.zeros(mask.shape, dtype=torch.float64)
    onehot[0, 0] = 1.0
    weight = float(aggregate(onehot, loss_mask, cfg.loss_aggregation, max_new_tokens=L))
    return {"aggregation": cfg.loss_aggregation, "weight": weight,
            "num_seqs": int(sequence_count(loss_mask)), "num_tokens": int(loss_mask.sum()),
            "first_length": int(mask[0].sum()), "max_new_tokens": L, "dropped": bool(dropped[0]),
            "dropped_groups": [b for b in range(len(zero_var)) if bool(dropped[b * G])]}
