"""`grpo explain`'s loss step with per-token inputs: every registered policy loss on every token,
from the result of compute.py only (so the text and `--json` always agree)."""

from __future__ import annotations

import math

from .numbers import fmt, p as _p, signed_sum as _sum


def _loss_formula(cfg, name: str) -> str:
    lo, hi = fmt(1.0 - cfg.epsilon), fmt(1.0 + (cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high))
    return {
        "clip": f"-min(rho A^, clip(rho, {lo}, {hi}) A^)",
        "reinforce": "-A^ log pi_theta (no ratio in the loss, nothing clipped; rho shown for reference)",
        "gspo": f"one ratio per sequence, s_i = exp(mean_t l), against A_i = mean_t A^: -min(s_i A_i, clip(s_i, {lo}, "
                f"{hi}) A_i) on each of its tokens (rho column: s_i)",
        "gspo_token": f"the sequence ratio's value s_i against each token's A^: -min(s_i A^, clip(s_i, {lo}, {hi}) A^)"
                      " (rho column: s_i)",
        "cispo": f"-sg[min(rho, cispo_max={fmt(cfg.cispo_max)})] A^ log pi_theta (flagged: above the cap with A^ > 0)",
        "dual_clip": f"clip's -min(rho A^, clip(rho, {lo}, {hi}) A^), and for A^ < 0 at most -c A^ "
                     f"(dual_clip_c={fmt(cfg.dual_clip_c)}; low also marks where c binds)",
        "sapo": f"-(4/tau) sigmoid(tau (rho - 1)) A^, tau = {fmt(cfg.sapo_temperature_pos)} (sapo_temperature_pos) "
                f"for A^ > 0, else {fmt(cfg.sapo_temperature_neg)} (sapo_temperature_neg); nothing clipped",
        "gmpo": f"-A_i exp(mean_t l'), l' = l clipped to [-{fmt(cfg.gmpo_epsilon)}, {fmt(cfg.gmpo_epsilon)}] "
                "(gmpo_epsilon) on the pessimistic side, A_i = mean_t A^ (rho column: exp(mean_t l), unclipped)",
    }.get(name, "")


def _table(header: list[str], rows: list[list[str]], indent: str = "    ") -> list[str]:
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    fmt_row = lambda r: indent + "  ".join(c.rjust(w) for c, w in zip(r, widths))   # noqa: E731
    return [fmt_row(header)] + [fmt_row(r) for r in rows]


def render_every_loss(cfg, res, n: int) -> list[str]:
    """Step n with per-token inputs: the inputs and shared terms per token, then each registered
    policy loss's per-token terms and aggregate, then a summary."""
    ev = res["all_losses"]
    lines = [f"Step {n}. The loss on every token, under every registered policy loss (grpo/algo/losses.py), "
             f"as the trainer computes it (grpo/algo/token_loss.py), aggregated by "
             f"loss_aggregation={ev['aggregation']}"]
    lines += _inputs_text(cfg, ev) + _token_table(ev) + _sequence_means(ev)
    lines.append("  " + _aggregation_text(ev))
    for name, lo in ev["losses"].items():
        lines += [""] + _loss_section(cfg, ev, name, lo)
    lines.append("")
    lines.append(f"  Summary, the loss under loss_aggregation={ev['aggregation']}:")
    width = max(len(k) for k in ev["losses"])
    for name, lo in ev["losses"].items():
        extra = f" (policy part {fmt(lo['policy_aggregate'])})" if ev["total_differs"] else ""
        lines.append(f"    {name.ljust(width)}  {fmt(lo['loss'])}{extra}{'  <- configured' if lo['configured'] else ''}")
    return lines


