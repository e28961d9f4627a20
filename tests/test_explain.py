"""`grpo explain`: the article's worked example reproduced by hand, every preset against
compute_advantages, the text walk-through, and errors for bad --rewards / --lengths."""

import json
import math

import pytest
import torch

from grpo.algo.advantages import compute_advantages
from grpo.config import PRESETS, ConfigError, resolve
from grpo.explain import explain, main, parse_groups, render
from grpo.explain.render import fmt


def cfg_for(preset="seed", **overrides):
    return resolve(overrides={"preset": preset, **overrides})


def run_main(capsys, cfg, rewards=None, lengths=None, as_json=True):
    assert main(cfg, rewards, lengths, as_json) == 0
    out = capsys.readouterr().out
    return json.loads(out) if as_json else out


# ------------------------------------------------------------------- the article's worked example
@pytest.fixture
def example(capsys):
    return run_main(capsys, cfg_for("seed"))


def test_default_inputs_are_the_article_example(example):
    assert example["rewards"] == [[0.8, 0.6]]
    assert example["lengths"] == [[3, 4]]
    assert example["preset"] == "seed"
    assert example["rewards_are_final"] is True


def test_default_sequence_advantages(example):
    # reward_scaling=none: r' = r;  r_bar = (0.8 + 0.6) / 2 = 0.7;  A = 0.8 - 0.7 = 0.1, 0.6 - 0.7 = -0.1
    assert example["scaled_rewards"] == [[0.8, 0.6]]
    assert example["baseline_values"] == pytest.approx([0.7])
    assert example["sequence_advantages"][0] == pytest.approx([0.1, -0.1])
    assert example["zero_variance_groups"] == []


def test_default_discount_weights_and_token_advantages(example):
    # gamma = 0.99: T=3 -> 0.99^2, 0.99^1, 0.99^0 = 0.9801, 0.99, 1 (sum 2.9701)
    #               T=4 -> 0.99^3 = 0.970299, then 0.9801, 0.99, 1 (sum 3.940399)
    w1, w2 = example["discount_weights"]
    assert w1 == pytest.approx([0.9801, 0.99, 1.0])
    assert w2 == pytest.approx([0.970299, 0.9801, 0.99, 1.0])
    assert example["discount_sums"] == pytest.approx([2.9701, 3.940399])
    assert example["credit_denominators"] == pytest.approx([2.9701, 3.940399])
    # A~ = w * A / sum: 0.9801 * 0.1 / 2.9701 = 0.0330 ... ; 0.970299 * -0.1 / 3.940399 = -0.0246 ...
    t1, t2 = example["token_advantages"]
    assert t1 == pytest.approx([0.9801 * 0.1 / 2.9701, 0.99 * 0.1 / 2.9701, 1.0 * 0.1 / 2.9701])
    assert [round(x, 4) for x in t1] == [0.0330, 0.0333, 0.0337]
    assert [round(x, 4) for x in t2] == [-0.0246, -0.0249, -0.0251, -0.0254]


def test_default_token_normalization(example):
    # mean = (0.1 - 0.1) / 7 = 0 (each sequence's shares add up to its A)
    assert example["token_mean"] == pytest.approx(0.0, abs=1e-15)
    # population std: sqrt((0.1^2 (0.9801^2 + 0.99^2 + 1) / 2.9701^2
    #                      + 0.1^2 (0.970299^2 + 0.9801^2 + 0.99^2 + 1) / 3.940399^2) / 7) = 0.028869
    var = (0.01 * (0.9801 ** 2 + 0.99 ** 2 + 1) / 2.9701 ** 2
           + 0.01 * (0.970299 ** 2 + 0.9801 ** 2 + 0.99 ** 2 + 1) / 3.940399 ** 2) / 7
    sigma = math.sqrt(var)
    assert example["token_std"] == pytest.approx(sigma, rel=1e-12)
    assert sigma == pytest.approx(0.028869, abs=1e-6)        # not the article's 0.0291
    # A^ = A~ / sigma: 0.9801 * 0.1 / 2.9701 / 0.028869 = 1.143 (the article prints 0.1134)
    n1, n2 = example["normalized_token_advantages"]
    assert n1[0] == pytest.approx(0.9801 * 0.1 / 2.9701 / (sigma + 1e-8), rel=1e-12)
    assert n1 == pytest.approx([1.143, 1.155, 1.166], abs=1e-3)
    assert n2 == pytest.approx([-0.853, -0.862, -0.870, -0.879], abs=1e-3)


def test_default_loss_at_sequence_1_token_1(example):
    lo = example["loss"]
    A = example["normalized_token_advantages"][0][0]               # 1.1431
    # log-ratio = -1.5 - (-1.6) = 0.1;  rho = e^0.1 = 1.10517, inside [0.8, 1.2] so clip(rho) = rho
    assert lo["log_ratio"] == pytest.approx(0.1)
    assert lo["ratio"] == pytest.approx(1.10517, abs=1e-5)
    assert lo["clipped_ratio"] == pytest.approx(lo["ratio"])
    assert (lo["clip_binds_low"], lo["clip_binds_high"]) == (False, False)
    # surrogates rho * A = clip(rho) * A = 1.10517 * 1.1431 = 1.2633; policy loss = -min(...) = -1.2633
    assert lo["surrogate"] == pytest.approx(math.exp(0.1) * A)
    assert lo["clipped_surrogate"] == pytest.approx(math.exp(0.1) * A)
    assert lo["policy_loss"] == pytest.approx(-math.exp(0.1) * A)
    assert lo["policy_loss"] == pytest.approx(-1.2633, abs=1e-4)
    # k1 = 0.1;  beta * k1 = 0.05 * 0.1 = 0.005;  total = -1.2633 + 0.005 = -1.2583
    assert lo["kl"] == pytest.approx(0.1)
    assert lo["beta_kl"] == pytest.approx(0.005)
    assert lo["total"] == pytest.approx(-math.exp(0.1) * A + 0.005)
    # seq_mean_token_mean: 1 / (N_seq * T_1) = 1 / (2 * 3) = 1/6
    assert lo["weight"] == pytest.approx(1 / 6)
    assert lo["contribution"] == pytest.approx((-math.exp(0.1) * A + 0.005) / 6)


def test_default_text_walkthrough(capsys):
    text = run_main(capsys, cfg_for("seed"), as_json=False)
    for needle in ["r_bar = (0.8 + 0.6) / 2 = 0.7", "A_1 = 0.8 - 0.7 = 0.1", "A_2 = 0.6 - 0.7 = -0.1",
                   "token_credit=discounted, gamma=0.99", "0.9801", "0.970299",
                   "sum = 0.9801 + 0.99 + 1 = 2.9701", "= 3.940399",
                   "0.03299889", "-0.02537814",                      # 0.1/2.9701 * 0.9801, -0.1/3.940399
                   "= 0.02886885",                                    # population std
                   "1.143062", "-0.8790836",                          # normalized ends
                   "rho = e^0.1 = 1.105171", "clip(1.105171, 0.8, 1.2) = 1.105171",
                   "policy loss = -min(1.263279, 1.263279) = -1.263279",
                   "kl_estimator=k1", "= 0.005", "= -1.258279",
                   "1 / (N_seq * T_1) = 1 / (2 * 3) = 0.1666667",
                   "taken as final"]:
        assert needle in text, needle
    # the one-line note where the article's printed normalized values are wrong
    note = [line for line in text.splitlines() if "0.1134" in line and "0.0291" in line]
    assert len(note) == 1 and "10x" in note[0]


def test_json_and_render_agree(capsys):
    cfg = cfg_for("seed")
    res = run_main(capsys, cfg)
    assert render(cfg, res) == run_main(capsys, cfg, as_json=False)


