"""grpo.losses: the clipped surrogate, REINFORCE, KL estimators, log-prob gather and aggregation,
each against numbers worked out by hand in the comments."""

import math

import pytest
import torch

from grpo.algo.losses import (
    aggregate,
    clipped_policy_loss,
    entropy_from_logits,
    full_kl_from_logits,
    kl_estimate,
    masked_mean,
    reinforce_policy_loss,
    sequence_count,
    token_logprobs,
)


def t64(*values):
    return torch.tensor(values, dtype=torch.float64)


def clip_case(ratio, adv, eps_low=0.2, eps_high=0.2):
    """Loss, indicators and d loss / d logp for one token with the given ratio (base log-prob 0)."""
    logp = torch.tensor([math.log(ratio)], dtype=torch.float64, requires_grad=True)
    loss, rho, low, high = clipped_policy_loss(logp, t64(0.0), t64(adv), eps_low, eps_high)
    loss.sum().backward()
    return loss.item(), rho.item(), bool(low), bool(high), logp.grad.item()


# ------------------------------------------------------------------------------ clipped surrogate
def test_clip_ratio_inside_range():
    # rho = 1.1 in [0.8, 1.2]: min(1.1 * 2, 1.1 * 2) = 2.2 -> loss -2.2; d/dlogp (-A rho) = -2 * 1.1
    loss, rho, low, high, grad = clip_case(1.1, 2.0)
    assert rho == pytest.approx(1.1)
    assert loss == pytest.approx(-2.2)
    assert (low, high) == (False, False)
    assert grad == pytest.approx(-2.2)


def test_clip_above_with_positive_advantage_binds():
    # rho = 1.5 > 1.2, A = 1: min(1.5, 1.2) = 1.2 -> loss -1.2, the constant clipped term: no gradient
    loss, _, low, high, grad = clip_case(1.5, 1.0)
    assert loss == pytest.approx(-1.2)
    assert (low, high) == (False, True)
    assert grad == 0.0


def test_clip_below_with_negative_advantage_binds():
    # rho = 0.5 < 0.8, A = -1: min(-0.5, -0.8) = -0.8 -> loss 0.8, no gradient
    loss, _, low, high, grad = clip_case(0.5, -1.0)
    assert loss == pytest.approx(0.8)
    assert (low, high) == (True, False)
    assert grad == 0.0


def test_clip_does_not_bind_above_with_negative_advantage():
    # rho = 1.5 > 1.2 but A = -1: min(-1.5, -1.2) = -1.5 -> loss 1.5 (the pessimistic, unclipped term);
    # gradient d(-A rho)/dlogp = -A rho = 1.5
    loss, _, low, high, grad = clip_case(1.5, -1.0)
    assert loss == pytest.approx(1.5)
    assert (low, high) == (False, False)
    assert grad == pytest.approx(1.5)


def test_clip_does_not_bind_below_with_positive_advantage():
    # rho = 0.5 < 0.8 but A = 1: min(0.5, 0.8) = 0.5 -> loss -0.5; gradient -A rho = -0.5
    loss, _, low, high, grad = clip_case(0.5, 1.0)
    assert loss == pytest.approx(-0.5)
    assert (low, high) == (False, False)
    assert grad == pytest.approx(-0.5)


def test_clip_higher_asymmetric_range():
    # DAPO clip-higher: eps_low 0.2, eps_high 0.28 -> range [0.8, 1.28]
    # rho = 1.25, A = 1: inside the higher bound -> loss -1.25 (with eps_high = 0.2 it would be -1.2)
    assert clip_case(1.25, 1.0, 0.2, 0.28)[0] == pytest.approx(-1.25)
    assert clip_case(1.25, 1.0, 0.2, 0.2)[0] == pytest.approx(-1.2)
    # rho = 1.3 > 1.28, A = 1: clipped to 1.28 -> loss -1.28, high indicator set
    loss, _, low, high, _ = clip_case(1.3, 1.0, 0.2, 0.28)
    assert loss == pytest.approx(-1.28) and (low, high) == (False, True)
    # rho = 0.75 < 0.8, A = -2: the low side still uses eps_low = 0.2 -> min(-1.5, -1.6) = -1.6 -> loss 1.6
    loss, _, low, high, _ = clip_case(0.75, -2.0, 0.2, 0.28)
    assert loss == pytest.approx(1.6) and (low, high) == (True, False)


