"""grpo.advantages: hand-computed numbers, degenerate groups, and a slow pure-Python reference.

The reference below follows SPEC.md "Advantages" literally with nested loops over b, g, t and the
`statistics` module; the fast tensor path must equal it for every combination of settings.
"""

import itertools
import math
import statistics

import pytest
import torch

from grpo.algo.advantages import (
    EPS,
    baseline_values,
    compute_advantages,
    completion_mask,
    normalize_tokens,
    overlong_penalty,
    scale_rewards,
    sequence_advantages,
    token_advantages,
    zero_variance_groups,
)

SCALINGS = ["none", "group", "batch"]
BASELINES = ["group", "batch", "window"]
CREDITS = ["uniform", "mean", "discounted", "discounted_over_length"]
NORMS = [False, True]


def assert_close(got, expected, atol=1e-12):
    """got: tensor; expected: nested lists written out by hand."""
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def run(rewards, lengths, dtype=torch.float64, history=None, **settings):
    """compute_advantages on nested lists; settings default to the article's (seed preset)."""
    kw = dict(reward_scaling="none", baseline="group", token_credit="discounted", gamma=0.99, token_norm=True)
    kw.update(settings)
    r = torch.tensor(rewards, dtype=dtype)
    T = torch.tensor(lengths)
    return compute_advantages(r, T, int(T.max()), history=history, **kw)


# ------------------------------------------------------------------ the article's worked example
def test_worked_example_every_step():
    adv = run([[0.8, 0.6]], [[3, 4]])
    # Step 1: r_bar = (0.8 + 0.6) / 2 = 0.7;  A_1 = 0.8 - 0.7 = 0.1,  A_2 = 0.6 - 0.7 = -0.1
    assert_close(adv.sequence, [[0.1, -0.1]], atol=1e-15)
    # Step 2, sequence 1 (T=3): weights gamma^2 = 0.9801, gamma^1 = 0.99, gamma^0 = 1; sum = 2.9701
    #   A~ = 0.9801*0.1/2.9701 = 0.0330, 0.99*0.1/2.9701 = 0.0333, 1*0.1/2.9701 = 0.0337
    s1 = 0.9801 + 0.99 + 1.0
    assert s1 == pytest.approx(2.9701)
    seq1 = [0.9801 * 0.1 / s1, 0.99 * 0.1 / s1, 1.0 * 0.1 / s1]
    # sequence 2 (T=4): weights 0.970299, 0.9801, 0.99, 1; sum = 3.940399
    #   A~ = -0.0246, -0.0249, -0.0251, -0.0254
    s2 = 0.970299 + 0.9801 + 0.99 + 1.0
    assert s2 == pytest.approx(3.940399)
    seq2 = [-0.970299 * 0.1 / s2, -0.9801 * 0.1 / s2, -0.99 * 0.1 / s2, -1.0 * 0.1 / s2]
    assert adv.token[0, :3].tolist() == pytest.approx(seq1, abs=1e-12)
    assert adv.token[1].tolist() == pytest.approx(seq2, abs=1e-12)
    assert adv.token[0, 3] == 0.0                                   # padding of the 3-token sequence
    # the article's 4-decimal figures
    assert [round(x, 4) for x in seq1] == [0.0330, 0.0333, 0.0337]
    assert [round(x, 4) for x in seq2] == [-0.0246, -0.0249, -0.0251, -0.0254]
    # Step 3: each sequence's shares sum to its A (0.1 and -0.1), so mean = (0.1 - 0.1) / 7 = 0
    tokens = seq1 + seq2
    mean = sum(tokens) / 7
    assert mean == pytest.approx(0.0, abs=1e-15)
    # population std = sqrt(sum x^2 / 7) = 0.028869 (the article prints 0.0291)
    sigma = math.sqrt(sum((x - mean) ** 2 for x in tokens) / 7)
    assert sigma == pytest.approx(0.028869, abs=1e-6)
    # A^ = A~ / sigma: 0.0330/0.028869 = 1.143, ... ; -0.0246/0.028869 = -0.853, ...
    expected = [(x - mean) / (sigma + 1e-8) for x in tokens]
    got = adv.normalized[0, :3].tolist() + adv.normalized[1].tolist()
    assert got == pytest.approx(expected, abs=1e-9)
    assert got == pytest.approx([1.143, 1.155, 1.166, -0.853, -0.862, -0.870, -0.879], abs=1e-3)
    # The article's printed 0.1134 ... is 10x smaller: our first value is NOT 0.1134
    assert abs(got[0] - 0.1134) > 1.0
    assert adv.normalized[0, 3] == 0.0


