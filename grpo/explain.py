"""`grpo explain`: walk one batch of rewards through the advantage and loss math, printing every number.

The default input is the article's worked example ("GRPO 完整数值示例"): one prompt, two completions
of 3 and 4 tokens with rewards 0.8 and 0.6, and at sequence 1's first token log pi_theta = -1.5,
log pi_ref = -1.6. Every number comes from the same functions the trainer uses
(grpo.advantages.compute_advantages, grpo.losses), in float64 so that what is printed is exact;
the walk-through only adds the intermediate sums those functions do not return.

Where the article's printed numbers disagree with its own formulas (the normalized advantages are
printed 10x too small, from a rounded sigma), the formulas win and the text says so.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import torch

from grpo.advantages import compute_advantages, zero_variance_groups
from grpo.config import ConfigError, TrainConfig
from grpo.losses import aggregate, clipped_policy_loss, kl_estimate, reinforce_policy_loss, sequence_count

DEFAULT_REWARDS = "0.8,0.6"
DEFAULT_LENGTHS = "3,4"
EPS_TEXT = "1e-8"

# What the article prints for its example, to flag where the formulas give something else.
ARTICLE_NORMALIZED = "0.1134, 0.1145, 0.1159 / -0.0846, -0.0856, -0.0863, -0.0873"


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


def _baselines(scaled: torch.Tensor, baseline: str) -> list[float]:
    """r_bar for each group (B,). explain has no earlier batches, so `window` holds this batch only."""
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
    else:
        out.update(ratio=None, clipped_ratio=None, surrogate=float(A * logp), clipped_surrogate=None,
                   clip_binds_low=False, clip_binds_high=False, policy_loss=float(reinforce_policy_loss(logp, A)))
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


# ---------------------------------------------------------------------------- rendering
def fmt(x: float) -> str:
    """7 significant digits; float noise below 1e-10 (0.8 - 0.7 = 0.10000000000000009) is not shown."""
    return f"{round(float(x), 10) + 0.0:.7g}"


def _p(x: float) -> str:
    """A factor in a product: negatives in parentheses, `0.99 * (-0.1)`."""
    return f"({fmt(x)})" if fmt(x).startswith("-") else fmt(x)


def _sum(values) -> str:
    """`a + b - c`: a sum written with its signs."""
    out = fmt(values[0])
    for v in values[1:]:
        out += f" - {fmt(-v)}" if fmt(v).startswith("-") else f" + {fmt(v)}"
    return out


def _is_article_example(cfg: TrainConfig, res: dict) -> bool:
    return (res["rewards"] == [[0.8, 0.6]] and res["lengths"] == [[3, 4]] and cfg.reward_scaling == "none"
            and cfg.token_credit == "discounted" and cfg.gamma == 0.99 and cfg.token_norm)


def render(cfg: TrainConfig, result: dict) -> str:
    """The step-by-step walk-through, like the article's worked example, every number printed."""
    lines: list[str] = []
    for step in (_render_inputs, _render_scaling, _render_baseline, _render_credit, _render_norm, _render_loss):
        lines += step(cfg, result)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _seq_label(i: int, res: dict) -> str:
    G = len(res["rewards"][0])
    dropped = ", dropped from the loss" if i // G in res["loss"]["dropped_groups"] else ""
    return f"sequence {i + 1} (group {i // G + 1}, completion {i % G + 1}{dropped})"


def _render_inputs(cfg, res) -> list[str]:
    B, G = len(res["rewards"]), len(res["rewards"][0])
    lines = [f"GRPO, step by step (preset {cfg.preset})",
             f"Inputs: B = {B} prompt{'s' if B > 1 else ''}, G = {G} completions each, "
             f"N = {B * G} sequences, numbered in group order.",
             f"  rewards r = {_groups(res['rewards'])}",
             f"  lengths T = {_groups(res['lengths'])}"]
    if cfg.overlong_penalty:
        lines.append("  overlong_penalty=on: the soft overlong penalty is part of the reward; the rewards given "
                     "here are taken as final (penalty already included).")
    else:
        lines.append("  The rewards given are taken as final (overlong_penalty=off: no length penalty is added).")
    return lines


def _groups(groups: list[list]) -> str:
    return "; ".join(", ".join(fmt(v) for v in g) for g in groups)