# ------------------------------------------------------------------------------ every preset
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_matches_compute_advantages(preset):
    cfg = cfg_for(preset)
    gen = torch.Generator().manual_seed(7)
    for B, G, max_T in [(1, 2, 3), (3, 4, 5), (2, 3, 1)]:
        rewards = (torch.rand(B, G, generator=gen, dtype=torch.float64) * 2 - 1).tolist()
        rewards[0] = [0.5] * G if B > 1 else rewards[0]                     # a zero-variance group
        lengths = torch.randint(1, max_T + 1, (B, G), generator=gen).tolist()
        res = explain(cfg, rewards, lengths)
        T = torch.tensor(lengths).reshape(-1)
        ref = compute_advantages(torch.tensor(rewards, dtype=torch.float64), T, int(T.max()),
                                 reward_scaling=cfg.reward_scaling, baseline=cfg.baseline,
                                 token_credit=cfg.token_credit, gamma=cfg.gamma, token_norm=cfg.token_norm)
        assert len(res["normalized_token_advantages"]) == B * G
        for i, T_i in enumerate(T.tolist()):
            assert res["normalized_token_advantages"][i] == pytest.approx(ref.normalized[i, :T_i].tolist(), abs=1e-12)
            assert res["token_advantages"][i] == pytest.approx(ref.token[i, :T_i].tolist(), abs=1e-12)
            if not cfg.token_norm:
                assert res["normalized_token_advantages"][i] == res["token_advantages"][i]
        assert res["sequence_advantages"] == [pytest.approx(row, abs=1e-12) for row in ref.sequence.tolist()]
        assert res["zero_variance_groups"] == ([0] if B > 1 else [])
        json.dumps(res)                                                     # serialisable as is
        assert "Step 5" in render(cfg, res)


def test_ratio_vs_old_uses_ratio_one():
    cfg = cfg_for("deepseekmath")           # ratio_vs=old, clip, k3, beta 0.04
    res = explain(cfg, [[0.8, 0.6]], [[3, 4]])
    lo = res["loss"]
    A = res["normalized_token_advantages"][0][0]
    # group z-score: mu 0.7, sigma 0.1 -> A = 0.1 / (0.1 + 1e-8) = 0.9999999; uniform credit, no token norm
    assert A == pytest.approx(0.1 / (0.1 + 1e-8))
    # pi_old = pi_theta at the first update: rho = 1, policy loss = -min(1 * A, 1 * A) = -A
    assert lo["ratio"] == 1.0 and lo["log_ratio"] == 0.0
    assert lo["policy_loss"] == pytest.approx(-A)
    # k3 still against the reference: e^-0.1 + 0.1 - 1 = 0.0048374; beta * k3 = 0.04 * 0.0048374
    assert lo["kl"] == pytest.approx(math.exp(-0.1) + 0.1 - 1)
    assert lo["beta_kl"] == pytest.approx(0.04 * (math.exp(-0.1) + 0.1 - 1))
    text = render(cfg, res)
    assert "pi_old = pi_theta" in text and "rho = 1" in text


def test_reinforce_shows_minus_A_log_pi():
    cfg = cfg_for("seed", policy_loss="reinforce")
    res = explain(cfg, [[0.8, 0.6]], [[3, 4]])
    A = res["normalized_token_advantages"][0][0]
    # -A * log pi = -(1.1431 * -1.5) = 1.7146
    assert res["loss"]["policy_loss"] == pytest.approx(1.5 * A)
    assert res["loss"]["ratio"] is None
    assert "-A^ * log pi_theta" in render(cfg, res)


def test_full_kl_is_explained_not_computed():
    cfg = cfg_for("seed", kl_estimator="full")
    res = explain(cfg, [[0.8, 0.6]], [[3, 4]])
    assert res["loss"]["kl"] is None
    assert res["loss"]["kl_k1"] == pytest.approx(0.1)                # shown for reference
    text = render(cfg, res)
    assert "cannot be computed from two log-probs" in text and "k1" in text


def test_k2_value():
    res = explain(cfg_for("seed", kl_estimator="k2"), [[0.8, 0.6]], [[3, 4]])
    # k2 = 0.1^2 / 2 = 0.005;  beta * k2 = 0.05 * 0.005 = 0.00025
    assert res["loss"]["kl"] == pytest.approx(0.005)
    assert res["loss"]["beta_kl"] == pytest.approx(0.00025)


def test_beta_zero_turns_kl_off_and_sum_norm_uses_longest_length():
    cfg = cfg_for("dr_grpo")                # beta 0, seq_mean_token_sum_norm
    res = explain(cfg, [[1.0, 0.0, 0.0], [0.2, 0.9, 0.4]], [[2, 5, 1], [3, 3, 4]])
    lo = res["loss"]
    assert lo["beta_kl"] == 0.0 and lo["total"] == lo["policy_loss"]
    # L = max_new_tokens = longest given length = 5; weight = 1 / (N_seq * L) = 1 / (6 * 5)
    assert lo["max_new_tokens"] == 5
    assert lo["weight"] == pytest.approx(1 / 30)
    text = render(cfg, res)
    assert "KL term is off" in text and "longest given length" in text


def test_token_mean_weight_and_dapo_filter():
    cfg = cfg_for("dapo")                   # token_mean, zero-variance groups dropped, overlong penalty on
    res = explain(cfg, [[1.0, 0.0], [0.5, 0.5]], [[2, 1], [1, 3]])
    lo = res["loss"]
    # group 2 is all 0.5: dropped, so N_seq = 2 and sum T_i = 2 + 1 = 3 -> weight 1/3
    assert res["zero_variance_groups"] == [1] and lo["dropped_groups"] == [1]
    assert lo["num_seqs"] == 2 and lo["num_tokens"] == 3
    assert lo["weight"] == pytest.approx(1 / 3)
    text = render(cfg, res)
    assert "DROPPED" in text and "overlong" in text and "taken as final" in text
    # sequence 1 itself in a dropped group: weight 0
    res = explain(cfg, [[0.5, 0.5], [1.0, 0.0]], [[2, 1], [1, 3]])
    assert res["loss"]["dropped"] is True and res["loss"]["weight"] == 0.0


def test_same_zero_variance_group_is_kept_without_the_filter():
    res = explain(cfg_for("seed"), [[1.0, 0.0], [0.5, 0.5]], [[2, 1], [1, 3]])
    # filter off: all 4 sequences count; seq_mean_token_mean weight = 1 / (4 * 2)
    assert res["zero_variance_groups"] == [1] and res["loss"]["dropped_groups"] == []
    assert res["loss"]["weight"] == pytest.approx(1 / 8)


def test_clip_binds_in_the_text():
    cfg = cfg_for("seed")
    # log pi_theta = -1.0 vs -1.6: rho = e^0.6 = 1.822 > 1.2 with A > 0 -> clipped: loss = -1.2 * A
    res = explain(cfg, [[0.8, 0.6]], [[3, 4]], logp_theta=-1.0)
    lo = res["loss"]
    assert lo["clipped_ratio"] == pytest.approx(1.2) and lo["clip_binds_high"]
    assert lo["policy_loss"] == pytest.approx(-1.2 * lo["advantage"])
    assert "the clip binds" in render(cfg, res)


# ------------------------------------------------------------------------------------ bad input
def test_parse_groups_good():
    assert parse_groups("0.8,0.6; 1,0", "--rewards", float) == [[0.8, 0.6], [1.0, 0.0]]
    assert parse_groups("3,4;1,2", "--lengths", int) == [[3, 4], [1, 2]]


