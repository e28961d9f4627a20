"""`grpo explain`: walk one batch of rewards through the advantage and loss math, printing every number.

The default input is the article's worked example ("GRPO 完整数值示例"): one prompt, two completions
of 3 and 4 tokens with rewards 0.8 and 0.6, and at sequence 1's first token log pi_theta = -1.5,
log pi_ref = -1.6. Every number comes from the same functions the trainer uses
(grpo.algo.advantages.compute_advantages, grpo.algo.losses), in float64 so that what is printed is exact;
the walk-through only adds the intermediate sums those functions do not return.

Where the article's printed numbers disagree with its own formulas (the normalized advantages are
printed 10x too small, from a rounded sigma), the formulas win and the text says so.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import torch

from ..algo.advantages import baseline_values, compute_advantages, zero_variance_groups
from ..algo.losses import (aggregate, clipped_policy_loss, kl_estimate, policy_loss, reinforce_policy_loss,
                           sequence_count)
from ..config import ConfigError, TrainConfig
from .render import render

DEFAULT_REWARDS = "0.8,0.6"
DEFAULT_LENGTHS = "3,4"


# ------------------------------------------------------------------------------ parsing
def parse_groups(text: str, name: str, cast: Callable = float) -> list[list]:
    """"0.8,0.6;1,0" -> [[0.8, 0.6], [1.0, 0.0]]: groups split by `;`, values by `,`.

    `name` is the option the text came from (`--rewards`, `--lengths`); it is named in every error.
    Every group must have the same size G >= 2. With cast=int the values are lengths: whole
    numbers >= 1. Floats must be finite."""
    if text is None or not text.strip():
        raise ConfigError(f"{name}: expected groups like '0.8,0.6;1,0' (';' between groups, ',' between values), got nothing")
    groups: list[list] = []
    for b, chunk in enumerate(text.split(";"), start=1):
        items = [s.strip() for s in chunk.split(",")]
        if items == [""]:
            raise ConfigError(f"{name}: group {b} is empty in {text!r}")
        groups.append([_parse_value(s, name, b, cast) for s in items])
    G = len(groups[0])
    for b, group in enumerate(groups, start=1):
        if len(group) != G:
            raise ConfigError(f"{name}: group {b} has {len(group)} values but group 1 has {G}; every group needs the same size G")
    if G < 2:
        raise ConfigError(f"{name}: each group has {G} value; GRPO compares completions of one prompt, so G must be >= 2")
    return groups


def _parse_value(s: str, name: str, b: int, cast: Callable):
    kind = "a whole number >= 1" if cast is int else "a finite number"
    try:
        v = cast(s)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: group {b} has the bad value {s!r}; expected {kind}") from None
    if (cast is int and v < 1) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(f"{name}: group {b} has the bad value {s!r}; expected {kind}")
    return v


def _check_shapes(rewards: list[list[float]], lengths: list[list[int]]) -> None:
    shape_r = [len(g) for g in rewards]
    shape_l = [len(g) for g in lengths]
    if shape_r != shape_l:
        raise ConfigError(f"--lengths: groups of sizes {shape_l} do not match --rewards' groups of sizes {shape_r}; "
                          "give one length per reward")
    for b, group in enumerate(lengths, start=1):
        for T in group:
            if isinstance(T, bool) or not isinstance(T, int) or T < 1:
                raise ConfigError(f"--lengths: group {b} has the bad value {T!r}; expected a whole number >= 1")


# ---------------------------------------------------------------------------- computing
def explain(cfg: TrainConfig, rewards: list[list[float]], lengths: list[list[int]],
            logp_theta: float = -1.5, logp_ref: float = -1.6) -> dict[str, Any]:
    """Every number of the advantage pipeline for this batch, and of the loss at sequence 1, token 1.

    Sequences are numbered in group order (group 1's completions first). Group indices in
    `zero_variance_groups` and `dropped_groups` are 0-based."""
    _check_shapes(rewards, lengths)
    if cfg.advantage_estimator != "grpo":
        raise ConfigError(f"explain: the walk-through follows the `grpo` estimator's stages; "
                          f"advantage_estimator {cfg.advantage_estimator!r} is not shown yet (its formula is in "
                          "docs/algorithm.md)")
    B, G = len(rewards), len(rewards[0])
    r = torch.tensor(rewards, dtype=torch.float64)                        # (B, G)
    T = torch.tensor(lengths, dtype=torch.int64).reshape(B * G)           # (N,)
    max_len = int(T.max())
    adv = compute_advantages(r, T, max_len, reward_scaling=cfg.reward_scaling, baseline=cfg.baseline,
                             token_credit=cfg.token_credit, gamma=cfg.gamma, token_norm=cfg.token_norm)
    zero_var = zero_variance_groups(r)                                    # (B,)
    valid = adv.token[adv.mask]                                           # (sum T_i,)
    weights = [[cfg.gamma ** (T_i - t) for t in range(1, T_i + 1)] for T_i in T.tolist()]
    out: dict[str, Any] = {
        "preset": cfg.preset,
        "settings": _settings(cfg),
        "rewards": [[float(x) for x in g] for g in rewards],
        "lengths": [[int(x) for x in g] for g in lengths],
        "rewards_are_final": True,
        **_scaling_stats(r, cfg.reward_scaling),
        "scaled_rewards": adv.scaled_rewards.tolist(),
        "baseline_values": _baselines(adv.scaled_rewards, cfg.baseline),
        "zero_variance_groups": [b for b in range(B) if zero_var[b]],
        "sequence_advantages": adv.sequence.tolist(),
        "discount_weights": weights,
        "discount_sums": [math.fsum(w) for w in weights],
        "credit_denominators": _credit_denominators(cfg, weights),
        "token_advantages": _rows(adv.token, T),
        "token_mean": float(valid.mean()),
        "token_std": float(valid.std(unbiased=False)),
        "normalized_token_advantages": _rows(adv.normalized, T),
    }
    out["loss"] = _first_token_loss(cfg, adv, zero_var, G, logp_theta, logp_ref)
    return out


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    names = ["reward_scaling", "baseline", "baseline_window", "token_credit", "gamma", "token_norm",
             "filter_zero_variance_groups", "overlong_penalty", "policy_loss", "ratio_vs", "epsilon",
             "epsilon_high", "kl_estimator", "beta", "loss_aggregation"]
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
    k1 = float(kl_estimate(logp, ref, "k1"))
    kl = None if cfg.kl_estimator == "full" else float(kl_estimate(logp, ref, cfg.kl_estimator))
    out.update(kl=kl, kl_k1=k1, beta=cfg.beta)
    out["beta_kl"] = cfg.beta * (k1 if kl is None else kl)
    out["total"] = out["policy_loss"] + out["beta_kl"]
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


# --------------------------------------------------------------------------------- main
def main(cfg: TrainConfig, rewards_text: str | None, lengths_text: str | None, as_json: bool) -> int:
    """`grpo explain`: the article's example by default; --rewards needs --lengths."""
    if rewards_text is None and lengths_text is None:
        rewards_text, lengths_text = DEFAULT_REWARDS, DEFAULT_LENGTHS
    elif rewards_text is None:
        raise ConfigError("--lengths: given without --rewards; pass both, or neither for the article's example")
    elif lengths_text is None:
        raise ConfigError("--rewards: given without --lengths; pass one completion length per reward, e.g. --lengths '3,4'")
    rewards = parse_groups(rewards_text, "--rewards", float)
    lengths = parse_groups(lengths_text, "--lengths", int)
    result = explain(cfg, rewards, lengths)
    print(json.dumps(result) if as_json else render(cfg, result), end="\n" if as_json else "")
    return 0
