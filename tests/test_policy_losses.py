"""The policy losses beside `clip` and `reinforce` (grpo/algo/losses.py): GSPO, GSPO-token, CISPO,
dual-clip, SAPO, GMPO. Each: numbers worked by hand (the arithmetic in the comments), and values and
gradients equal to a slow loop over sequences and tokens written from the formula."""

from __future__ import annotations

import math
import types

import pytest
import torch

from grpo.algo.losses import aggregate, policy_loss
from grpo.config import LOSS_PARAMETERS

SETTINGS = types.SimpleNamespace(epsilon=0.2, epsilon_high=None, **LOSS_PARAMETERS)

# two sequences: the first has 2 valid tokens (its third is padding), the second 3
MASK = torch.tensor([[True, True, False], [True, True, True]])
BASE = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], dtype=torch.float64)
LOG_RATIO = torch.tensor([[0.3, 0.1, 0.0], [-0.3, -0.3, 0.0]], dtype=torch.float64)
ADV = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)


def terms(name, log_ratio=LOG_RATIO, adv=ADV, settings=SETTINGS):
    logp = (BASE + log_ratio).clone().requires_grad_(True)
    return policy_loss(name)(logp, BASE, adv, MASK, settings), logp


def test_gspo_by_hand():
    out, _ = terms("gspo")
    # sequence 1: mean log-ratio (0.3 + 0.1) / 2 = 0.2, s = e^0.2 = 1.2214 > 1 + 0.2: clipped to 1.2,
    #   A = 1: loss = max(-1.2214, -1.2) = -1.2 on both tokens
    # sequence 2: mean (-0.3 - 0.3 + 0) / 3 = -0.2, s = e^-0.2 = 0.8187 inside [0.8, 1.2],
    #   A = -1: loss = max(0.8187, 0.8187) = 0.8187 on all three
    assert out.loss[0, :2].tolist() == pytest.approx([-1.2, -1.2])
    assert out.loss[1].tolist() == pytest.approx([math.exp(-0.2)] * 3)
    assert out.ratio[0, 0].item() == pytest.approx(math.exp(0.2))
    assert out.clipped_high[0].tolist() == [True, True, False] and not out.clipped_high[1].any()
    assert not out.clipped_low.any()


def test_gspo_gradient_flows_through_every_token_of_an_unclipped_sequence():
    out, logp = terms("gspo")
    aggregate(out.loss, MASK, "seq_mean_token_mean", 3).backward()
    # sequence 1 is clipped (no gradient). Sequence 2: loss_2 = -A s, s = exp(mean l),
    #   d loss_2 / d logp_t = -A s / T = 0.8187 / 3 for each of its 3 tokens; halved by the mean over 2 sequences
    assert logp.grad[0].tolist() == [0.0, 0.0, 0.0]
    assert logp.grad[1].tolist() == pytest.approx([math.exp(-0.2) / 3 / 2] * 3)


def test_gspo_token_has_gspos_value_and_gradient_under_uniform_advantages():
    seq, lp1 = terms("gspo")
    tok, lp2 = terms("gspo_token")
    torch.testing.assert_close(tok.loss * MASK, seq.loss * MASK)
    aggregate(seq.loss, MASK, "seq_mean_token_mean", 3).backward()
    aggregate(tok.loss, MASK, "seq_mean_token_mean", 3).backward()
    torch.testing.assert_close(lp1.grad, lp2.grad)


def test_cispo_by_hand():
    big = LOG_RATIO.clone()
    big[0, 0] = math.log(8.0)                  # a ratio of 8, above eps_max = 5
    out, logp = terms("cispo", big)
    # token (1,1): weight min(8, 5) = 5, A = 1, logp = -1 + log 8 = 1.0794: loss = -5 * 1 * 1.0794
    assert out.loss[0, 0].item() == pytest.approx(-5.0 * (-1.0 + math.log(8.0)))
    # token (2,1): weight e^-0.3 = 0.7408, A = -1, logp = -0.8: loss = -0.7408 * -1 * -0.8 = -0.5927
    assert out.loss[1, 0].item() == pytest.approx(-math.exp(-0.3) * -1.0 * -0.8)
    assert out.clipped_high[0].tolist() == [True, False, False]
    aggregate(out.loss, MASK, "token_mean", 3).backward()
    # the weight is a constant: d loss_t / d logp_t = -w A, over the 5 valid tokens
    assert logp.grad[0, 0].item() == pytest.approx(-5.0 / 5)
    assert logp.grad[1, 0].item() == pytest.approx(math.exp(-0.3) / 5)


def test_dual_clip_by_hand():
    big = LOG_RATIO.clone()
    big[1, 0] = math.log(4.0)                  # rho 4 with A = -1: above c = 3
    out, logp = terms("dual_clip", big)
    # plain clip would give max(-4 * -1, -1.2 * -1) = 4; the dual bound -c A = 3 binds
    assert out.loss[1, 0].item() == pytest.approx(3.0)
    # rho e^-0.3 = 0.7408 with A = -1: max(0.7408, 0.8) = 0.8 (the lower clip); 0.8 < 3, unchanged
    assert out.loss[1, 1].item() == pytest.approx(0.8)
    # A > 0 is exactly `clip`
    clip, _ = terms("clip", big)
    torch.testing.assert_close(out.loss[0], clip.loss[0])
    assert out.clipped_low[1, 0] and not out.clipped_low[1, 2]
    aggregate(out.loss, MASK, "token_mean", 3).backward()
    assert logp.grad[1, 0].item() == 0.0                      # the bound is a constant