# ------------------------------------------------------------------------------ reward scaling
def test_scale_rewards_none_is_identity():
    r = torch.tensor([[0.3, -2.0], [5.0, 5.0]], dtype=torch.float64)
    assert torch.equal(scale_rewards(r, "none"), r)


def test_scale_rewards_group_zscore():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 4.0, 6.0, 8.0]], dtype=torch.float64)
    out = scale_rewards(r, "group")
    # group 1: mu = 0.5, population sigma = sqrt(4 * 0.25 / 4) = 0.5 -> (r - 0.5) / (0.5 + 1e-8) = +-1
    d1 = 0.5 + 1e-8
    assert out[0].tolist() == pytest.approx([0.5 / d1, -0.5 / d1, -0.5 / d1, 0.5 / d1], abs=1e-12)
    # group 2: mu = 5, sigma = sqrt((9 + 1 + 1 + 9) / 4) = sqrt(5)
    d2 = math.sqrt(5) + 1e-8
    assert out[1].tolist() == pytest.approx([-3 / d2, -1 / d2, 1 / d2, 3 / d2], abs=1e-12)


def test_scale_rewards_batch_zscore():
    r = torch.tensor([[1.0, 0.0], [0.2, 0.4]], dtype=torch.float64)
    out = scale_rewards(r, "batch")
    # mu = (1 + 0 + 0.2 + 0.4) / 4 = 0.4; sigma = sqrt((0.36 + 0.16 + 0.04 + 0) / 4) = sqrt(0.14)
    d = math.sqrt(0.14) + 1e-8
    assert_close(out, [[0.6 / d, -0.4 / d], [-0.2 / d, 0.0]], atol=1e-12)


def test_scale_rewards_unknown_mode():
    with pytest.raises(ValueError, match="reward scaling"):
        scale_rewards(torch.zeros(1, 2), "rank")


# ------------------------------------------------------------------------------------ baselines
def test_baseline_group():
    r = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.4, 0.9]], dtype=torch.float64)
    # group 1: r_bar = 1.5 / 3 = 0.5 -> (0.5, -0.5, 0);  group 2: r_bar = 1.5 / 3 = 0.5 -> (-0.3, -0.1, 0.4)
    assert_close(sequence_advantages(r, "group"), [[0.5, -0.5, 0.0], [-0.3, -0.1, 0.4]])


def test_baseline_batch():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # r_bar = (1 + 0 + 1 + 1) / 4 = 0.75; the all-equal group 2 still gets 1 - 0.75 = 0.25 (batch baseline)
    assert_close(sequence_advantages(r, "batch"), [[0.25, -0.75], [0.25, 0.25]])


def test_baseline_window_with_history():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    history = [torch.zeros(2, 2, dtype=torch.float64), torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)]
    # pool = 4 zeros + (0, 1, 1) + (1, 0, 1, 1): 11 values summing to 5 -> r_bar = 5 / 11
    rb = 5 / 11
    out = sequence_advantages(r, "window", history)
    assert_close(out, [[1 - rb, -rb], [1 - rb, 1 - rb]], atol=1e-12)
    # no history: the window is this batch alone, i.e. the batch baseline
    assert torch.equal(sequence_advantages(r, "window", []), sequence_advantages(r, "batch"))


def test_baseline_unknown():
    with pytest.raises(ValueError, match="baseline"):
        sequence_advantages(torch.zeros(1, 2), "median")


# --------------------------------------------------------------------------------- token credit
def test_token_credit_by_hand():
    A = torch.tensor([1.0, -2.0], dtype=torch.float64)
    T = torch.tensor([3, 2])
    # uniform: every valid token gets A; padding (sequence 2, t=3) is 0
    assert token_advantages(A, T, 3, "uniform").tolist() == [[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]]
    # mean: A / T -> 1/3 each; -2/2 = -1 each
    assert_close(token_advantages(A, T, 3, "mean"), [[1 / 3] * 3, [-1.0, -1.0, 0.0]])
    # discounted, gamma = 0.5: seq 1 weights 0.5^2, 0.5^1, 0.5^0 = 0.25, 0.5, 1 (sum 1.75) -> 1/7, 2/7, 4/7
    #                         seq 2 weights 0.5, 1 (sum 1.5) -> -2 * 0.5/1.5 = -2/3, -2 * 1/1.5 = -4/3
    assert_close(token_advantages(A, T, 3, "discounted", 0.5), [[1 / 7, 2 / 7, 4 / 7], [-2 / 3, -4 / 3, 0.0]])
    # discounted_over_length, gamma = 0.5: weights / T -> 0.25/3, 0.5/3, 1/3;  -2 * 0.5/2 = -0.5, -2 * 1/2 = -1
    assert_close(token_advantages(A, T, 3, "discounted_over_length", 0.5),
                 [[0.25 / 3, 0.5 / 3, 1 / 3], [-0.5, -1.0, 0.0]])