def test_clip_indicators_on_a_batch():
    ratios = t64(0.5, 0.5, 1.0, 1.5, 1.5)
    adv = t64(-1.0, 1.0, 1.0, 1.0, -1.0)
    _, rho, low, high = clipped_policy_loss(torch.log(ratios), torch.zeros(5, dtype=torch.float64), adv, 0.2, 0.2)
    assert torch.allclose(rho, ratios)
    # binds low only where rho < 0.8 and A < 0 (token 0); high only where rho > 1.2 and A > 0 (token 3)
    assert low.tolist() == [True, False, False, False, False]
    assert high.tolist() == [False, False, False, True, False]


def test_clip_base_logprob_is_not_differentiated():
    # rho = e^(-1.0 - (-1.1)) = e^0.1 = 1.105, inside [0.8, 1.2]: logp gets -A rho = -1.105, the base nothing
    # (were the base differentiated it would get +A rho = +1.105)
    logp = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    base = torch.tensor([-1.1], dtype=torch.float64, requires_grad=True)
    loss, *_ = clipped_policy_loss(logp, base, t64(1.0), 0.2, 0.2)
    loss.sum().backward()
    assert base.grad is None or base.grad.item() == 0.0
    assert logp.grad.item() == pytest.approx(-math.exp(0.1))


def test_clipped_loss_gradient_at_ratio_one_is_minus_A_grad_logpi():
    # a tiny policy: logits = W x; at the first update pi_old = pi_theta, so rho = 1 in value, and
    # d/dW [-min(rho A, clip(rho) A)] = -A d rho/dW = -A rho d log pi/dW = -A d log pi/dW
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    tokens = torch.tensor([0, 3, 4, 1])
    adv = t64(0.7, -1.3, 0.2, -0.4)
    logp = token_logprobs(x @ W.T, tokens)
    loss, rho, _, _ = clipped_policy_loss(logp, logp.detach(), adv, 0.2, 0.2)
    assert torch.equal(rho, torch.ones(4, dtype=torch.float64))
    (g_clip,) = torch.autograd.grad(loss.sum(), W)
    (g_pg,) = torch.autograd.grad((-adv * token_logprobs(x @ W.T, tokens)).sum(), W)
    assert torch.allclose(g_clip, g_pg, atol=1e-12)
    assert g_pg.abs().sum() > 0


# ------------------------------------------------------------------------------------ reinforce
def test_reinforce_loss_by_hand():
    # -A log pi: -(2 * -0.5) = 1;  -(-1 * -2) = -2
    assert reinforce_policy_loss(t64(-0.5, -2.0), t64(2.0, -1.0)).tolist() == pytest.approx([1.0, -2.0])


# ---------------------------------------------------------------------------------------- KL
def test_kl_estimators_article_token():
    # log pi = -1.5, log pi_ref = -1.6: l = 0.1
    logp, ref = t64(-1.5), t64(-1.6)
    assert float(kl_estimate(logp, ref, "k1")) == pytest.approx(0.1)                    # l
    assert float(kl_estimate(logp, ref, "k2")) == pytest.approx(0.5 * 0.01)             # l^2 / 2 = 0.005
    # k3 = pi_ref/pi - log(pi_ref/pi) - 1 = e^-0.1 + 0.1 - 1 = 0.904837 + 0.1 - 1 = 0.004837
    assert float(kl_estimate(logp, ref, "k3")) == pytest.approx(0.0048374180, abs=1e-9)


def test_kl_estimators_policy_below_reference():
    # log pi = -2, log pi_ref = -1: l = -1
    logp, ref = t64(-2.0), t64(-1.0)
    assert float(kl_estimate(logp, ref, "k1")) == pytest.approx(-1.0)                   # k1 can be negative
    assert float(kl_estimate(logp, ref, "k2")) == pytest.approx(0.5)                    # (-1)^2 / 2
    assert float(kl_estimate(logp, ref, "k3")) == pytest.approx(math.e - 2)             # e^1 - 1 - 1 = 0.71828


def test_k3_is_never_negative():
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(1000, generator=gen, dtype=torch.float64) * 10
    ref = -torch.rand(1000, generator=gen, dtype=torch.float64) * 10
    k3 = kl_estimate(logp, ref, "k3")
    assert (k3 >= 0).all()
    assert float(kl_estimate(t64(-0.7), t64(-0.7), "k3")) == 0.0     # identical log-probs: e^0 - 0 - 1 = 0


def test_kl_estimate_rejects_full_and_unknown():
    for name in ("full", "k4"):
        with pytest.raises(ValueError):
            kl_estimate(t64(-1.0), t64(-1.0), name)