def test_sapo_by_hand():
    out, logp = terms("sapo")
    # token (1,1): rho = e^0.3 = 1.3499, A = 1, tau = 1: loss = -(4/1) sigmoid(0.3499) * 1
    assert out.loss[0, 0].item() == pytest.approx(-4.0 / (1.0 + math.exp(-(math.exp(0.3) - 1.0))))
    # token (2,3): rho = 1, A = -1, tau = 1.05: loss = -(4/1.05) * 0.5 * -1 = 1.9048
    assert out.loss[1, 2].item() == pytest.approx(4.0 / 1.05 * 0.5)
    aggregate(out.loss, MASK, "token_mean", 3).backward()
    # at rho = 1 the gate's gradient weight is 4 * 0.5 * 0.5 * 1 = 1: d loss / d logp = -A = 1, over 5 tokens
    assert logp.grad[1, 2].item() == pytest.approx(1.0 / 5)


def test_gmpo_by_hand():
    out, _ = terms("gmpo")
    # sequence 1, A = 1 (sgn +): l = [0.3, 0.1]; min(l, clip(l, -0.4, 0.4)) = [0.3, 0.1]; mean 0.2
    #   loss = -1 * e^0.2 = -1.2214
    assert out.loss[0, :2].tolist() == pytest.approx([-math.exp(0.2)] * 2)
    # sequence 2, A = -1 (sgn -): l = [-0.3, -0.3, 0]; -min(0.3, 0.3) etc. = l; mean -0.2
    #   loss = 1 * e^-0.2 = 0.8187
    assert out.loss[1].tolist() == pytest.approx([math.exp(-0.2)] * 3)
    far = LOG_RATIO.clone()
    far[0, 0] = 1.0                            # beyond eps = 0.4 with A > 0: the clipped 0.4 is taken
    out, _ = terms("gmpo", far)
    # mean(0.4, 0.1) = 0.25: loss = -e^0.25
    assert out.loss[0, 0].item() == pytest.approx(-math.exp(0.25))
    assert out.clipped_high[0].tolist() == [True, False, False]


# ----------------------------------------------------------------------- against slow loops
def _slow(name, logp, base, adv, mask, s):
    """The formulas of the docstrings, one sequence and one token at a time (scalar tensors)."""
    rows = []
    eps_low = s.epsilon
    eps_high = s.epsilon_high if s.epsilon_high is not None else s.epsilon
    for i in range(logp.shape[0]):
        valid = [t for t in range(logp.shape[1]) if mask[i, t]]
        T = len(valid)
        mean_l = sum(logp[i, t] - base[i, t] for t in valid) / T
        mean_a = sum(adv[i, t] for t in valid) / T
        row = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                row.append(torch.zeros((), dtype=logp.dtype))
                continue
            rho = torch.exp(logp[i, t] - base[i, t])
            a = adv[i, t]
            if name == "gspo":
                si = torch.exp(mean_l)
                v = -torch.minimum(si * mean_a, si.clamp(1 - eps_low, 1 + eps_high) * mean_a)
            elif name == "gspo_token":
                si = torch.exp(mean_l.detach()) * torch.exp(logp[i, t] - logp[i, t].detach())
                v = -torch.minimum(si * a, si.clamp(1 - eps_low, 1 + eps_high) * a)
            elif name == "cispo":
                v = -rho.detach().clamp(max=s.cispo_max) * a * logp[i, t]
            elif name == "dual_clip":
                v = -torch.minimum(rho * a, rho.clamp(1 - eps_low, 1 + eps_high) * a)
                if a < 0:
                    v = torch.minimum(v, -s.dual_clip_c * a)
            elif name == "sapo":
                tau = s.sapo_temperature_pos if a > 0 else s.sapo_temperature_neg
                v = -(4 / tau) * torch.sigmoid(tau * (rho - 1)) * a
            elif name == "gmpo":
                sg = 1.0 if mean_a > 0 else (-1.0 if mean_a < 0 else 0.0)
                terms_ = []
                for u in valid:
                    lu = logp[i, u] - base[i, u]
                    terms_.append(sg * torch.minimum(sg * lu, sg * lu.clamp(-s.gmpo_epsilon, s.gmpo_epsilon)))
                v = -mean_a * torch.exp(sum(terms_) / T)
            row.append(v)
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["gspo", "gspo_token", "cispo", "dual_clip", "sapo", "gmpo"])
@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean"])
def test_agrees_with_a_slow_loop(name, aggregation):
    g = torch.Generator().manual_seed(11)
    n, L = 5, 6
    base = -torch.rand(n, L, generator=g, dtype=torch.float64) * 3
    lengths = torch.tensor([6, 1, 4, 3, 5])
    mask = torch.arange(L)[None, :] < lengths[:, None]
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64).expand(n, L) * torch.rand(n, L, generator=g,
                                                                                       dtype=torch.float64)
    log_ratio = torch.randn(n, L, generator=g, dtype=torch.float64) * 0.6          # some clip, some do not
    s = types.SimpleNamespace(epsilon=0.2, epsilon_high=0.28, **LOSS_PARAMETERS)
    a = (base + log_ratio).clone().requires_grad_(True)
    b = (base + log_ratio).clone().requires_grad_(True)
    fast = policy_loss(name)(a, base, adv, mask, s).loss
    slow = _slow(name, b, base, adv, mask, s)
    torch.testing.assert_close(fast * mask, slow * mask)
    aggregate(fast, mask, aggregation, L).backward()
    aggregate(slow, mask, aggregation, L).backward()
    torch.testing.assert_close(a.grad, b.grad)