@pytest.mark.parametrize("text,name,cast,words", [
    ("0.8,abc", "--rewards", float, ["--rewards", "group 1", "abc"]),
    ("0.8,0.6;0.5,nan", "--rewards", float, ["--rewards", "group 2", "nan"]),
    ("0.8,0.6;0.5", "--rewards", float, ["--rewards", "group 2", "same size"]),
    ("0.8", "--rewards", float, ["--rewards", "G must be >= 2"]),
    ("", "--rewards", float, ["--rewards"]),
    ("0.8,0.6;", "--rewards", float, ["--rewards", "group 2", "empty"]),
    ("3,0", "--lengths", int, ["--lengths", "group 1", "'0'"]),
    ("3,4;2,2.5", "--lengths", int, ["--lengths", "group 2", "2.5"]),
    ("3,-1", "--lengths", int, ["--lengths", "-1"]),
])
def test_parse_groups_errors_name_option_group_and_value(text, name, cast, words):
    with pytest.raises(ConfigError) as e:
        parse_groups(text, name, cast)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_main_rejects_bad_inputs():
    cfg = cfg_for("seed")
    with pytest.raises(ConfigError, match="--rewards"):
        main(cfg, "0.8,x", "3,4", False)
    with pytest.raises(ConfigError, match="--lengths"):                # shape mismatch
        main(cfg, "0.8,0.6", "3,4;1,1", False)
    with pytest.raises(ConfigError, match="--lengths"):                # --rewards without --lengths
        main(cfg, "0.8,0.6", None, False)
    with pytest.raises(ConfigError, match="--rewards"):                # --lengths without --rewards
        main(cfg, None, "3,4", False)
    with pytest.raises(ConfigError, match="--lengths"):                # explain() checks lists too
        explain(cfg, [[0.8, 0.6]], [[3, 0]])


def test_main_with_given_rewards(capsys):
    res = run_main(capsys, cfg_for("seed"), "1,0,0,1", "2,2,2,2")
    # r_bar = 0.5; A = +-0.5; uniform lengths 2 with gamma 0.99: weights 0.99, 1 (sum 1.99)
    assert res["sequence_advantages"] == [[0.5, -0.5, -0.5, 0.5]]
    assert res["token_advantages"][0] == pytest.approx([0.99 * 0.5 / 1.99, 0.5 / 1.99])


def test_gamma_setting_reaches_the_discount():
    cfg = cfg_for("seed", gamma=0.5)
    res = explain(cfg, [[1.0, 0.0]], [[3, 1]])
    # gamma 0.5, T=3: weights 0.25, 0.5, 1 (sum 1.75); A_1 = 1 - 0.5 = 0.5 -> 0.5/7, 1/7, 2/7
    assert res["discount_weights"][0] == [0.25, 0.5, 1.0]
    assert res["token_advantages"][0] == pytest.approx([0.5 / 7, 1 / 7, 2 / 7])
    assert "gamma=0.5" in render(cfg, res)


def test_clip_higher_in_the_loss_step():
    cfg = cfg_for("dapo", ratio_vs="ref")   # eps_low 0.2, eps_high 0.28
    # log pi_theta = -1.6 + ln 1.25: rho = 1.25, above 1.2 but inside 1.28 -> not clipped, loss = -1.25 * A
    res = explain(cfg, [[1.0, 0.0]], [[2, 2]], logp_theta=-1.6 + math.log(1.25))
    lo = res["loss"]
    assert lo["ratio"] == pytest.approx(1.25) and lo["clipped_ratio"] == pytest.approx(1.25)
    assert lo["policy_loss"] == pytest.approx(-1.25 * lo["advantage"])
    assert "clip(1.25, 0.8, 1.28)" in render(cfg, res)


def test_docs_show_the_current_default_output(capsys):
    # docs/worked-example.md pastes the default walk-through; it must stay what the code prints
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "worked-example.md").read_text()
    text = run_main(capsys, cfg_for("seed"), as_json=False)
    assert "```\n" + text + "```" in doc


def test_leave_one_out_shows_each_sequences_baseline():
    cfg = cfg_for("dr_grpo", baseline="leave_one_out")
    res = explain(cfg, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[2, 2, 2], [2, 2, 2]])
    assert res["baseline_values"] == [[2.5, 2.0, 1.5], [5.5, 5.0, 4.5]]      # (group sum - r_i) / (G - 1)
    assert res["sequence_advantages"] == [[-1.5, 0.0, 1.5], [-1.5, 0.0, 1.5]]
    text = render(cfg, res)
    assert "r_bar_1 = (6 - 1) / 2 = 2.5;  A_1 = 1 - 2.5 = -1.5" in text
    assert "r_bar_6 = (15 - 6) / 2 = 4.5;  A_6 = 6 - 4.5 = 1.5" in text


# ------------------------------------------------------- every registered policy loss, every token
from grpo.algo.advantages import estimator as adv_estimator          # noqa: E402
from grpo.algo.losses import POLICY_LOSSES, aggregate, kl_estimate, policy_loss   # noqa: E402
from grpo.explain import (DEFAULT_LOGP, DEFAULT_OLD_LOGP, DEFAULT_REF_LOGP, TokenInputs,  # noqa: E402
                          parse_components, parse_sequences)

# The built-in log-probs (grpo/explain/__init__.py), per token:
#   log pi_theta  -1.5, -0.8, -2.3 | -1.1, -0.5, -2.8, -0.7
#   log pi_old    -1.6, -1.0, -2.2 | -1.2, -0.4, -2.6, -0.7
#   log pi_ref    -1.6, -1.3, -2.1 | -1.0, -0.6, -1.6, -2.0
# so against pi_ref l = 0.1, 0.5, -0.2 | -0.1, 0.1, -1.2, 1.3 and against pi_old l = 0.1, 0.2, -0.1 | 0.1, -0.1, -0.2, 0.
L_REF = [[0.1, 0.5, -0.2], [-0.1, 0.1, -1.2, 1.3]]
L_OLD = [[0.1, 0.2, -0.1], [0.1, -0.1, -0.2, 0.0]]
LOGP = [[-1.5, -0.8, -2.3], [-1.1, -0.5, -2.8, -0.7]]


def every_loss(capsys, cfg, *args, **kw):
    """main(..., all_losses=True) as JSON: the whole result."""
    kw.setdefault("all_losses", True)
    assert main(cfg, *(args or (None, None)), True, **kw) == 0
    return json.loads(capsys.readouterr().out)


def flat(rows):
    return [v for r in rows for v in r]


def test_builtin_log_probs_are_the_stated_ones():
    assert parse_sequences(DEFAULT_LOGP, "--logp") == LOGP
    ref, old = parse_sequences(DEFAULT_REF_LOGP, "--ref-logp"), parse_sequences(DEFAULT_OLD_LOGP, "--old-logp")
    assert [[a - b for a, b in zip(p, r)] for p, r in zip(LOGP, ref)] == [pytest.approx(x) for x in L_REF]
    assert [[a - b for a, b in zip(p, o)] for p, o in zip(LOGP, old)] == [pytest.approx(x) for x in L_OLD]
    # token 1 of sequence 1 is the article's: log pi_theta -1.5, log pi_ref -1.6
    assert (LOGP[0][0], ref[0][0]) == (-1.5, -1.6)


def test_every_registered_loss_is_shown(capsys):
    res = every_loss(capsys, cfg_for("seed"))
    assert list(res["all_losses"]["losses"]) == POLICY_LOSSES.names()
    assert res["loss"] is None                                   # the one-token step is replaced
    assert [n for n, lo in res["all_losses"]["losses"].items() if lo["configured"]] == ["clip"]
    text = render(cfg_for("seed"), res)
    for name in POLICY_LOSSES.names():
        assert f"policy_loss={name}" in text, name