def test_full_kl_equals_explicit_vocabulary_loop():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    ref_logits = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    got = full_kl_from_logits(logits, ref_logits)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            # softmax by hand, then KL = sum_v p(v) log(p(v) / q(v))
            zp = sum(math.exp(v) for v in logits[i, j].tolist())
            zq = sum(math.exp(v) for v in ref_logits[i, j].tolist())
            kl = 0.0
            for v in range(7):
                p = math.exp(float(logits[i, j, v])) / zp
                q = math.exp(float(ref_logits[i, j, v])) / zq
                kl += p * math.log(p / q)
            assert float(got[i, j]) == pytest.approx(kl, abs=1e-6)
            assert kl > 0
    assert torch.allclose(full_kl_from_logits(logits, logits), torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)


# ------------------------------------------------------------------------------------ log-probs
def test_logprob_helpers_keep_float64_and_upcast_half_precision():
    # float64 stays float64 (exact numbers for `grpo explain` and tests); bfloat16 is computed in float32
    x = torch.zeros(2, 4, dtype=torch.float64)
    assert token_logprobs(x, torch.tensor([0, 1])).dtype == torch.float64
    assert full_kl_from_logits(x, x).dtype == torch.float64
    assert entropy_from_logits(x).dtype == torch.float64
    assert token_logprobs(x.bfloat16(), torch.tensor([0, 1])).dtype == torch.float32


def test_token_logprobs_by_hand_and_against_log_softmax():
    # logits (0, ln 3): softmax = (1/4, 3/4) -> log pi(token 1) = log 0.75, log pi(token 0) = log 0.25
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    assert token_logprobs(logits, torch.tensor([1, 0])).tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, generator=gen)
    tokens = torch.randint(0, 11, (2, 5), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens), expected, atol=1e-6)


def test_entropy_from_logits():
    # uniform over 8 tokens: H = log 8; a near one-hot distribution: H ~ 0
    assert float(entropy_from_logits(torch.zeros(8))) == pytest.approx(math.log(8), abs=1e-6)
    assert float(entropy_from_logits(torch.tensor([50.0, 0.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------- aggregation
VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)   # seq 3 filtered: no valid token


def test_aggregate_seq_mean_token_mean_by_hand():
    # (1/N_seq) sum_i (1/T_i) sum_t v = ((1+2+3)/3 + (4+5)/2) / 2 = (2 + 4.5) / 2 = 3.25 (padding 100, seq 3 ignored)
    assert float(aggregate(VALUES, MASK, "seq_mean_token_mean", max_new_tokens=3)) == pytest.approx(3.25)


def test_aggregate_token_mean_by_hand():
    # sum / sum_i T_i = (1+2+3+4+5) / 5 = 3
    assert float(aggregate(VALUES, MASK, "token_mean", max_new_tokens=3)) == pytest.approx(3.0)


def test_aggregate_seq_mean_token_sum_norm_by_hand():
    # sum / (N_seq * max_new_tokens) = 15 / (2 * 4) = 1.875
    assert float(aggregate(VALUES, MASK, "seq_mean_token_sum_norm", max_new_tokens=4)) == pytest.approx(1.875)


def test_aggregate_unknown_mode():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(VALUES, MASK, "sum", max_new_tokens=3)


def test_sequence_count_and_masked_mean():
    assert int(sequence_count(MASK)) == 2
    assert float(masked_mean(VALUES, MASK)) == pytest.approx(3.0)      # (1+2+3+4+5) / 5


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_micro_batches_add_up_to_the_whole_batch(mode):
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 4])                        # one filtered sequence (length 0)
    mask = torch.arange(6)[None, :] < lengths[:, None]
    whole = aggregate(values, mask, mode, max_new_tokens=6)
    n_seq, n_tok = sequence_count(mask), mask.sum()
    pieces = [slice(0, 2), slice(2, 3), slice(3, 7)]
    summed = sum(aggregate(values[s], mask[s], mode, 6, num_seqs=n_seq, num_tokens=n_tok) for s in pieces)
    assert float(summed) == pytest.approx(float(whole), abs=1e-12)
    # without the whole batch's counts each piece normalises by its own: the sum is not the batch loss
    naive = sum(aggregate(values[s], mask[s], mode, 6) for s in pieces)
    assert abs(float(naive) - float(whole)) > 1e-3


def test_logprobs_and_entropy_match_the_separate_functions():
    from grpo.algo.losses import logprobs_and_entropy
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, generator=g, requires_grad=True)
    tokens = torch.randint(0, 11, (7,), generator=g)
    logp, ent = logprobs_and_entropy(logits, tokens)
    assert torch.allclose(logp, token_logprobs(logits, tokens), atol=1e-6)
    assert torch.allclose(ent, entropy_from_logits(logits), atol=1e-6) and not ent.requires_grad
    (g1,) = torch.autograd.grad(logp.sum(), logits)
    (g2,) = torch.autograd.grad(token_logprobs(logits, tokens).sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)
