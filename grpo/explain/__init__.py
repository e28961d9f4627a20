"""`grpo explain`: walk one batch of rewards through the advantage and loss math, printing every number.

The default input is the article's worked example ("GRPO 完整数值示例"): one prompt, two completions
of 3 and 4 tokens with rewards 0.8 and 0.6, and at sequence 1's first token log pi_theta = -1.5,
log pi_ref = -1.6. Every number comes from the same functions the trainer uses (the registered
advantage estimator of grpo.algo.advantages, the registered policy losses, kl_estimate and aggregate
of grpo.algo.losses), in float64 so that what is printed is exact; the walk-through only adds the
intermediate sums those functions do not return.

With per-token log-probs (`--logp`, `--old-logp`, `--ref-logp`, or `--all-losses` for the built-in
ones below) the loss step shows every token of every completion under every registered policy loss,
and each loss's aggregate under `loss_aggregation`. `advantage_estimator`s other than `grpo` are
walked through by their own stages.

Where the article's printed numbers disagree with its own formulas (the normalized advantages are
printed 10x too small, from a rounded sigma), the formulas win and the text says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algo.advantages import _zscore, baseline_values, estimator, zero_variance_groups
from ..algo.losses import (POLICY_LOSSES, aggregate, clipped_policy_loss, kl_estimate, policy_loss,
                           reinforce_policy_loss, sequence_count)
from ..config import ConfigError, TrainConfig
from .render import render

DEFAULT_REWARDS = "0.8,0.6"
DEFAULT_LENGTHS = "3,4"
# The built-in per-token log-probs (`--all-losses` without --logp): illustrative values for the
# article's two completions of 3 and 4 tokens, chosen so that the losses differ. Token 1 of sequence
# 1 is the article's (log pi_theta -1.5, log pi_ref -1.6). Against pi_ref, l = 0.1, 0.5, -0.2 and
# -0.1, 0.1, -1.2, 1.3 (the clip binds above at sequence 1 token 2 and below at sequence 2 token 3;
# dual_clip's c at sequence 2 token 4); against pi_old, l = 0.1, 0.2, -0.1 and 0.1, -0.1, -0.2, 0.
DEFAULT_LOGP = "-1.5,-0.8,-2.3;-1.1,-0.5,-2.8,-0.7"
DEFAULT_OLD_LOGP = "-1.6,-1.0,-2.2;-1.2,-0.4,-2.6,-0.7"
DEFAULT_REF_LOGP = "-1.6,-1.3,-2.1;-1.0,-0.6,-1.6,-2.0"


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


def parse_sequences(text: str, name: str) -> list[list[float]]:
    """"-1.5,-0.8;-1.1" -> [[-1.5, -0.8], [-1.1]]: one sequence of per-token log-probs per completion
    (in group order), split by `;`, tokens by `,`. Sequences may differ in length. `name` is the
    option (`--logp`, `--old-logp`, `--ref-logp`), named in every error with the sequence and token."""
    if text is None or not text.strip():
        raise ConfigError(f"{name}: expected one sequence of log-probs per completion, like '-1.5,-0.8,-2.3;-1.1,-0.5' "
                          "(';' between sequences, ',' between tokens), got nothing")
    seqs: list[list[float]] = []
    for i, chunk in enumerate(text.split(";"), start=1):
        items = [s.strip() for s in chunk.split(",")]
        if items == [""]:
            raise ConfigError(f"{name}: sequence {i} is empty in {text!r}")
        row = []
        for t, s in enumerate(items, start=1):
            try:
                v = float(s)
            except ValueError:
                v = None
            if v is None or not math.isfinite(v) or v > 0:
                raise ConfigError(f"{name}: sequence {i}, token {t} has the bad value {s!r}; "
                                  "expected a finite log-probability <= 0")
            row.append(v)
        seqs.append(row)
    return seqs


def parse_components(specs: list[str]) -> dict[str, tuple[list[list[float]], float]]:
    """`--component NAME[:WEIGHT]=SCORES`, repeatable: one reward function's scores (in --rewards'
    syntax) and its weight (default 1) -> {name: (scores (B, G), weight)}. The reward is their
    weighted sum; the `gdpo` estimator normalises them one by one."""
    out: dict[str, tuple[list[list[float]], float]] = {}
    for spec in specs:
        head, eq, scores = spec.partition("=")
        name, colon, weight_text = head.strip().partition(":")
        name = name.strip()
        if not eq or not name:
            raise ConfigError(f"--component: expected NAME[:WEIGHT]=SCORES such as 'correct:0.8=1,0;0,1', got {spec!r}")
        try:
            weight = float(weight_text) if colon else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ConfigError(f"--component {name}: the bad weight {weight_text.strip()!r}; expected a finite number")
        if name in out:
            raise ConfigError(f"--component: {name!r} is given twice; give each reward function once")
        out[name] = (parse_groups(scores, f"--component {name}", float), weight)
    first = next(iter(out))
    for name, (scores, _) in out.items():
        if [len(g) for g in scores] != [len(g) for g in out[first][0]]:
            raise ConfigError(f"--component {name}: groups of sizes {[len(g) for g in scores]} do not match "
                              f"--component {first}'s {[len(g) for g in out[first][0]]}; every function scores "
                              "every completion")
    return out


def weighted_sum(components: dict[str, tuple[list[list[float]], float]]) -> list[list[float]]:
    """The reward of each completion: sum_k w_k r_k, as the trainer sums its reward functions."""
    total = sum(w * torch.tensor(scores, dtype=torch.float64) for scores, w in components.values())
    return total.tolist()


@dataclass
class TokenInputs:
    """Per-token inputs of the loss step, one row per completion in group order (rows may differ in
    length). `old_logp` None: pi_old = pi_theta (the first update); `ref_logp` None: no reference, so
    no KL term. `advantages` (B, G) or N flat: one per completion, on each of its tokens, in place of
    the estimator's."""
    logp: list[list[float]]
    old_logp: list[list[float]] | None = None
    ref_logp: list[list[float]] | None = None
    advantages: list[list[float]] | None = None
    builtin: bool = False

    @classmethod
    def default(cls, advantages: list[list[float]] | None = None) -> "TokenInputs":
        return cls(parse_sequences(DEFAULT_LOGP, "--logp"), parse_sequences(DEFAULT_OLD_LOGP, "--old-logp"),
                   parse_sequences(DEFAULT_REF_LOGP, "--ref-logp"), advantages, builtin=True)


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


