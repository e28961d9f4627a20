"""`grpo explain`: the article's worked example reproduced by hand, every preset against
compute_advantages, the text walk-through, and errors for bad --rewards / --lengths."""

import json
import math

import pytest
import torch

from grpo.algo.advantages import compute_advantages
from grpo.config import PRESETS, ConfigError, resolve
from grpo.explain import explain, main, parse_groups, render


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