def test_discounted_shares_sum_to_A_and_gamma_one_is_mean():
    A = torch.tensor([0.7, -0.3, 1.1], dtype=torch.float64)
    T = torch.tensor([4, 1, 6])
    tok = token_advantages(A, T, 6, "discounted", 0.9)
    # discounted shares are weights / their sum, so they add up to A exactly
    assert tok.sum(1).tolist() == pytest.approx(A.tolist(), abs=1e-12)
    # gamma = 1: every weight is 1, so both discounted variants reduce to A / T (SPEC: "gamma = 1 gives A_i / T_i")
    mean = token_advantages(A, T, 6, "mean")
    assert torch.allclose(token_advantages(A, T, 6, "discounted", 1.0), mean, atol=1e-15)
    assert torch.allclose(token_advantages(A, T, 6, "discounted_over_length", 1.0), mean, atol=1e-15)


def test_token_credit_unknown():
    with pytest.raises(ValueError, match="token credit"):
        token_advantages(torch.ones(1), torch.tensor([1]), 1, "gae")


# ----------------------------------------------------------------------------------- token norm
def test_normalize_tokens_by_hand():
    adv = torch.tensor([[1.0, 3.0, 99.0], [5.0, 7.0, 99.0]], dtype=torch.float64)
    mask = completion_mask(torch.tensor([2, 2]), 3)
    # valid tokens 1, 3, 5, 7: mean 4, population std sqrt((9 + 1 + 1 + 9) / 4) = sqrt(5); padding (99) ignored -> 0
    d = math.sqrt(5) + EPS
    out = normalize_tokens(adv, mask)
    assert_close(out, [[-3 / d, -1 / d, 0.0], [1 / d, 3 / d, 0.0]], atol=1e-12)


def test_token_norm_off_returns_token_advantages():
    adv = run([[1.0, 0.0, 0.5]], [[2, 3, 1]], token_norm=False)
    assert torch.equal(adv.normalized, adv.token)


def test_completion_mask():
    assert completion_mask(torch.tensor([1, 3, 2]), 3).tolist() == [
        [True, False, False], [True, True, True], [True, True, False]]