def test_clip_on_the_builtin_example_by_hand(capsys):
    res = every_loss(capsys, cfg_for("seed"))            # ratio_vs=ref, eps 0.2, k1, beta 0.05, seq_mean_token_mean
    ev = res["all_losses"]
    A = res["normalized_token_advantages"]              # 1.143062, 1.154608, 1.166271 | -0.8529739, ... -0.8790836
    assert ev["advantages"] == A and ev["log_ratio"] == [pytest.approx(x) for x in L_REF]
    clip = ev["losses"]["clip"]
    e = math.exp
    want = [[-e(0.1) * A[0][0],            # rho 1.105171 inside [0.8, 1.2]: -rho A = -1.263279
             -1.2 * A[0][1],               # rho e^0.5 = 1.648721 > 1.2, A > 0: the clip binds, -1.2 A = -1.385529
             -e(-0.2) * A[0][2]],          # rho 0.8187308 inside: -0.9548615
            [-e(-0.1) * A[1][0],           # A < 0: max(-rho A, -clip(rho) A) = -rho A = 0.7718027
             -e(0.1) * A[1][1],            # 1.105171 * 0.8615898 = 0.952204
             -0.8 * A[1][2],               # rho e^-1.2 = 0.3011942 < 0.8, A < 0: the clip binds, 0.8 * 0.8702927 = 0.6962342
             -e(1.3) * A[1][3]]]           # rho e^1.3 = 3.669297 > 1.2 but A < 0: unclipped, 3.669297 * 0.8790836 = 3.225619
    assert clip["policy"] == [pytest.approx(w, rel=1e-12) for w in want]
    assert clip["clipped_high"] == [[False, True, False], [False, False, False, False]]
    assert clip["clipped_low"] == [[False, False, False], [False, False, True, False]]
    assert clip["ratio"] == [pytest.approx([e(x) for x in r]) for r in L_REF]
    # k1 = l per token; total = policy + 0.05 * l
    assert ev["kl"] == [pytest.approx(x) for x in L_REF] and ev["kl_in_loss"] is True
    total = [[p + 0.05 * k for p, k in zip(pr, kr)] for pr, kr in zip(want, L_REF)]
    assert clip["total"] == [pytest.approx(t, rel=1e-12) for t in total]
    # seq_mean_token_mean: (mean of sequence 1's 3 totals + mean of sequence 2's 4) / 2
    loss = (math.fsum(total[0]) / 3 + math.fsum(total[1]) / 4) / 2
    assert clip["loss"] == pytest.approx(loss, rel=1e-12)
    assert clip["policy_aggregate"] == pytest.approx((math.fsum(want[0]) / 3 + math.fsum(want[1]) / 4) / 2, rel=1e-12)
    # = ((-1.258279 - 1.360529 - 0.9648615) / 3 + (0.7668027 + 0.957204 + 0.6362342 + 3.290619) / 4) / 2 = 0.1090792
    assert clip["loss"] == pytest.approx(0.1090792, abs=1e-7)


def test_gspo_on_the_builtin_example_by_hand(capsys):
    # the seed preset (ratio vs pi_ref, eps 0.2): s_1 = exp((0.1 + 0.5 - 0.2) / 3) = e^0.1333333 = 1.142631, inside
    # [0.8, 1.2]; A_1 = mean A^ = 1.154647 -> -1.142631 * 1.154647 = -1.319335 on each token of sequence 1.
    # s_2 = exp((-0.1 + 0.1 - 1.2 + 1.3) / 4) = e^0.025 = 1.025315; A_2 = -0.865985 -> +0.887908 on each token.
    res = every_loss(capsys, cfg_for("seed"))
    A = res["normalized_token_advantages"]
    a1, a2 = sum(A[0]) / 3, sum(A[1]) / 4
    s1, s2 = math.exp(0.4 / 3), math.exp(0.025)
    gspo = res["all_losses"]["losses"]["gspo"]
    assert gspo["ratio"] == [pytest.approx([s1] * 3), pytest.approx([s2] * 4)]
    assert gspo["policy"] == [pytest.approx([-s1 * a1] * 3, rel=1e-12), pytest.approx([-s2 * a2] * 4, rel=1e-12)]
    assert gspo["policy"][0][0] == pytest.approx(-1.319335, abs=1e-6)
    assert not any(flat(gspo["clipped_low"]) + flat(gspo["clipped_high"]))
    # the loss: each sequence's mean of (its loss + 0.05 * k1), then the mean of the two
    loss = ((-s1 * a1 + 0.05 * 0.4 / 3) + (-s2 * a2 + 0.05 * 0.025)) / 2
    assert gspo["loss"] == pytest.approx(loss, rel=1e-12)


def test_gspo_preset_clips_both_sequences(capsys):
    # --preset gspo: ratio vs pi_old, eps 3e-4 / 4e-4, beta 0; group z-score A = +-0.1 / (0.1 + 1e-8), uniform credit.
    # s_1 = exp((0.1 + 0.2 - 0.1) / 3) = 1.068939 > 1.0004 with A > 0: clipped, -1.0004 A
    # s_2 = exp((0.1 - 0.1 - 0.2 + 0) / 4) = 0.9512294 < 0.9997 with A < 0: clipped, +0.9997 A
    # loss = (-1.0004 + 0.9997) A / 2 = -0.00035 A
    res = every_loss(capsys, cfg_for("gspo"))
    ev = res["all_losses"]
    A = 0.1 / (0.1 + 1e-8)
    assert ev["ratio_vs"] == "old" and ev["kl_in_loss"] is False and ev["log_ratio"] == [pytest.approx(x) for x in L_OLD]
    gspo = ev["losses"]["gspo"]
    assert gspo["configured"]
    assert gspo["policy"] == [pytest.approx([-1.0004 * A] * 3, rel=1e-12), pytest.approx([0.9997 * A] * 4, rel=1e-12)]
    assert gspo["clipped_high"] == [[True] * 3, [False] * 4] and gspo["clipped_low"] == [[False] * 3, [True] * 4]
    assert gspo["loss"] == pytest.approx(-0.00035 * A, rel=1e-9)
    assert gspo["total"] == gspo["policy"]                         # beta 0: no KL term


def test_cispo_on_the_builtin_example_by_hand(capsys):
    # cispo: -sg[min(rho, 5)] A^ log pi_theta; every rho here is below 5 (the largest, e^1.3 = 3.669297)
    res = every_loss(capsys, cfg_for("seed"))
    A = res["normalized_token_advantages"]
    cispo = res["all_losses"]["losses"]["cispo"]
    want = [[-math.exp(l) * a * lp for l, a, lp in zip(lr, ar, pr)] for lr, ar, pr in zip(L_REF, A, LOGP)]
    # token 1: -1.105171 * 1.143062 * (-1.5) = 1.894918
    assert want[0][0] == pytest.approx(1.894918, abs=1e-6)
    assert cispo["policy"] == [pytest.approx(w, rel=1e-12) for w in want]
    assert not any(flat(cispo["clipped_high"]))
    # --cispo-max 1.5: sequence 1 token 2's rho 1.648721 is capped (A > 0: flagged), -1.5 * 1.154608 * (-0.8) = 1.38553;
    # sequence 2 token 4's rho 3.669297 too (A < 0: capped, not flagged), -1.5 * (-0.8790836) * (-0.7) = -0.9230378
    capped = every_loss(capsys, cfg_for("seed", cispo_max=1.5))["all_losses"]["losses"]["cispo"]
    assert capped["policy"][0][1] == pytest.approx(-1.5 * A[0][1] * -0.8, rel=1e-12)
    assert capped["policy"][1][3] == pytest.approx(-1.5 * A[1][3] * -0.7, rel=1e-12)
    assert capped["clipped_high"] == [[False, True, False], [False] * 4]
    assert capped["policy"][0][0] == cispo["policy"][0][0]