def _render_scaling(cfg, res) -> list[str]:
    mode = cfg.reward_scaling
    head = f"Step 1. Reward scaling (reward_scaling={mode})"
    if mode == "none":
        return [head + ": none, the rewards are used as given.", f"  r' = {_groups(res['scaled_rewards'])}"]
    lines = [head + f": r' = (r - mu) / (sigma + {EPS_TEXT}), sigma the population std, "
             + ("per prompt group." if mode == "group" else "over the whole batch.")]
    pools = res["rewards"] if mode == "group" else [[v for g in res["rewards"] for v in g]]
    for k, (pool, mu, sd) in enumerate(zip(pools, res["scaling_means"], res["scaling_stds"])):
        where = f"group {k + 1}" if mode == "group" else "batch"
        lines.append(f"  {where}: mu = ({_sum(pool)}) / {len(pool)} = {fmt(mu)}; "
                     f"sigma = sqrt(({' + '.join(f'({fmt(v)} - {_p(mu)})^2' for v in pool)}) / {len(pool)}) = {fmt(sd)}")
    for b, (group, scaled) in enumerate(zip(res["rewards"], res["scaled_rewards"])):
        k = b if mode == "group" else 0
        mu, sd = res["scaling_means"][k], res["scaling_stds"][k]
        if max(pools[k]) == min(pools[k]):
            lines.append(f"  group {b + 1}: all rewards equal (sigma = 0): r' = 0 exactly, never NaN")
            continue
        for g, (v, s) in enumerate(zip(group, scaled)):
            lines.append(f"  group {b + 1}, r'_{g + 1} = ({fmt(v)} - {_p(mu)}) / ({fmt(sd)} + {EPS_TEXT}) = {fmt(s)}")
    return lines


def _render_baseline(cfg, res) -> list[str]:
    G = len(res["rewards"][0])
    scaled, rbar = res["scaled_rewards"], res["baseline_values"]
    allv = [v for g in scaled for v in g]
    lines = [f"Step 2. Sequence advantages (baseline={cfg.baseline}): A_i = r'_i - r_bar"]
    if cfg.baseline == "group":
        lines[0] += ", r_bar = the mean over the prompt's group."
    elif cfg.baseline == "batch":
        lines[0] += ", r_bar = the mean over the whole batch (as in the article's compute_advantages code)."
    else:
        lines[0] += (f", r_bar = the mean over the last baseline_window={cfg.baseline_window} batches; "
                     "explain has no earlier batches, so the window holds this batch only.")
    if cfg.baseline != "group":
        lines.append(f"  r_bar = ({_sum(allv)}) / {len(allv)} = {fmt(rbar[0])}")
    for b, group in enumerate(scaled):
        if cfg.baseline == "group":
            lines.append(f"  group {b + 1}: r_bar = ({_sum(group)}) / {G} = {fmt(rbar[b])}")
        for g, (v, a) in enumerate(zip(group, res["sequence_advantages"][b])):
            lines.append(f"    A_{b * G + g + 1} = {fmt(v)} - {_p(rbar[b])} = {fmt(a)}")
    zv = res["zero_variance_groups"]
    if not zv:
        lines.append("  Zero-variance groups (all rewards equal): none.")
    else:
        names = ", ".join(str(b + 1) for b in zv)
        what = ("DROPPED from the loss (filter_zero_variance_groups=on, as in DAPO)" if cfg.filter_zero_variance_groups
                else "kept in the loss (filter_zero_variance_groups=off)")
        extra = " their advantages are exactly 0;" if cfg.baseline == "group" else ""
        lines.append(f"  Zero-variance groups (all rewards equal): group {names} ({len(zv)} of {len(scaled)});{extra} {what}.")
    return lines


def _render_credit(cfg, res) -> list[str]:
    credit = cfg.token_credit
    formula = {"uniform": "A~_t = A_i (every token gets the sequence advantage)",
               "mean": "A~_t = A_i / T_i",
               "discounted": "A~_t = gamma^(T_i-t) A_i / sum_k gamma^(T_i-k)",
               "discounted_over_length": "A~_t = gamma^(T_i-t) A_i / T_i"}[credit]
    setting = f"token_credit={credit}" + (f", gamma={fmt(cfg.gamma)}" if credit.startswith("discounted") else "")
    lines = [f"Step 3. Token credit ({setting}): {formula}"]
    A = [a for g in res["sequence_advantages"] for a in g]
    for i, (toks, w, den) in enumerate(zip(res["token_advantages"], res["discount_weights"], res["credit_denominators"])):
        T_i = len(toks)
        lines.append(f"  {_seq_label(i, res)}, T = {T_i}, A = {fmt(A[i])}:")
        if credit.startswith("discounted"):
            lines.append("    discount weights: " + ", ".join(f"gamma^{T_i - t}={fmt(x)}" for t, x in enumerate(w, start=1)))
            if credit == "discounted":
                lines.append(f"    sum = {' + '.join(fmt(x) for x in w)} = {fmt(den)}")
            for t, (x, v) in enumerate(zip(w, toks), start=1):
                lines.append(f"    t={t}: {fmt(x)} * {_p(A[i])} / {fmt(den)} = {fmt(v)}")
        elif credit == "mean":
            lines.append(f"    every token: {fmt(A[i])} / {T_i} = {fmt(toks[0])}")
        else:
            lines.append(f"    every token: {fmt(toks[0])}")
    return lines