def _check_tokens(tokens: TokenInputs, rewards: list[list[float]], lengths: list[list[int]]) -> None:
    """--logp has one row per completion, each as long as its completion; --old-logp and --ref-logp
    match --logp; --advantages has one value per completion."""
    N = sum(len(g) for g in rewards)
    T = [t for g in lengths for t in g]
    shape = f"{len(rewards)} group{'s' if len(rewards) > 1 else ''} of G = {len(rewards[0])}"
    if len(tokens.logp) != N:
        raise ConfigError(f"--logp: {len(tokens.logp)} sequence{'s' if len(tokens.logp) != 1 else ''}, but there are "
                          f"{N} completions ({shape}); give one sequence per completion, in group order")
    for i, (row, T_i) in enumerate(zip(tokens.logp, T), start=1):
        if len(row) != T_i:
            raise ConfigError(f"--logp: sequence {i} has {len(row)} tokens but --lengths gives completion {i} a "
                              f"length of {T_i}; --lengths can be left out, --logp gives the lengths")
    for name, rows in (("--old-logp", tokens.old_logp), ("--ref-logp", tokens.ref_logp)):
        if rows is None:
            continue
        if len(rows) != N:
            raise ConfigError(f"{name}: {len(rows)} sequence{'s' if len(rows) != 1 else ''} but --logp has {N}; "
                              "give one sequence per completion, in group order")
        for i, (row, T_i) in enumerate(zip(rows, T), start=1):
            if len(row) != T_i:
                raise ConfigError(f"{name}: sequence {i} has {len(row)} tokens but --logp's sequence {i} has {T_i}")
    if tokens.advantages is not None:
        flat = [a for g in tokens.advantages for a in g]
        if [len(g) for g in tokens.advantages] not in ([len(g) for g in rewards], [N]):
            raise ConfigError(f"--advantages: {len(flat)} values in groups of sizes {[len(g) for g in tokens.advantages]}, "
                              f"but the completions are {shape}; give one advantage per completion")