def test_parameters_reach_the_figures(capsys):
    base = every_loss(capsys, cfg_for("seed"))["all_losses"]["losses"]
    # dual_clip c = 3: sequence 2 token 4 has -rho A = 3.225619 > -3 A = 2.637251: c binds (flagged low)
    assert base["dual_clip"]["policy"][1][3] == pytest.approx(3.0 * base["clip"]["policy"][1][3] / math.exp(1.3), rel=1e-12)
    assert base["dual_clip"]["clipped_low"][1][3] is True
    c4 = every_loss(capsys, cfg_for("seed", dual_clip_c=4.0))["all_losses"]["losses"]["dual_clip"]
    assert c4["policy"][1][3] == pytest.approx(base["clip"]["policy"][1][3])     # 3.67 < 4: c does not bind
    for field, value, name in [("sapo_temperature_pos", 2.0, "sapo"), ("gmpo_epsilon", 0.1, "gmpo"),
                               ("epsilon", 0.05, "clip"), ("epsilon_high", 0.6, "clip")]:
        other = every_loss(capsys, cfg_for("seed", **{field: value}))["all_losses"]["losses"][name]
        assert other["loss"] != base[name]["loss"], field


def _trainer(cfg, res, tokens, monkeypatch):
    """Each registered loss as the trainer's update computes it (grpo/train/update.py token_terms,
    the entropy selection by grpo/train/step.py entropy_mask) on a batch of explain's completions
    whose forward pass returns the given log-probs and entropies: {loss: (per-token total, policy,
    aggregate)}, the per-token values as explain's ragged rows."""
    import dataclasses
    from types import SimpleNamespace
    from grpo.parallel.world import World
    from grpo.rollout.base import Rollout
    from grpo.train import step as step_mod
    from grpo.train import update
    T = [len(r) for r in tokens["logp"]]
    N, L = len(T), max(T)

    def pad(rows):
        out = torch.zeros(N, L, dtype=torch.float64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.float64)
        return out
    mask = torch.arange(L)[None, :] < torch.tensor(T)[:, None]
    logp = pad(tokens["logp"])
    old = pad(tokens["old_logp"]) if tokens.get("old_logp") else None
    ref = pad(tokens["ref_logp"]) if tokens.get("ref_logp") else None
    sampler = pad(tokens["sampler_logp"]) if tokens.get("sampler_logp") else (old if old is not None else logp)
    entropy = pad(tokens["entropy"]) if tokens.get("entropy") else torch.zeros(N, L, dtype=torch.float64)
    G = len(res["rewards"][0])
    keep = torch.tensor([b not in res["dropped_groups"] for b in range(len(res["rewards"])) for _ in range(G)])
    loss_mask = mask & keep[:, None]
    roll = Rollout(prompt_ids=torch.zeros(N, 1, dtype=torch.long), prompt_mask=torch.ones(N, 1, dtype=torch.long),
                   completion_ids=torch.zeros(N, L, dtype=torch.long), completion_mask=mask, logprobs=sampler,
                   lengths=torch.tensor(T), truncated=torch.zeros(N, dtype=torch.bool))
    selected = (step_mod.entropy_mask(entropy, loss_mask, cfg.top_entropy_quantile, World())
                if cfg.top_entropy_quantile < 1.0 else None)
    batch = SimpleNamespace(rollout=roll, adv=SimpleNamespace(normalized=pad(res["normalized_token_advantages"])),
                            loss_mask=loss_mask, ref_logp=ref, old_logp=old, entropy_mask=selected)
    full = (ref is not None and cfg.kl_estimator == "full")
    # the forward pass: the given log-probs (the exact KL, which needs logits, as explain's k1 stand-in)
    monkeypatch.setattr(update, "token_stats", lambda *a, **k: SimpleNamespace(
        logp=logp.clone(), entropy=entropy, full_kl=(logp - ref) if full else None))
    out = {}
    for name in POLICY_LOSSES.names():
        run = SimpleNamespace(cfg=dataclasses.replace(cfg, policy_loss=name), actor=None,
                              ref=object() if ref is not None else None, plugged=SimpleNamespace(head=None))
        m, terms = update.token_terms(run, batch, torch.arange(N), cfg.beta, reuse_logp_as_old=old is None)
        rows = lambda x: [x[i, :t].tolist() for i, t in enumerate(T)]           # noqa: E731
        agg = float(aggregate(terms.per_token, m, cfg.loss_aggregation, max_new_tokens=L))
        out[name] = (rows(terms.per_token.detach()), rows(terms.policy.detach()), agg)
    return out


def _agree(res, trainer):
    for name, lo in res["all_losses"]["losses"].items():
        total, policy, agg = trainer[name]
        assert lo["total"] == [pytest.approx(r, rel=1e-12, abs=1e-15) for r in total], name
        assert lo["policy"] == [pytest.approx(r, rel=1e-12, abs=1e-15) for r in policy], name
        assert lo["loss"] == pytest.approx(agg, rel=1e-12, abs=1e-15), name


# Ragged lengths, two groups (the second all-equal: dropped under dapo's filter), a sampler apart
# from pi_old and entropies, so that every term of the trainer's loss has something to do.
TOKENS = {"logp": [[-0.3, -1.2], [-2.0], [-0.7, -0.1, -1.4], [-0.9, -0.2]],
          "old_logp": [[-0.4, -1.0], [-2.2], [-0.6, -0.3, -1.0], [-1.0, -0.2]],
          "ref_logp": [[-0.5, -1.1], [-1.5], [-0.9, -0.1, -1.9], [-0.8, -0.5]],
          "sampler_logp": [[-0.6, -0.9], [-2.1], [-0.6, -1.9, -1.0], [-1.1, -0.2]],
          "entropy": [[0.9, 0.2], [1.4], [0.5, 1.1, 0.3], [0.8, 0.6]]}
TOKEN_OPTIONS = {k: ";".join(",".join(str(x) for x in r) for r in v) for k, v in TOKENS.items()}
EXTRA = [{}, {"rollout_correction": "tis"}, {"rollout_correction": "icepop", "rollout_is_min": 0.9},
         {"rollout_correction": "seq_tis"}, {"rollout_correction": "mis", "rollout_is_max": 1.3},
         {"top_entropy_quantile": 0.5, "entropy_coef": 0.01}, {"kl_ratio_weight": True, "beta": 0.1},
         {"kl_estimator": "full", "kl_clamp": 0.05, "beta": 0.1}, {"kl_estimator": "k3", "kl_clamp": 0.05, "beta": 0.1}]


@pytest.mark.parametrize("extra", EXTRA, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "as-preset")
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_loss_is_the_trainers_on_every_token(capsys, monkeypatch, preset, extra):
    """grpo explain --all-losses shows, for every preset, what the trainer's update computes on the
    same inputs: every token's total and policy term, and the aggregate, under every policy loss."""
    cfg = cfg_for(preset, **extra)
    res = every_loss(capsys, cfg, "1,0;0.5,0.5", None, logp=TOKEN_OPTIONS["logp"], old_logp=TOKEN_OPTIONS["old_logp"],
                     ref_logp=TOKEN_OPTIONS["ref_logp"], sampler_logp=TOKEN_OPTIONS["sampler_logp"],
                     entropy=TOKEN_OPTIONS["entropy"])
    assert res["lengths"] == [[2, 1], [3, 2]]                       # taken from --logp
    _agree(res, _trainer(cfg, res, TOKENS, monkeypatch))
    printed = render(cfg, res)
    width = max(len(n) for n in POLICY_LOSSES.names())
    for name, lo in res["all_losses"]["losses"].items():
        assert f"    {name.ljust(width)}  {fmt(lo['loss'])}" in printed, name       # the text's summary shows it
    assert res["all_losses"]["in_loss"] == ([True, True, False, False] if preset == "dapo" else [True] * 4)