# ----------------------------------------------------------------------------- degenerate groups
ALL_COMBOS = list(itertools.product(SCALINGS, BASELINES, CREDITS, NORMS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_equal_rewards_give_exact_zeros_for_every_setting(dtype):
    # every group degenerate (here 0.3 everywhere, a value whose sums are inexact in binary)
    for scaling, baseline, credit, norm in ALL_COMBOS:
        # the window pools history with the *scaled* current rewards, so history lives in that space too:
        # unscaled 0.3s with scaling off; z-scores of all-equal groups (exactly 0) otherwise
        past = torch.full((2, 4), 0.3 if scaling == "none" else 0.0, dtype=dtype)
        adv = run([[0.3] * 4, [0.3] * 4, [0.3] * 4], [[1, 2, 3, 4], [4, 4, 1, 2], [3, 1, 2, 2]], dtype=dtype,
                  history=[past], reward_scaling=scaling, baseline=baseline,
                  token_credit=credit, token_norm=norm)
        for name in ("scaled_rewards", "sequence", "token", "normalized"):
            if name == "scaled_rewards" and scaling == "none":
                continue
            x = getattr(adv, name)
            assert not torch.isnan(x).any(), (scaling, baseline, credit, norm, name)
            assert (x == 0).all(), (scaling, baseline, credit, norm, name, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_group_in_mixed_batch(dtype):
    rewards = [[0.3, 0.3, 0.3], [1.0, 0.0, 0.5], [0.7, 0.7, 0.7]]
    lengths = [[2, 1, 3], [3, 3, 1], [1, 2, 2]]
    for scaling, baseline, credit, norm in ALL_COMBOS:
        adv = run(rewards, lengths, dtype=dtype, reward_scaling=scaling, baseline=baseline,
                  token_credit=credit, token_norm=norm)
        for x in (adv.scaled_rewards, adv.sequence, adv.token, adv.normalized):
            assert torch.isfinite(x).all(), (scaling, baseline, credit, norm)
        if scaling == "group":
            # sigma = 0 in groups 1 and 3: z-scores exactly 0, not 0/0
            assert (adv.scaled_rewards[[0, 2]] == 0).all()
        if baseline == "group":
            # A_i = r_i - r_bar with all r_i equal: exactly 0 for every scaling
            assert (adv.sequence[[0, 2]] == 0).all(), (scaling, credit, norm)
            if not norm:
                assert (adv.token.reshape(3, 3, -1)[[0, 2]] == 0).all()
    assert zero_variance_groups(torch.tensor(rewards, dtype=dtype)).tolist() == [True, False, True]


# ---------------------------------------------------------------- slow pure-Python reference
def reference_advantages(rewards, lengths, reward_scaling, baseline, token_credit, gamma, token_norm, history=()):
    """SPEC.md "Advantages", one number at a time. Returns (sequence advantages B x G, token rows N x T_i
    before and after token normalization). A pool of equal values gives exactly 0 (degenerate)."""
    B, G = len(rewards), len(rewards[0])

    def zscore(x, pool):
        if max(pool) == min(pool):
            return 0.0
        return (x - statistics.fmean(pool)) / (statistics.pstdev(pool) + 1e-8)

    flat = [rewards[b][g] for b in range(B) for g in range(G)]
    scaled = [[0.0] * G for _ in range(B)]
    for b in range(B):
        for g in range(G):
            if reward_scaling == "none":
                scaled[b][g] = rewards[b][g]
            elif reward_scaling == "group":
                scaled[b][g] = zscore(rewards[b][g], rewards[b])
            else:
                scaled[b][g] = zscore(rewards[b][g], flat)

    seq = [[0.0] * G for _ in range(B)]
    for b in range(B):
        for g in range(G):
            if baseline == "group":
                pool = scaled[b]
            elif baseline == "batch":
                pool = [scaled[c][h] for c in range(B) for h in range(G)]
            else:
                pool = [v for batch in history for row in batch for v in row]
                pool += [scaled[c][h] for c in range(B) for h in range(G)]
            seq[b][g] = 0.0 if max(pool) == min(pool) else scaled[b][g] - statistics.fmean(pool)

    tokens = []
    for b in range(B):
        for g in range(G):
            T, A = lengths[b][g], seq[b][g]
            discount_sum = sum(gamma ** (T - k) for k in range(1, T + 1))
            row = []
            for t in range(1, T + 1):
                if token_credit == "uniform":
                    row.append(A)
                elif token_credit == "mean":
                    row.append(A / T)
                elif token_credit == "discounted":
                    row.append(gamma ** (T - t) * A / discount_sum)
                else:
                    row.append(gamma ** (T - t) * A / T)
            tokens.append(row)

    normalized = tokens
    if token_norm:
        allv = [v for row in tokens for v in row]
        if max(allv) == min(allv):
            normalized = [[0.0] * len(row) for row in tokens]
        else:
            mu, sd = statistics.fmean(allv), statistics.pstdev(allv)
            normalized = [[(v - mu) / (sd + 1e-8) for v in row] for row in tokens]
    return seq, tokens, normalized


def random_case(gen, B, G, max_T, discrete):
    if discrete:   # 0/1 rewards: some groups come out degenerate
        r = torch.randint(0, 2, (B, G), generator=gen).double()
    else:
        r = torch.rand(B, G, generator=gen, dtype=torch.float64) * 4 - 1
    T = torch.randint(1, max_T + 1, (B, G), generator=gen)
    return r.tolist(), T.tolist()


SHAPES = [(1, 2, 4), (3, 2, 5), (2, 4, 6), (4, 3, 3), (2, 5, 1)]    # (B, G, longest length); G = 2 included


@pytest.mark.parametrize("scaling,baseline,credit,norm", ALL_COMBOS)
def test_fast_path_equals_python_loop_reference(scaling, baseline, credit, norm):
    gen = torch.Generator().manual_seed(1234)
    for (B, G, max_T), discrete, dtype in itertools.product(SHAPES, [False, True], [torch.float64, torch.float32]):
        rewards, lengths = random_case(gen, B, G, max_T, discrete)
        history = [torch.rand(2, G, generator=gen, dtype=torch.float64).tolist(),
                   torch.rand(1, G + 1, generator=gen, dtype=torch.float64).tolist()]
        # float32 rewards are what the reference must see too (0.3 in float32 is not 0.3)
        rewards = torch.tensor(rewards, dtype=dtype).double().tolist()
        history = [torch.tensor(h, dtype=dtype).double().tolist() for h in history]
        gamma = float(torch.empty(()).uniform_(0.8, 1.0, generator=gen))
        seq, tok, normed = reference_advantages(rewards, lengths, scaling, baseline, credit, gamma, norm, history)
        adv = run(rewards, lengths, dtype=dtype, history=[torch.tensor(h, dtype=dtype) for h in history],
                  reward_scaling=scaling, baseline=baseline, token_credit=credit, gamma=gamma, token_norm=norm)
        atol = 1e-6 if dtype == torch.float64 else 2e-5
        flat_T = [T for row in lengths for T in row]
        assert torch.allclose(adv.sequence.double(), torch.tensor(seq, dtype=torch.float64), atol=atol, rtol=0)
        for i, T in enumerate(flat_T):
            assert adv.token[i, :T].double().tolist() == pytest.approx(tok[i], abs=atol), (B, G, i)
            assert adv.normalized[i, :T].double().tolist() == pytest.approx(normed[i], abs=atol), (B, G, i)
            assert (adv.token[i, T:] == 0).all() and (adv.normalized[i, T:] == 0).all()
        assert adv.mask.sum(1).tolist() == flat_T


def test_reference_agrees_with_the_worked_example():
    # guard against a reference that drifts with the code: it must reproduce the hand numbers too
    seq, tok, normed = reference_advantages([[0.8, 0.6]], [[3, 4]], "none", "group", "discounted", 0.99, True)
    assert seq[0] == pytest.approx([0.1, -0.1])
    assert tok[0] == pytest.approx([0.9801 * 0.1 / 2.9701, 0.99 * 0.1 / 2.9701, 0.1 / 2.9701])
    assert normed[1][3] == pytest.approx(-0.879, abs=1e-3)


# ------------------------------------------------------------------------------ overlong penalty
def test_overlong_penalty_by_hand():
    # max_len 10, buffer 4: free up to 10 - 4 = 6, then (6 - T) / 4, floored at -1
    T = torch.tensor([1, 5, 6, 7, 8, 9, 10, 12])
    out = overlong_penalty(T, max_len=10, buffer=4)
    #  T:   1  5  6  7              8              9              10             12 (past the limit)
    assert out.tolist() == pytest.approx([0, 0, 0, (6 - 7) / 4, (6 - 8) / 4, (6 - 9) / 4, -1.0, -1.0])
    # factor 0.5 scales the ramp and the floor: -0.125, ..., -0.5
    half = overlong_penalty(T, max_len=10, buffer=4, factor=0.5)
    assert half.tolist() == pytest.approx([0, 0, 0, -0.125, -0.25, -0.375, -0.5, -0.5])


# ------------------------------------------------------------------ leave-one-out baseline (RLOO)
def test_leave_one_out_by_hand():
    # rewards 1..6 in groups of 3: r_bar_i = (group sum - r_i) / 2
    #   group 1: sum 6  -> (6-1)/2 = 2.5, (6-2)/2 = 2.0, (6-3)/2 = 1.5
    #   group 2: sum 15 -> (15-4)/2 = 5.5, (15-5)/2 = 5.0, (15-6)/2 = 4.5
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert baseline_values(r, "leave_one_out").flatten().tolist() == [2.5, 2.0, 1.5, 5.5, 5.0, 4.5]
    # A_i = r_i - r_bar_i: 1-2.5, 2-2, 3-1.5, 4-5.5, 5-5, 6-4.5
    assert sequence_advantages(r, "leave_one_out").flatten().tolist() == [-1.5, 0.0, 1.5, -1.5, 0.0, 1.5]


def test_leave_one_out_against_a_slow_loop():
    g = torch.Generator().manual_seed(3)
    r = torch.rand(5, 7, generator=g, dtype=torch.float64)
    want = torch.empty_like(r)
    for b in range(r.shape[0]):
        for i in range(r.shape[1]):
            others = [float(r[b, j]) for j in range(r.shape[1]) if j != i]
            want[b, i] = float(r[b, i]) - sum(others) / len(others)
    torch.testing.assert_close(sequence_advantages(r, "leave_one_out"), want)
    # G/(G-1) times the group-mean advantage
    torch.testing.assert_close(sequence_advantages(r, "leave_one_out"), sequence_advantages(r, "group") * 7 / 6)


def test_leave_one_out_zero_variance_group_is_exactly_zero():
    r = torch.tensor([[0.1, 0.1, 0.1], [0.0, 1.0, 0.0]])
    a = sequence_advantages(r, "leave_one_out")
    assert a[0].tolist() == [0.0, 0.0, 0.0] and a[1].tolist() == [-0.5, 1.0, -0.5]


# ------------------------------------------------------------ REINFORCE++ and GDPO estimators
from types import SimpleNamespace  # noqa: E402

from grpo.algo.advantages import estimator  # noqa: E402


def test_reinforce_pp_by_hand():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ones = torch.ones(4, dtype=torch.long)                      # one token each: tokens = sequences
    a = estimator("reinforce_pp")(r, ones, 1, SimpleNamespace())
    # mean 0.75; std sqrt((0.25^2 + 0.75^2 + 0.25^2 + 0.25^2) / 4) = sqrt(0.1875) = 0.4330
    s = math.sqrt(0.1875)
    assert a.normalized[:, 0].tolist() == pytest.approx([0.25 / s, -0.75 / s, 0.25 / s, 0.25 / s], abs=1e-6)
    b = estimator("reinforce_pp_baseline")(r, ones, 1, SimpleNamespace())
    # minus the group means (0.5, 1): 0.5, -0.5, 0, 0; mean 0, std sqrt(0.5 / 4) = 0.3536
    s = math.sqrt(0.125)
    assert b.normalized[:, 0].tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.0, 0.0], abs=1e-6)


def test_reinforce_pp_whitens_over_tokens_not_sequences():
    r = torch.tensor([[1.0, 0.0]])
    a = estimator("reinforce_pp")(r, torch.tensor([3, 1]), 3, SimpleNamespace())
    # tokens: 1, 1, 1 (sequence 1) and 0 (sequence 2): mean 0.75, std 0.4330
    s = math.sqrt(0.1875)
    assert a.normalized[0].tolist() == pytest.approx([0.25 / s] * 3, abs=1e-6)
    assert a.normalized[1].tolist() == pytest.approx([-0.75 / s, 0.0, 0.0], abs=1e-6)


def test_gdpo_by_hand_and_unlike_grpo_on_the_sum():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    total = f + 0.5 * g
    ones = torch.ones(4, dtype=torch.long)
    a = estimator("gdpo")(total, ones, 1, SimpleNamespace(), components={"f": (f, 1.0), "g": (g, 0.5)})
    # group z-scores: f -> [1, -1], [-1, 1]; g -> [-1, 1], [0, 0] (equal rewards: 0)
    # weighted sum: [1 - 0.5, -1 + 0.5], [-1, 1] = [0.5, -0.5], [-1, 1]
    # over the batch: mean 0, std sqrt((0.25 + 0.25 + 1 + 1) / 4) = sqrt(0.625)
    s = math.sqrt(0.625)
    assert a.sequence.flatten().tolist() == pytest.approx([0.5 / s, -0.5 / s, -1 / s, 1 / s], abs=1e-6)
    assert a.normalized[:, 0].tolist() == pytest.approx(a.sequence.flatten().tolist())
    # GRPO's group z-score of the sum: [1, 0.5] -> [1, -1]; [0.5, 1.5] -> [-1, 1]: the first group's
    # two reasons for its gap are gone
    grpo = compute_advantages(total, ones, 1, reward_scaling="group", baseline="group", token_credit="uniform",
                              gamma=1.0, token_norm=False)
    assert grpo.sequence.flatten().tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-6)


def test_gdpo_against_a_slow_loop():
    gen = torch.Generator().manual_seed(5)
    parts = {k: (torch.rand(3, 4, generator=gen, dtype=torch.float64), w) for k, w in (("a", 1.0), ("b", -0.3))}
    total = sum(w * s for s, w in parts.values())
    out = estimator("gdpo")(total, torch.ones(12, dtype=torch.long), 1, SimpleNamespace(), components=parts)
    summed = [[0.0] * 4 for _ in range(3)]
    for scores, w in parts.values():
        for b in range(3):
            row = scores[b].tolist()
            m = statistics.fmean(row)
            sd = statistics.pstdev(row)
            for i in range(4):
                summed[b][i] += w * (row[i] - m) / (sd + EPS)
    flat = [v for row in summed for v in row]
    m, sd = statistics.fmean(flat), statistics.pstdev(flat)
    want = [(v - m) / (sd + EPS) for v in flat]
    assert out.sequence.flatten().tolist() == pytest.approx(want, abs=1e-9)