# ---------------------------------------------------------------------------- computing
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
    _check_shapes(rewards, lengths)
    if tokens is not None:
        _check_tokens(tokens, rewards, lengths)
    if components is not None:
        for name, (scores, _) in components.items():
            if [len(g) for g in scores] != [len(g) for g in rewards]:
                raise ConfigError(f"--component {name}: groups of sizes {[len(g) for g in scores]} do not match the "
                                  f"rewards' {[len(g) for g in rewards]}")
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
    """Every registered policy loss on every token of `tokens`, as the trainer's update computes it
    (grpo/train/update.py token_terms): pi_X by ratio_vs, policy + beta * KL per token, aggregated
    over the tokens of the groups kept in the loss. L (max_new_tokens of seq_mean_token_sum_norm) is
    the longest given length."""
    mask = adv.mask                                                       # (N, L) valid tokens
    N, L = mask.shape
    logp = _pad(tokens.logp, L)
    old = _pad(tokens.old_logp, L) if tokens.old_logp is not None else logp.clone()   # first update: pi_old = pi_theta
    ref = _pad(tokens.ref_logp, L) if tokens.ref_logp is not None else None
    if cfg.ratio_vs == "ref" and ref is None:
        raise ConfigError("--ref-logp: ratio_vs=ref takes the ratio against pi_ref, so the loss needs its log-probs; "
                          "give --ref-logp, or --ratio-vs old")
    base = ref if cfg.ratio_vs == "ref" else old
    if tokens.advantages is not None:
        A = torch.tensor([a for g in tokens.advantages for a in g], dtype=torch.float64)   # (N,)
        A = torch.where(mask, A[:, None].expand(N, L), torch.zeros(N, L, dtype=torch.float64))
    else:
        A = adv.normalized.to(torch.float64)
    loss_mask = mask & ~dropped[:, None]                                  # (N, L)
    kl, kl_used = None, None
    if ref is not None:
        kl_used = "k1" if cfg.kl_estimator == "full" else cfg.kl_estimator
        kl = kl_estimate(logp, ref, kl_used)
        if cfg.kl_clamp is not None:
            kl = kl.clamp(-cfg.kl_clamp, cfg.kl_clamp)
    kl_in = kl is not None and cfg.beta > 0
    m = mask.to(torch.float64)
    counts = m.sum(1).clamp(min=1.0)
    l = logp - base
    losses: dict[str, Any] = {}
    for name in POLICY_LOSSES.names():
        terms = policy_loss(name)(logp, base, A, mask, cfg)
        pol = terms.loss.detach()
        total = pol + cfg.beta * kl if kl_in else pol
        losses[name] = {
            "configured": name == cfg.policy_loss,
            "ratio": _rows(terms.ratio.detach(), T),
            "clipped_low": _rows(terms.clipped_low & mask, T),
            "clipped_high": _rows(terms.clipped_high & mask, T),
            "policy": _rows(pol, T),
            "total": _rows(total, T),
            "policy_aggregate": float(aggregate(pol, loss_mask, cfg.loss_aggregation, max_new_tokens=L)),
            "loss": float(aggregate(total, loss_mask, cfg.loss_aggregation, max_new_tokens=L)),
        }
    return {
        "builtin": tokens.builtin,
        "logp": _rows(logp, T),
        "old_logp": _rows(old, T),
        "old_logp_given": tokens.old_logp is not None,
        "ref_logp": None if ref is None else _rows(ref, T),
        "ratio_vs": cfg.ratio_vs,
        "log_ratio": _rows(l, T),
        "advantages": _rows(A, T),
        "advantages_from": "--advantages" if tokens.advantages is not None else "estimator",
        "sequence_log_ratio_means": ((l * m).sum(1) / counts).tolist(),
        "sequence_advantage_means": ((A * m).sum(1) / counts).tolist(),
        "kl_estimator": kl_used,
        "kl": None if kl is None else _rows(kl, T),
        "kl_in_loss": kl_in,
        "beta": cfg.beta,
        "kl_clamp": cfg.kl_clamp,
        "aggregation": cfg.loss_aggregation,
        "in_loss": [not bool(d) for d in dropped],
        "num_seqs": int(sequence_count(loss_mask)),
        "num_tokens": int(loss_mask.sum()),
        "max_new_tokens": L,
        "losses": losses,
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
             "gmpo_epsilon", "kl_estimator", "beta", "kl_clamp", "loss_aggregation"]
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
def main(cfg: TrainConfig, rewards_text: str | None, lengths_text: str | None, as_json: bool, *,
         logp: str | None = None, old_logp: str | None = None, ref_logp: str | None = None,
         advantages: str | None = None, components: list[str] | None = None, all_losses: bool = False) -> int:
    """`grpo explain`: the article's example by default; --rewards (or --component) needs --lengths
    or --logp. Any of --logp, --old-logp, --ref-logp, --advantages (or all_losses) turns the loss
    step into every registered loss on every token; without --logp, on the built-in log-probs."""
    comps = parse_components(components) if components else None
    if comps is not None and rewards_text is not None:
        raise ConfigError("--component: give --rewards or --component, not both; the reward is the weighted sum "
                          "of the components")
    given = "--component" if comps is not None else "--rewards" if rewards_text is not None else None
    for name, value in (("--old-logp", old_logp), ("--ref-logp", ref_logp)):
        if value is not None and logp is None:
            raise ConfigError(f"{name}: given without --logp; pass the policy's log-probs with --logp too "
                              "(one sequence per completion)")
    if given is None and lengths_text is not None:
        raise ConfigError("--lengths: given without --rewards; pass both, or neither for the article's example")
    if given is None:
        rewards = parse_groups(DEFAULT_REWARDS, "--rewards", float)
    else:
        rewards = weighted_sum(comps) if comps is not None else parse_groups(rewards_text, "--rewards", float)
    seqs = parse_sequences(logp, "--logp") if logp is not None else None
    if lengths_text is not None:
        lengths = parse_groups(lengths_text, "--lengths", int)
    elif seqs is not None:
        lengths = _lengths_of(seqs, rewards)
    elif given is None:
        lengths = parse_groups(DEFAULT_LENGTHS, "--lengths", int)
    else:
        raise ConfigError(f"{given}: given without --lengths; pass one completion length per reward, e.g. "
                          "--lengths '3,4' (or per-token log-probs with --logp, which give the lengths)")
    tokens = None
    if all_losses or any(v is not None for v in (logp, old_logp, ref_logp, advantages)):
        adv = parse_groups(advantages, "--advantages", float) if advantages is not None else None
        if seqs is not None:
            tokens = TokenInputs(seqs, parse_sequences(old_logp, "--old-logp") if old_logp is not None else None,
                                 parse_sequences(ref_logp, "--ref-logp") if ref_logp is not None else None, adv)
        elif [[len(g) for g in rewards], lengths] == [[2], [[3, 4]]]:
            tokens = TokenInputs.default(adv)
        else:
            raise ConfigError(f"--logp: the built-in log-probs are for the article's two completions of 3 and 4 tokens; "
                              f"for these completions (lengths {'; '.join(','.join(map(str, g)) for g in lengths)}) "
                              "give --logp, one sequence per completion")
    result = explain(cfg, rewards, lengths, tokens=tokens, components=comps)
    print(json.dumps(result) if as_json else render(cfg, result), end="\n" if as_json else "")
    return 0


def _lengths_of(seqs: list[list[float]], rewards: list[list[float]]) -> list[list[int]]:
    """--logp's sequence lengths in --rewards' groups."""
    sizes = [len(g) for g in rewards]
    if len(seqs) != sum(sizes):
        raise ConfigError(f"--logp: {len(seqs)} sequence{'s' if len(seqs) != 1 else ''}, but there are {sum(sizes)} "
                          f"completions ({len(sizes)} group{'s' if len(sizes) > 1 else ''} of G = {sizes[0]}); "
                          "give one sequence per completion, in group order")
    out, i = [], 0
    for n in sizes:
        out.append([len(s) for s in seqs[i:i + n]])
        i += n
    return out