def test_the_builtin_inputs_are_the_trainers_too(capsys, monkeypatch):
    """On the built-in inputs (pi_old = pi_theta when --old-logp is left out too), every term agrees."""
    from grpo.explain import DEFAULT_ENTROPY, DEFAULT_SAMPLER_LOGP
    tokens = {"logp": LOGP, "old_logp": parse_sequences(DEFAULT_OLD_LOGP, "x"),
              "ref_logp": parse_sequences(DEFAULT_REF_LOGP, "x"),
              "sampler_logp": parse_sequences(DEFAULT_SAMPLER_LOGP, "x"),
              "entropy": parse_sequences(DEFAULT_ENTROPY, "x", entropies=True)}
    cfg = cfg_for("seed", rollout_correction="icepop", top_entropy_quantile=0.5, entropy_coef=0.01)
    res = every_loss(capsys, cfg)
    assert any(flat(res["all_losses"]["rollout_masked"])) and not all(flat(res["all_losses"]["entropy_kept"]))
    _agree(res, _trainer(cfg, res, tokens, monkeypatch))
    cfg = cfg_for("seed", ratio_vs="old")
    res = every_loss(capsys, cfg, "0.8,0.6", None, logp=DEFAULT_LOGP)              # no --old-logp: pi_old = pi_theta
    _agree(res, _trainer(cfg, res, {"logp": LOGP}, monkeypatch))


def test_entropy_settings_without_entropies_are_one_line(capsys):
    with pytest.raises(ConfigError, match="--entropy: entropy_coef and top_entropy_quantile read each token's "
                                          "entropy; give --entropy"):
        main(cfg_for("seed", ratio_vs="old", entropy_coef=0.01), "1,0", None, True, logp="-1,-2;-0.5")


@pytest.mark.parametrize("overrides", [dict(kl_estimator="k3", kl_clamp=0.001), dict(kl_estimator="k1", kl_clamp=0.05),
                                       dict(rollout_correction="tis", kl_ratio_weight=True)])
def test_the_one_token_step_is_the_trainers_loss_too(capsys, overrides):
    """The article's one-token step gives the token the trainer's loss: the KL clamped by kl_clamp
    (said in the text), the per-token total the every-token step's at sequence 1, token 1."""
    cfg = cfg_for("seed", **overrides)
    one = run_main(capsys, cfg)["loss"]
    clip = every_loss(capsys, cfg, "0.8,0.6", None, logp="-1.5,-0.8,-2.3;-1.1,-0.5,-2.8,-0.7",
                      ref_logp="-1.6,-1.3,-2.1;-1.0,-0.6,-1.6,-2.0")["all_losses"]["losses"]["clip"]
    assert one["total"] == pytest.approx(clip["total"][0][0], rel=1e-12)
    if cfg.kl_clamp is not None:
        assert abs(one["kl"]) == pytest.approx(cfg.kl_clamp) and abs(one["kl_estimate"]) > cfg.kl_clamp
        assert f"clamped to [-{fmt(cfg.kl_clamp)}, {fmt(cfg.kl_clamp)}] (kl_clamp): KL = {fmt(one['kl'])}" in \
            run_main(capsys, cfg, as_json=False)


def test_text_and_json_agree_with_every_loss(capsys):
    cfg = cfg_for("seed")
    res = every_loss(capsys, cfg)
    assert main(cfg, None, None, False, all_losses=True) == 0
    text = capsys.readouterr().out
    assert text == render(cfg, res)
    assert "Step 5. The loss on every token, under every registered policy loss" in text
    assert "built-in illustrative values" in text
    assert f"loss (policy + beta * KL; the policy part alone: {fmt(res['all_losses']['losses']['clip']['policy_aggregate'])})" in text


def test_default_output_is_unchanged_without_token_inputs(capsys):
    """Without token inputs Step 5 is the article's one token; steps 1-4 are the same text either
    way, and that token's figures are the every-token step's at sequence 1, token 1."""
    cfg = cfg_for("seed")
    res = run_main(capsys, cfg)
    assert res["all_losses"] is None and res["loss"] is not None
    every = every_loss(capsys, cfg)
    one, text = res["loss"], render(cfg, res)
    assert text.split("Step 5.")[0] == render(cfg, every).split("Step 5.")[0]
    assert "Step 5. Loss at sequence 1, token 1 (log pi_theta = -1.5, log pi_ref = -1.6" in text
    clip = every["all_losses"]["losses"]["clip"]
    assert one["policy_loss"] == pytest.approx(clip["policy"][0][0], rel=1e-12)
    assert one["total"] == pytest.approx(clip["total"][0][0], rel=1e-12)
    assert one["kl"] == pytest.approx(every["all_losses"]["kl"][0][0], rel=1e-12)


def test_advantages_override_and_no_reference(capsys):
    # --logp only (pi_old = pi_theta: rho = 1 against pi_old), --advantages one per completion, --ratio-vs old
    cfg = cfg_for("seed", ratio_vs="old")
    res = every_loss(capsys, cfg, "0.8,0.6", None, logp="-1,-2;-0.5", advantages="2,-1", all_losses=False)
    ev = res["all_losses"]
    assert ev["advantages"] == [[2.0, 2.0], [-1.0]] and ev["advantages_from"] == "--advantages"
    assert ev["old_logp_given"] is False and ev["old_logp"] == ev["logp"]
    assert ev["ref_logp"] is None and ev["kl"] is None and ev["kl_in_loss"] is False
    # clip with rho = 1: -A per token; seq_mean_token_mean: (-2 + 1) / 2 = -0.5
    assert ev["losses"]["clip"]["policy"] == [[-2.0, -2.0], [1.0]]
    assert ev["losses"]["clip"]["loss"] == pytest.approx(-0.5)
    # reinforce: -A log pi = 2 * 1, 2 * 2 | -1 * 0.5 -> ((2 + 4) / 2 + (-0.5)) / 2 = 1.25
    assert ev["losses"]["reinforce"]["loss"] == pytest.approx(1.25)
    assert "no --ref-logp, so no KL term" in render(cfg, res)


def test_token_mean_and_sum_norm_aggregates(capsys):
    args = ("1,0", None)
    kw = dict(logp="-1,-2;-0.5", advantages="2,-1")
    tm = every_loss(capsys, cfg_for("seed", ratio_vs="old", loss_aggregation="token_mean"), *args, **kw)
    # clip, rho = 1: per token -2, -2 | 1; token_mean: (-2 - 2 + 1) / 3 = -1
    assert tm["all_losses"]["losses"]["clip"]["loss"] == pytest.approx(-1.0)
    sn = every_loss(capsys, cfg_for("seed", ratio_vs="old", loss_aggregation="seq_mean_token_sum_norm"), *args, **kw)
    # sum over (N_seq * L) = -3 / (2 * 2) = -0.75, L the longest given length
    assert sn["all_losses"]["losses"]["clip"]["loss"] == pytest.approx(-0.75)
    assert "= (-2 - 2 + 1) / (2 * 2) = -0.75" in render(cfg_for("seed", ratio_vs="old",
                                                               loss_aggregation="seq_mean_token_sum_norm"), sn)


def test_kl_estimator_and_clamp_in_the_token_table(capsys):
    res = every_loss(capsys, cfg_for("seed", kl_estimator="k3", kl_clamp=0.5))
    ev = res["all_losses"]
    # k3 = e^-l + l - 1 per token, clamped to [-0.5, 0.5]: for l = 1.3, e^-1.3 + 0.3 = 0.5725 -> 0.5
    k3 = [[min(math.exp(-l) + l - 1, 0.5) for l in r] for r in L_REF]
    assert ev["kl"] == [pytest.approx(k, rel=1e-12) for k in k3] and ev["kl"][1][3] == 0.5
    assert ev["losses"]["clip"]["total"][0][0] == pytest.approx(ev["losses"]["clip"]["policy"][0][0] + 0.05 * k3[0][0])