def _inputs_text(cfg, ev) -> list[str]:
    X = "pi_ref" if ev["ratio_vs"] == "ref" else "pi_old"
    if ev["builtin"]:
        lines = ["  Log-probs: the built-in illustrative values for the article's two completions (give your own "
                 "with --logp, --old-logp, --ref-logp, --sampler-logp, --entropy)."]
    else:
        lines = ["  Log-probs: as given" + ("" if ev["old_logp_given"] else
                                            "; no --old-logp: pi_old = pi_theta (the first update)") + "."]
    lines.append("  Advantages A^: " + ("as given by --advantages, on every token of each completion (the "
                                        "estimator's above are not used)." if ev["advantages_from"] == "--advantages"
                                        else "the estimator's, from the steps above."))
    lines.append(f"  Ratio (ratio_vs={ev['ratio_vs']}): l = log pi_theta - log {X}, rho = e^l"
                 + (" (log pi_old is not used)." if ev["ratio_vs"] == "ref" else "."))
    lines.append("  " + _rollout_text(ev))
    if ev["entropy_kept"] is not None:
        lines.append(f"  Entropy selection (top_entropy_quantile={fmt(ev['top_entropy_quantile'])}): only the tokens "
                     "whose entropy H is in that top fraction of this batch's tokens keep their policy loss "
                     "(kept column).")
    if ev["entropy_coef"] > 0 and ev["entropy"] is not None:
        lines.append(f"  Entropy bonus: every total subtracts entropy_coef * H, entropy_coef = {fmt(ev['entropy_coef'])}.")
    lines.append("  " + _kl_text(cfg, ev))
    return lines


def _rollout_text(ev) -> str:
    mode = ev["rollout_correction"]
    if mode == "none":
        return ("Rollout correction: none (rollout_correction=none); w = pi_old / pi_sampler is shown for reference "
                "and not applied.")
    lo, hi = ev["rollout_bounds"]
    bounds = f"[{'-' if lo is None else fmt(lo)}, {'-' if hi is None else fmt(hi)}]"
    how = {"tis": "truncated to", "seq_tis": "the sequence's product, truncated to",
           "icepop": "0 outside", "mis": "the sequence's product, 0 outside"}.get(mode, "bounded by")
    return (f"Rollout correction (rollout_correction={mode}): each token's policy loss times w = pi_old / pi_sampler, "
            f"{how} {bounds}.")


def _kl_text(cfg, ev) -> str:
    if ev["ref_logp"] is None:
        return "KL: no --ref-logp, so no KL term (the trainer adds beta * KL against pi_ref when beta > 0)."
    if not ev["kl_in_loss"]:
        return "KL: beta = 0, the KL term is off."
    note = (" (k1 in place of the full-vocabulary KL, which needs the logits; unclamped, as the trainer leaves the "
            "full KL)" if cfg.kl_estimator == "full" else "")
    clamp = (f", clamped to [-{fmt(ev['kl_clamp'])}, {fmt(ev['kl_clamp'])}] (kl_clamp)"
             if ev["kl_clamp"] and cfg.kl_estimator != "full" else "")
    weight = ", times pi_theta / pi_old (kl_ratio_weight)" if ev["kl_ratio_weight"] else ""
    return (f"KL (kl_estimator={ev['kl_estimator']}{note}{clamp}{weight}) per token, against pi_ref; every loss's "
            f"per-token total adds beta * KL, beta = {fmt(ev['beta'])}.")


def _token_table(ev) -> list[str]:
    """The per-token inputs and the terms every loss shares."""
    kl = ev["kl"] is not None and ev["kl_in_loss"]
    header = (["seq", "t", "log pi_theta", "log pi_old"] + (["log pi_ref"] if ev["ref_logp"] is not None else [])
              + ["log pi_sampler", "l", "A^", "w"] + (["H"] if ev["entropy"] is not None else [])
              + (["kept"] if ev["entropy_kept"] is not None else []) + ([f"KL ({ev['kl_estimator']})"] if kl else []))
    rows = []
    for i, T_i in enumerate(len(r) for r in ev["logp"]):
        for t in range(T_i):
            row = [str(i + 1) + ("" if ev["in_loss"][i] else "*"), str(t + 1), fmt(ev["logp"][i][t]),
                   fmt(ev["old_logp"][i][t])]
            row += [fmt(ev["ref_logp"][i][t])] if ev["ref_logp"] is not None else []
            w = (fmt(math.exp(ev["rollout_log_ratio"][i][t])) if ev["rollout_correction"] == "none"
                 else fmt(ev["rollout_weights"][i][t]) + (" (masked)" if ev["rollout_masked"][i][t] else ""))
            row += [fmt(ev["sampler_logp"][i][t]), fmt(ev["log_ratio"][i][t]), fmt(ev["advantages"][i][t]), w]
            row += [fmt(ev["entropy"][i][t])] if ev["entropy"] is not None else []
            row += [("yes" if ev["entropy_kept"][i][t] else "no")] if ev["entropy_kept"] is not None else []
            row += [fmt(ev["kl"][i][t])] if kl else []
            rows.append(row)
    lines = _table(header, rows)
    if not all(ev["in_loss"]):
        lines.append("    * a sequence of a zero-variance group, dropped from the loss (filter_zero_variance_groups=on)")
    return lines