def _render_norm(cfg, res) -> list[str]:
    toks = [v for row in res["token_advantages"] for v in row]
    n, mu, sd = len(toks), res["token_mean"], res["token_std"]
    if not cfg.token_norm:
        return ["Step 4. Token normalization (token_norm=off): the token advantages above are used as they are."]
    lines = [f"Step 4. Token normalization (token_norm=on): A^ = (A~ - mean) / (std + {EPS_TEXT}) over all {n} valid tokens",
             f"  mean = ({_sum(toks)}) / {n} = {fmt(mu)}",
             f"  std (population) = sqrt(sum (A~ - mean)^2 / {n}) = {fmt(sd)}"]
    if max(toks) == min(toks):
        lines.append("  All token advantages are equal (std 0): every normalized value is exactly 0, never NaN.")
        return lines
    for i, (row, nrow) in enumerate(zip(res["token_advantages"], res["normalized_token_advantages"])):
        lines.append(f"  {_seq_label(i, res)}: " + ", ".join(
            f"({fmt(v)} - {_p(mu)}) / {fmt(sd)} = {fmt(x)}" for v, x in zip(row, nrow)))
    if _is_article_example(cfg, res):
        lines.append(f"  Note: the article prints {ARTICLE_NORMALIZED} here: 10x too small and computed from a "
                     "rounded sigma 0.0291; the formula gives the values above.")
    return lines


def _render_loss(cfg, res) -> list[str]:
    lo = res["loss"]
    lines = [f"Step 5. Loss at sequence 1, token 1 (log pi_theta = {fmt(lo['logp_theta'])}, "
             f"log pi_ref = {fmt(lo['logp_ref'])}, A^ = {fmt(lo['advantage'])})"]
    lines += _render_policy(cfg, lo, _is_article_example(cfg, res))
    lines += _render_kl(cfg, lo)
    kl_name = "k1 in place of the full KL" if cfg.kl_estimator == "full" else cfg.kl_estimator
    lines.append(f"  per-token total = policy + beta * KL ({kl_name}) = {_sum([lo['policy_loss'], lo['beta_kl']])} "
                 f"= {fmt(lo['total'])}")
    lines += _render_weight(cfg, lo)
    return lines


def _render_policy(cfg, lo, article: bool) -> list[str]:
    A = _p(lo["advantage"])
    if cfg.policy_loss == "reinforce":
        return [f"  policy (policy_loss=reinforce, the article's first form; no ratio, no clip): "
                f"-A^ * log pi_theta = -({A} * {_p(lo['logp_theta'])}) = {fmt(lo['policy_loss'])}"]
    if cfg.ratio_vs == "old":
        lines = ["  ratio (ratio_vs=old): rho = pi_theta / pi_old; at the first update pi_old = pi_theta, so the "
                 "log-ratio is 0 and rho = 1 (the gradient is still A^ * grad log pi)",
                 f"  log-ratio = {fmt(lo['log_ratio'])}, rho = {fmt(lo['ratio'])}"]
    else:
        lines = [f"  ratio (ratio_vs=ref, the article: pi_X = pi_ref): log-ratio = {fmt(lo['logp_theta'])} - "
                 f"({fmt(lo['logp_ref'])}) = {fmt(lo['log_ratio'])}; rho = e^{fmt(lo['log_ratio'])} = {fmt(lo['ratio'])}"]
    lo_b, hi_b = 1.0 - lo["eps_low"], 1.0 + lo["eps_high"]
    if lo["clip_binds_low"] or lo["clip_binds_high"]:
        binds = "the clip binds: the loss uses the clipped term"
    elif lo["ratio"] != lo["clipped_ratio"]:
        binds = "outside the range, but with this sign of A^ the min keeps the unclipped term: the clip does not bind"
    else:
        binds = "inside the range; the clip does not bind"
    eps = f"epsilon={fmt(lo['eps_low'])}" + (f", epsilon_high={fmt(lo['eps_high'])}" if lo["eps_high"] != lo["eps_low"] else "")
    lines += [f"  clipped ratio (policy_loss=clip, {eps}): clip({fmt(lo['ratio'])}, {fmt(lo_b)}, {fmt(hi_b)}) = "
              f"{fmt(lo['clipped_ratio'])} ({binds})",
              f"  surrogate terms: rho * A^ = {fmt(lo['ratio'])} * {A} = {fmt(lo['surrogate'])}; "
              f"clip(rho) * A^ = {fmt(lo['clipped_ratio'])} * {A} = {fmt(lo['clipped_surrogate'])}",
              f"  policy loss = -min({fmt(lo['surrogate'])}, {fmt(lo['clipped_surrogate'])}) = {fmt(lo['policy_loss'])}"]
    if article and cfg.ratio_vs == "ref" and (lo["logp_theta"], lo["logp_ref"]) == (-1.5, -1.6):
        lines.append("  Note: the article prints the objective min(...) = +0.1253, from its too-small advantage 0.1134; "
                     "the loss is the negated objective, computed here with the formula's advantage.")
    return lines


