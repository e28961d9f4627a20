"""`grpo explain`'s walk-through: the computation's result (grpo/explain/compute.py) as text, every
number printed the way the article's worked example prints it. Reads only the result (and the
config for the settings' names and parameters), so the text and `--json` always agree."""

from __future__ import annotations

import math

from ..config import TrainConfig
from .numbers import fmt, p as _p, signed_sum as _sum
from .render_losses import render_every_loss

EPS_TEXT = "1e-8"
# What the article prints for its example, to flag where the formulas give something else.
ARTICLE_NORMALIZED = "0.1134, 0.1145, 0.1159 / -0.0846, -0.0856, -0.0863, -0.0873"


def _is_article_example(cfg: TrainConfig, res: dict) -> bool:
    return (res["rewards"] == [[0.8, 0.6]] and res["lengths"] == [[3, 4]] and res["advantage_estimator"] == "grpo"
            and res["components"] is None and cfg.reward_scaling == "none"
            and cfg.token_credit == "discounted" and cfg.gamma == 0.99 and cfg.token_norm)


def render(cfg: TrainConfig, result: dict) -> str:
    """The step-by-step walk-through, like the article's worked example, every number printed."""
    lines = _render_inputs(cfg, result) + [""]
    if result["advantage_estimator"] == "grpo":
        for step in (_render_scaling, _render_baseline, _render_credit, _render_norm):
            lines += step(cfg, result) + [""]
        n = 5
    else:
        steps = _render_estimator(cfg, result)
        for step in steps:
            lines += step + [""]
        n = len(steps) + 1
    if result["all_losses"] is None:
        lines += _render_loss(cfg, result, n)
    else:
        lines += render_every_loss(cfg, result, n)
    return "\n".join(lines).rstrip() + "\n"


def _seq_label(i: int, res: dict) -> str:
    G = len(res["rewards"][0])
    dropped = ", dropped from the loss" if i // G in res["dropped_groups"] else ""
    return f"sequence {i + 1} (group {i // G + 1}, completion {i % G + 1}{dropped})"


def _render_inputs(cfg, res) -> list[str]:
    B, G = len(res["rewards"]), len(res["rewards"][0])
    lines = [f"GRPO, step by step (preset {cfg.preset})",
             f"Inputs: B = {B} prompt{'s' if B > 1 else ''}, G = {G} completions each, "
             f"N = {B * G} sequences, numbered in group order.",
             f"  rewards r = {_groups(res['rewards'])}",
             f"  lengths T = {_groups(res['lengths'])}"]
    if res["components"] is not None:
        comps = res["components"]
        for name, c in comps.items():
            lines.append(f"  reward function {name} (weight {fmt(c['weight'])}): {_groups(c['scores'])}")
        lines.append("  r = sum_k w_k r_k over the " + str(len(comps)) + " functions (as the trainer sums them); "
                     + ("advantage_estimator=gdpo normalises them one by one." if res["advantage_estimator"] == "gdpo"
                        else f"advantage_estimator={res['advantage_estimator']} reads only the sum."))
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
    elif cfg.baseline == "leave_one_out":
        lines[0] += (", r_bar_i = the mean of the group's other rewards, (sum_group - r'_i) / (G-1) "
                     "(RLOO; G/(G-1) times the group advantage).")
    elif cfg.baseline == "batch":
        lines[0] += ", r_bar = the mean over the whole batch (as in the article's compute_advantages code)."
    else:
        lines[0] += (f", r_bar = the mean over the last baseline_window={cfg.baseline_window} batches; "
                     "explain has no earlier batches, so the window holds this batch only.")
    if cfg.baseline in ("batch", "window"):
        lines.append(f"  r_bar = ({_sum(allv)}) / {len(allv)} = {fmt(rbar[0])}")
    for b, group in enumerate(scaled):
        if cfg.baseline == "group":
            lines.append(f"  group {b + 1}: r_bar = ({_sum(group)}) / {G} = {fmt(rbar[b])}")
        if cfg.baseline == "leave_one_out":
            lines.append(f"  group {b + 1}: sum = {_sum(group)} = {fmt(math.fsum(group))}")
        for g, (v, a) in enumerate(zip(group, res["sequence_advantages"][b])):
            if cfg.baseline == "leave_one_out":
                lines.append(f"    r_bar_{b * G + g + 1} = ({fmt(math.fsum(group))} - {_p(v)}) / {G - 1} = "
                             f"{fmt(rbar[b][g])};  A_{b * G + g + 1} = {fmt(v)} - {_p(rbar[b][g])} = {fmt(a)}")
            else:
                lines.append(f"    A_{b * G + g + 1} = {fmt(v)} - {_p(rbar[b])} = {fmt(a)}")
    extra = " their advantages are exactly 0;" if cfg.baseline in ("group", "leave_one_out") else ""
    lines.append(_zero_var_line(cfg, res, extra))
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