def test_all_losses_json_keys(capsys):
    res = every_loss(capsys, cfg_for("seed"))
    assert set(res) == {"preset", "settings", "advantage_estimator", "rewards", "lengths", "components",
                        "rewards_are_final", "scaling_means", "scaling_stds", "scaled_rewards", "baseline_values",
                        "zero_variance_groups", "dropped_groups", "sequence_advantages", "discount_weights",
                        "discount_sums", "credit_denominators", "token_advantages", "token_mean", "token_std",
                        "normalized_token_advantages", "estimator_steps", "loss", "all_losses"}
    assert set(res["all_losses"]) == {"builtin", "logp", "old_logp", "old_logp_given", "ref_logp", "ratio_vs",
                                      "sampler_logp", "sampler_logp_given", "log_ratio", "advantages",
                                      "advantages_from", "sequence_log_ratio_means", "sequence_advantage_means",
                                      "rollout_correction", "rollout_bounds", "rollout_log_ratio", "rollout_weights",
                                      "rollout_masked", "entropy", "entropy_kept", "top_entropy_quantile",
                                      "entropy_coef", "kl_estimator", "kl", "kl_in_loss", "kl_ratio_weight", "beta",
                                      "kl_clamp", "total_differs", "aggregation", "in_loss", "num_seqs", "num_tokens",
                                      "max_new_tokens", "losses"}
    for lo in res["all_losses"]["losses"].values():
        assert set(lo) == {"configured", "ratio", "clipped_low", "clipped_high", "policy", "kl", "total",
                           "policy_aggregate", "loss"}
    for k in ("cispo_max", "dual_clip_c", "sapo_temperature_pos", "sapo_temperature_neg", "gmpo_epsilon",
              "advantage_estimator", "kl_clamp", "rollout_correction", "top_entropy_quantile", "entropy_coef",
              "kl_ratio_weight"):
        assert k in res["settings"], k
    # the same keys without token inputs, and under another estimator
    plain = run_main(capsys, cfg_for("seed"))
    assert set(plain) == set(res)
    assert set(run_main(capsys, cfg_for("seed", advantage_estimator="reinforce_pp"))) == set(res)