def _sequence_means(ev) -> list[str]:
    lines = ["  Sequence means (gspo, gspo_token and gmpo read them):"]
    for i, row in enumerate(ev["log_ratio"]):
        m_l, m_a = ev["sequence_log_ratio_means"][i], ev["sequence_advantage_means"][i]
        lines.append(f"    sequence {i + 1}: mean l = ({_sum(row)}) / {len(row)} = {fmt(m_l)}, e^{_p(m_l)} = "
                     f"{fmt(math.exp(m_l))}; mean A^ = ({_sum(ev['advantages'][i])}) / {len(row)} = {fmt(m_a)}")
    return lines


def _loss_section(cfg, ev, name: str, lo) -> list[str]:
    lines = [f"  policy_loss={name}{' (the configured one)' if lo['configured'] else ''}: "
             f"{_loss_formula(cfg, name)}".rstrip(": ")]
    kl_weighted = ev["kl_ratio_weight"] and lo["kl"] is not None and ev["kl_in_loss"]
    head = ["seq", "t", "rho", "clipped", "policy"] + (["KL (weighted)"] if kl_weighted else []) \
        + (["total"] if ev["total_differs"] else [])
    rows = []
    for i, T_i in enumerate(len(r) for r in lo["policy"]):
        for t in range(T_i):
            clip = "low" if lo["clipped_low"][i][t] else "high" if lo["clipped_high"][i][t] else "-"
            row = [str(i + 1) + ("" if ev["in_loss"][i] else "*"), str(t + 1), fmt(lo["ratio"][i][t]), clip,
                   fmt(lo["policy"][i][t])]
            row += [fmt(lo["kl"][i][t])] if kl_weighted else []
            rows.append(row + ([fmt(lo["total"][i][t])] if ev["total_differs"] else []))
    return lines + _table(head, rows) + _aggregate_steps(ev, lo)


def _aggregation_text(ev) -> str:
    mode, N, n, L = ev["aggregation"], ev["num_seqs"], ev["num_tokens"], ev["max_new_tokens"]
    kept = "" if all(ev["in_loss"]) else " (the kept sequences only)"
    if mode == "seq_mean_token_mean":
        return f"Aggregation (loss_aggregation={mode}): (1/N_seq) sum_i (1/T_i) sum_t total, N_seq = {N}{kept}."
    if mode == "token_mean":
        return f"Aggregation (loss_aggregation={mode}): sum_{{i,t}} total / sum_i T_i, sum_i T_i = {n}{kept}."
    return (f"Aggregation (loss_aggregation={mode}): sum_{{i,t}} total / (N_seq * L), N_seq = {N}{kept}, "
            f"L = {L}, the longest given length (the configured max_new_tokens is not used here).")


def _aggregate_steps(ev, lo) -> list[str]:
    """The aggregate of one loss's per-token totals, its sums written out."""
    mode, N, n, L = ev["aggregation"], ev["num_seqs"], ev["num_tokens"], ev["max_new_tokens"]
    rows = [row for row, keep in zip(lo["total"], ev["in_loss"]) if keep]
    if not rows:
        return [f"    loss: no sequence is kept in the loss: {fmt(lo['loss'])}"]
    parts = ((" + beta * KL" if ev["kl_in_loss"] else "")
             + (" - entropy_coef * H" if ev["entropy_coef"] > 0 and ev["entropy"] is not None else ""))
    what = "loss" + (f" (policy{parts}; the policy part alone: {fmt(lo['policy_aggregate'])})"
                     if ev["total_differs"] else "")
    if mode == "seq_mean_token_mean":
        means = [math.fsum(r) / len(r) for r in rows]
        parts = "; ".join(f"({_sum(r)}) / {len(r)} = {fmt(m)}" for r, m in zip(rows, means))
        return [f"    sequence means: {parts}",
                f"    {what} = ({_sum(means)}) / {N} = {fmt(lo['loss'])}"]
    flat = [v for r in rows for v in r]
    denom = f"{n}" if mode == "token_mean" else f"({N} * {L})"
    return [f"    {what} = ({_sum(flat)}) / {denom} = {fmt(lo['loss'])}"]