def _render_loss(cfg, res, n: int = 5) -> list[str]:
    lo = res["loss"]
    lines = [f"Step {n}. Loss at sequence 1, token 1 (log pi_theta = {fmt(lo['logp_theta'])}, "
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
    if cfg.policy_loss != "clip":
        return lines + [f"  policy loss (policy_loss={cfg.policy_loss}, its formula in docs/algorithm.md), on this token: "
                        f"{fmt(lo['policy_loss'])}" + (" (a bound binds)" if lo["clip_binds_low"] or lo["clip_binds_high"]
                                                       else "")]
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
        lines = [f"  KL (kl_estimator=k2): 1/2 (log pi_theta - log pi_ref)^2 = 0.5 * {_p(lo['kl_k1'])}^2 = "
                 f"{fmt(lo['kl_estimate'])}"]
    elif est == "k3":
        lines = [f"  KL (kl_estimator=k3): pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 = e^{fmt(-lo['kl_k1'])} "
                 f"- {_p(-lo['kl_k1'])} - 1 = {fmt(math.exp(-lo['kl_k1']))} + {_p(lo['kl_k1'])} - 1 = "
                 f"{fmt(lo['kl_estimate'])}"]
    else:
        lines = ["  KL (kl_estimator=full): the full-vocabulary KL sum_v pi_theta(v) log(pi_theta(v)/pi_ref(v)) needs the "
                 "whole distribution and cannot be computed from two log-probs;",
                 f"    for reference, k1 = log pi_theta - log pi_ref = {t} - ({r}) = {k1}"]
    if lo["kl"] is not None and cfg.kl_clamp is not None:
        lines.append(f"  clamped to [-{fmt(cfg.kl_clamp)}, {fmt(cfg.kl_clamp)}] (kl_clamp): KL = {fmt(lo['kl'])}")
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


# ------------------------------------------------------------------- the other advantage estimators
def _zero_var_line(cfg, res, extra: str = "") -> str:
    zv = res["zero_variance_groups"]
    if not zv:
        return "  Zero-variance groups (all rewards equal): none."
    what = ("DROPPED from the loss (filter_zero_variance_groups=on, as in DAPO)" if cfg.filter_zero_variance_groups
            else "kept in the loss (filter_zero_variance_groups=off)")
    return (f"  Zero-variance groups (all rewards equal): group {', '.join(str(b + 1) for b in zv)} "
            f"({len(zv)} of {len(res['rewards'])});{extra} {what}.")


def _flat(groups) -> list[float]:
    return [v for g in groups for v in g]


def _render_estimator(cfg, res) -> list[list[str]]:
    """The stages of a non-`grpo` estimator, one list of lines per step."""
    name, st = res["advantage_estimator"], res["estimator_steps"]
    unread = "reward_scaling, baseline, token_credit and token_norm are not read."
    if name == "reinforce_pp":
        step1 = [f"Step 1. Token returns (advantage_estimator=reinforce_pp, REINFORCE++): every token of sequence i "
                 f"gets R = r_i (an outcome reward, gamma 1); no per-prompt baseline. {unread}"]
        step1 += [f"  {_seq_label(i, res)}: {T} token{'s' if T > 1 else ''} of R = {fmt(v)}"
                  for i, (v, T) in enumerate(zip(_flat(st["returns"]), _flat(res["lengths"])))]
        step1.append(_zero_var_line(cfg, res))
        return [step1, _render_whitening(res, "R")]
    if name == "reinforce_pp_baseline":
        G = len(res["rewards"][0])
        step1 = ["Step 1. Group baseline (advantage_estimator=reinforce_pp_baseline, REINFORCE++-baseline): "
                 f"c_i = r_i - the mean of its prompt's group. {unread}"]
        for b, (group, mu, cent) in enumerate(zip(res["rewards"], st["group_means"], st["centered"])):
            step1.append(f"  group {b + 1}: mean = ({_sum(group)}) / {G} = {fmt(mu)}")
            step1 += [f"    c_{b * G + g + 1} = {fmt(v)} - {_p(mu)} = {fmt(c)}" for g, (v, c) in enumerate(zip(group, cent))]
        step1.append(_zero_var_line(cfg, res, " their c are exactly 0;"))
        return [step1, _render_whitening(res, "c")]
    if name == "gdpo":
        return _render_gdpo(cfg, res)
    rows = [f"  {_seq_label(i, res)}: " + ", ".join(fmt(v) for v in row)
            for i, row in enumerate(res["normalized_token_advantages"])]
    return [[f"Step 1. Advantages (advantage_estimator={name}: a registered estimator whose stages explain does not "
             "break down); its per-token advantages:"] + rows + [_zero_var_line(cfg, res)]]


def _render_whitening(res, sym: str) -> list[str]:
    """REINFORCE++'s whitening of the per-token values `sym` over the batch's valid tokens."""
    st = res["estimator_steps"]
    n, mu, sd = st["token_count"], st["token_mean"], st["token_std"]
    seq = _flat(res["sequence_advantages"])
    T = _flat(res["lengths"])
    lines = [f"Step 2. Whitening over the batch's {n} valid tokens: A^_t = ({sym} - mean) / (std + {EPS_TEXT}), "
             "the same on each token of a sequence",
             f"  mean = ({' + '.join(f'{t} * {_p(v)}' for t, v in zip(T, seq))}) / {n} = {fmt(mu)}",
             f"  std (population) = sqrt(({' + '.join(f'{t} * ({fmt(v)} - {_p(mu)})^2' for t, v in zip(T, seq))})"
             f" / {n}) = {fmt(sd)}"]
    if st["all_equal"]:
        return lines + ["  All token values are equal (std 0): every advantage is exactly 0, never NaN."]
    for i, (v, row) in enumerate(zip(seq, res["normalized_token_advantages"])):
        lines.append(f"  {_seq_label(i, res)}: ({fmt(v)} - {_p(mu)}) / ({fmt(sd)} + {EPS_TEXT}) = {fmt(row[0])}")
    return lines


def _render_gdpo(cfg, res) -> list[list[str]]:
    st = res["estimator_steps"]
    G = len(res["rewards"][0])
    comps = st["components"]
    step1 = ["Step 1. Group z-score of each reward function on its own (advantage_estimator=gdpo, GDPO): "
             f"z_k = (r_k - mu_group) / (sigma_group + {EPS_TEXT}), sigma the population std; an all-equal group "
             f"gets z = 0. reward_scaling, baseline, token_credit and token_norm are not read."]
    if not st["components_given"]:
        step1.append("  No --component given: one function, the reward itself (weight 1). Give each function's scores "
                     "with --component NAME[:WEIGHT]=SCORES to see them normalised apart.")
    for name, c in comps.items():
        for b, (group, mu, sd, z) in enumerate(zip(c["scores"], c["group_means"], c["group_stds"], c["z"])):
            head = f"  {name}, group {b + 1}: mu = ({_sum(group)}) / {G} = {fmt(mu)}"
            if max(group) == min(group):
                step1.append(head + "; all equal: z = 0")
                continue
            step1.append(head + f"; sigma = {fmt(sd)}")
            step1.append("    " + "; ".join(f"z_{b * G + g + 1} = ({fmt(v)} - {_p(mu)}) / ({fmt(sd)} + {EPS_TEXT}) "
                                            f"= {fmt(x)}" for g, (v, x) in enumerate(zip(group, z))))
    step2 = ["Step 2. Weighted sum over the functions: s_i = sum_k w_k z_k,i"]
    total = _flat(st["weighted_sum"])
    for i, s in enumerate(total):
        terms = " + ".join(f"{fmt(c['weight'])} * {_p(_flat(c['z'])[i])}" for c in comps.values())
        step2.append(f"  s_{i + 1} = {terms} = {fmt(s)}")
    N = len(total)
    step3 = [f"Step 3. Batch z-score: A_i = (s_i - mean) / (std + {EPS_TEXT}) over the {N} sequences; every token "
             "of sequence i gets A_i (no token normalisation)",
             f"  mean = ({_sum(total)}) / {N} = {fmt(st['batch_mean'])}; std (population) = {fmt(st['batch_std'])}"]
    if st["all_equal"]:
        step3.append("  All s_i are equal (std 0): every advantage is exactly 0, never NaN.")
    else:
        step3 += [f"  {_seq_label(i, res)}: A = ({fmt(s)} - {_p(st['batch_mean'])}) / ({fmt(st['batch_std'])} + "
                  f"{EPS_TEXT}) = {fmt(a)}" for i, (s, a) in enumerate(zip(total, _flat(res["sequence_advantages"])))]
    step3.append(_zero_var_line(cfg, res))
    return [step1, step2, step3]