def _render_kl(cfg, lo) -> list[str]:
    t, r, k1 = fmt(lo["logp_theta"]), fmt(lo["logp_ref"]), fmt(lo["kl_k1"])
    est = cfg.kl_estimator
    if est == "k1":
        lines = [f"  KL (kl_estimator=k1): log pi_theta - log pi_ref = {t} - ({r}) = {k1}"]
    elif est == "k2":
        lines = [f"  KL (kl_estimator=k2): 1/2 (log pi_theta - log pi_ref)^2 = 0.5 * {_p(lo['kl_k1'])}^2 = {fmt(lo['kl'])}"]
    elif est == "k3":
        lines = [f"  KL (kl_estimator=k3): pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 = e^{fmt(-lo['kl_k1'])} "
                 f"- {_p(-lo['kl_k1'])} - 1 = {fmt(math.exp(-lo['kl_k1']))} + {_p(lo['kl_k1'])} - 1 = {fmt(lo['kl'])}"]
    else:
        lines = ["  KL (kl_estimator=full): the full-vocabulary KL sum_v pi_theta(v) log(pi_theta(v)/pi_ref(v)) needs the "
                 "whole distribution and cannot be computed from two log-probs;",
                 f"    for reference, k1 = log pi_theta - log pi_ref = {t} - ({r}) = {k1}"]
    if cfg.beta == 0:
        lines.append("  beta * KL: the KL term is off (beta = 0), it contributes 0")
    else:
        kl = lo["kl_k1"] if lo["kl"] is None else lo["kl"]
        lines.append(f"  beta * KL (beta={fmt(cfg.beta)}) = {fmt(cfg.beta)} * {_p(kl)} = {fmt(lo['beta_kl'])}")
    return lines


def _render_weight(cfg, lo) -> list[str]:
    mode, N, L = lo["aggregation"], lo["num_seqs"], lo["max_new_tokens"]
    head = f"  weight in the loss (loss_aggregation={mode}"
    if lo["dropped"]:
        return [head + "): sequence 1's group has zero reward variance and filter_zero_variance_groups=on, so it is "
                "dropped from the loss: weight 0, contribution 0"]
    if mode == "seq_mean_token_mean":
        how = f"): 1 / (N_seq * T_1) = 1 / ({N} * {lo['first_length']}) = {fmt(lo['weight'])}"
    elif mode == "token_mean":
        how = f"): 1 / sum_i T_i = 1 / {lo['num_tokens']} = {fmt(lo['weight'])}"
    else:
        how = (f", max_new_tokens L = {L}, the longest given length; the configured max_new_tokens is not used here): "
               f"1 / (N_seq * L) = 1 / ({N} * {L}) = {fmt(lo['weight'])}")
    lines = [head + how]
    if lo["dropped_groups"]:
        lines.append(f"    (N_seq = {N} counts only the kept sequences; dropped group(s): "
                     f"{', '.join(str(b + 1) for b in lo['dropped_groups'])})")
    lines.append(f"  contribution to the loss = {fmt(lo['weight'])} * {_p(lo['total'])} = {fmt(lo['contribution'])}")
    return lines


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