# ------------------------------------------------------------------------- bad token inputs
@pytest.mark.parametrize("text,words", [
    ("-1.5,abc", ["--logp", "sequence 1, token 2", "'abc'"]),
    ("-1.5;-0.5,-1,0.3", ["--logp", "sequence 2, token 3", "'0.3'", "<= 0"]),
    ("-1.5;nan", ["--logp", "sequence 2, token 1", "nan"]),
    ("-1.5;-inf", ["--logp", "sequence 2, token 1", "inf"]),
    ("-1.5;", ["--logp", "sequence 2", "empty"]),
    ("", ["--logp", "got nothing"]),
])
def test_parse_sequences_errors(text, words):
    with pytest.raises(ConfigError) as e:
        parse_sequences(text, "--logp")
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("kw,words", [
    (dict(logp="-1,-2;-1;-1"), ["--logp", "3 sequences", "2 completions"]),
    (dict(logp="-1,-2;-1", old_logp="-1,-2;-1,-1"), ["--old-logp", "sequence 2 has 2 tokens", "--logp's sequence 2 has 1"]),
    (dict(logp="-1,-2;-1", ref_logp="-1"), ["--ref-logp", "1 sequence", "--logp has 2"]),
    (dict(logp="-1,-2;-1", ref_logp="-1,-2;-1,x"), ["--ref-logp", "sequence 2, token 2", "'x'"]),
    (dict(old_logp="-1,-2;-1"), ["--old-logp", "without --logp"]),
    (dict(ref_logp="-1,-2;-1"), ["--ref-logp", "without --logp"]),
    (dict(logp="-1,-2;-1", advantages="1,2,3"), ["--advantages", "one advantage per completion"]),
    (dict(logp="-1,-2;-1", advantages="1,z"), ["--advantages", "group 1", "'z'"]),
    (dict(logp="-1,-2;-1"), ["--ref-logp", "ratio_vs=ref"]),                    # seed: the ratio needs pi_ref
])
def test_bad_token_inputs_are_one_liners(kw, words):
    with pytest.raises(ConfigError) as e:
        main(cfg_for("seed"), "0.8,0.6", None, False, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_lengths_must_agree_with_logp():
    with pytest.raises(ConfigError) as e:
        main(cfg_for("seed", ratio_vs="old"), "0.8,0.6", "3,4", False, logp="-1,-1,-1;-1,-1")
    assert "--logp: sequence 2 has 2 tokens but --lengths gives completion 2 a length of 4" in str(e.value)
    # agreeing --lengths is fine
    assert main(cfg_for("seed", ratio_vs="old"), "0.8,0.6", "3,2", True, logp="-1,-1,-1;-1,-1") == 0


def test_builtin_log_probs_need_the_article_shape():
    with pytest.raises(ConfigError) as e:
        main(cfg_for("seed"), "1,0,0", "2,2,2", False, all_losses=True)
    assert "--logp" in str(e.value) and "built-in" in str(e.value) and "\n" not in str(e.value)


def test_token_inputs_check_in_explain_too():
    with pytest.raises(ConfigError, match="--logp: 1 sequence"):
        explain(cfg_for("seed"), [[0.8, 0.6]], [[3, 4]], tokens=TokenInputs([[-1.0, -1.0, -1.0]]))


# ----------------------------------------------------------- the other advantage estimators
def test_leave_one_out_walkthrough_via_main(capsys):
    res = run_main(capsys, cfg_for("dr_grpo", baseline="leave_one_out"), "1,2,3;4,5,6", "2,2,2;2,2,2")
    # r_bar_i = (group sum - r_i) / (G - 1): (6 - 1) / 2 = 2.5, (6 - 2) / 2 = 2, (6 - 3) / 2 = 1.5; (15 - 4) / 2 = 5.5 ...
    assert flat(res["baseline_values"]) == [2.5, 2.0, 1.5, 5.5, 5.0, 4.5]
    assert res["advantage_estimator"] == "grpo" and res["estimator_steps"] is None


def test_reinforce_pp_walkthrough(capsys):
    cfg = cfg_for("seed", advantage_estimator="reinforce_pp")
    res = run_main(capsys, cfg, "1,2,3;4,5,6", "2,1,3;1,1,2")
    st = res["estimator_steps"]
    # token-weighted mean over the 10 tokens: (2*1 + 1*2 + 3*3 + 1*4 + 1*5 + 2*6) / 10 = 34 / 10 = 3.4
    assert st["kind"] == "reinforce_pp" and st["token_count"] == 10 and st["token_mean"] == pytest.approx(3.4)
    # population std: sqrt((2*2.4^2 + 1.4^2 + 3*0.4^2 + 0.6^2 + 1.6^2 + 2*2.6^2) / 10) = sqrt(30.4 / 10) = 1.743560
    sd = math.sqrt(30.4 / 10)
    assert st["token_std"] == pytest.approx(sd, rel=1e-12)
    want = [(r - 3.4) / (sd + 1e-8) for r in range(1, 7)]                   # (1 - 3.4) / 1.74356 = -1.376494 ...
    assert [row[0] for row in res["normalized_token_advantages"]] == pytest.approx(want, rel=1e-12)
    ref = adv_estimator("reinforce_pp")(torch.tensor([[1., 2, 3], [4, 5, 6]], dtype=torch.float64),
                                        torch.tensor([2, 1, 3, 1, 1, 2]), 3, cfg)
    assert flat(res["normalized_token_advantages"]) == pytest.approx(ref.normalized[ref.mask].tolist(), abs=0)
    text = render(cfg, res)
    assert "mean = (2 * 1 + 1 * 2 + 3 * 3 + 1 * 4 + 1 * 5 + 2 * 6) / 10 = 3.4" in text
    assert "(1 - 3.4) / (1.74356 + 1e-8) = -1.376494" in text
    assert "Step 3. Loss at sequence 1, token 1" in text


def test_reinforce_pp_baseline_walkthrough(capsys):
    cfg = cfg_for("seed", advantage_estimator="reinforce_pp_baseline")
    res = run_main(capsys, cfg, "1,2,3;4,5,6", "2,1,3;1,1,2")
    st = res["estimator_steps"]
    # group means 2 and 5; c = -1, 0, 1 | -1, 0, 1; token mean (2*(-1) + 0 + 3*1 - 1 + 0 + 2*1) / 10 = 0.2
    assert st["group_means"] == [2.0, 5.0] and st["centered"] == [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]
    assert st["token_mean"] == pytest.approx(0.2)
    # std sqrt((2*1.44 + 0.04 + 3*0.64 + 1.44 + 0.04 + 2*0.64) / 10) = sqrt(7.6 / 10) = 0.8717798
    sd = math.sqrt(0.76)
    assert [row[0] for row in res["normalized_token_advantages"]] == pytest.approx(
        [(c - 0.2) / (sd + 1e-8) for c in (-1, 0, 1, -1, 0, 1)], rel=1e-12)
    assert "c_1 = 1 - 2 = -1" in render(cfg, res)


def test_gdpo_with_components(capsys):
    cfg = cfg_for("seed", advantage_estimator="gdpo")
    assert main(cfg, None, "2,2;3,1", True, components=["correct=1,0;1,1", "format:0.5=1,1;0,1"]) == 0
    res = json.loads(capsys.readouterr().out)
    # rewards: 1*correct + 0.5*format = 1.5, 0.5 | 1, 1.5
    assert res["rewards"] == [[1.5, 0.5], [1.0, 1.5]]
    st = res["estimator_steps"]
    # correct: group 1 (1, 0) -> z = +-0.5 / (0.5 + 1e-8); group 2 all equal -> 0.  format: group 1 equal -> 0,
    # group 2 (0, 1) -> -+1.  s = 1*z_c + 0.5*z_f = 1, -1, -0.5, 0.5 (to 1e-8)
    z = 0.5 / (0.5 + 1e-8)
    assert flat(st["weighted_sum"]) == pytest.approx([z, -z, -0.5 * z, 0.5 * z], rel=1e-12)
    # batch z-score: mean 0, std sqrt((1 + 1 + 0.25 + 0.25) / 4) z = 0.7905694 z -> A = s / (std + 1e-8)
    sd = math.sqrt(0.625) * z
    assert st["batch_std"] == pytest.approx(sd, rel=1e-12)
    assert flat(res["sequence_advantages"]) == pytest.approx([s / (sd + 1e-8) for s in flat(st["weighted_sum"])],
                                                             rel=1e-12)
    assert flat(res["sequence_advantages"])[0] == pytest.approx(1.264911, abs=1e-6)
    # the registered function gives the same numbers
    parts = {"correct": (torch.tensor([[1., 0], [1, 1]], dtype=torch.float64), 1.0),
             "format": (torch.tensor([[1., 1], [0, 1]], dtype=torch.float64), 0.5)}
    ref = adv_estimator("gdpo")(torch.tensor(res["rewards"], dtype=torch.float64), torch.tensor([2, 2, 3, 1]), 3, cfg,
                                components=parts)
    assert res["sequence_advantages"] == ref.sequence.tolist()
    text = render(cfg, res)
    assert "reward function format (weight 0.5): 1, 1; 0, 1" in text
    assert "correct, group 2: mu = (1 + 1) / 2 = 1; all equal: z = 0" in text
    assert "s_3 = 1 * 0 + 0.5 * (-1) = -0.5" in text


def test_gdpo_without_components_says_what_to_give(capsys):
    cfg = cfg_for("seed", advantage_estimator="gdpo")
    res = run_main(capsys, cfg, "1,0;0.2,0.4", "1,1;1,1")
    assert res["estimator_steps"]["components_given"] is False
    assert "--component NAME[:WEIGHT]=SCORES" in render(cfg, res)


@pytest.mark.parametrize("specs,rewards,words", [
    (["correct"], None, ["--component", "NAME[:WEIGHT]=SCORES"]),
    (["correct:x=1,0"], None, ["--component correct", "'x'"]),
    (["a=1,0", "a=0,1"], None, ["--component", "'a' is given twice"]),
    (["a=1,0", "b=0,1,1"], None, ["--component b", "do not match"]),
    (["a=1,q"], None, ["--component a", "group 1", "'q'"]),
    (["a=1,0"], "1,0", ["--component", "not both"]),
])
def test_component_errors(specs, rewards, words):
    with pytest.raises(ConfigError) as e:
        main(cfg_for("seed", advantage_estimator="gdpo"), rewards, "1,1", False, components=specs)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_parse_components():
    assert parse_components(["correct:0.8=1,0;0,1", "format=1,1;1,0"]) == {
        "correct": ([[1.0, 0.0], [0.0, 1.0]], 0.8), "format": ([[1.0, 1.0], [1.0, 0.0]], 1.0)}


@pytest.mark.parametrize("name,step", [("reinforce_pp", 3), ("reinforce_pp_baseline", 3), ("gdpo", 4)])
def test_every_estimator_with_every_loss(capsys, monkeypatch, name, step):
    cfg = cfg_for("seed", advantage_estimator=name)
    res = every_loss(capsys, cfg)
    assert res["all_losses"]["advantages"] == res["normalized_token_advantages"]
    from grpo.explain import DEFAULT_ENTROPY, DEFAULT_SAMPLER_LOGP
    tokens = {"logp": LOGP, "old_logp": parse_sequences(DEFAULT_OLD_LOGP, "x"),
              "ref_logp": parse_sequences(DEFAULT_REF_LOGP, "x"),
              "sampler_logp": parse_sequences(DEFAULT_SAMPLER_LOGP, "x"),
              "entropy": parse_sequences(DEFAULT_ENTROPY, "x", entropies=True)}
    _agree(res, _trainer(cfg, res, tokens, monkeypatch))
    assert f"Step {step}. The loss on every token" in render(cfg, res)


# ----------------------------------------------------------------------------- the command line
def test_command_line_options_reach_explain(capsys):
    from grpo.cli import main as cli_main
    assert cli_main(["explain", "--json", "--ratio-vs", "old", "--rewards", "1,0", "--logp=-1,-2;-0.5",
                     "--advantages=2,-1", "--policy-loss", "reinforce"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["lengths"] == [[2, 1]] and res["all_losses"]["advantages"] == [[2.0, 2.0], [-1.0]]
    assert res["all_losses"]["losses"]["reinforce"]["configured"] is True
    assert cli_main(["explain", "--advantage-estimator", "gdpo", "--component", "a=1,0", "--component", "b:2=0,1",
                     "--lengths", "3,4", "--all-losses", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["rewards"] == [[1.0, 2.0]] and set(res["components"]) == {"a", "b"}
    assert cli_main(["explain", "--logp=-1,x"]) == 2
    assert "grpo explain: error: --logp: sequence 1, token 2 has the bad value 'x'" in capsys.readouterr().err


def test_algorithm_doc_shows_the_current_every_loss_output(capsys):
    # docs/algorithm.md pastes this command's output ("`grpo explain`: every loss on every token")
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "algorithm.md").read_text()
    assert 'grpo explain --preset gspo --rewards "1,0" --logp="-0.5,-1.2;-0.9" --old-logp="-0.6,-1.0;-0.7"' in doc
    assert main(cfg_for("gspo"), "1,0", None, False, logp="-0.5,-1.2;-0.9", old_logp="-0.6,-1.0;-0.7") == 0
    assert "```\n" + capsys.readouterr().out + "```" in doc
