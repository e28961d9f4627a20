"""The registries of policy losses and advantage estimators: every config literal has a function,
every function a literal, and each registered function is the math it names."""

from __future__ import annotations

import typing
from types import SimpleNamespace

import pytest
import torch

from grpo.algo import advantages, losses
from grpo.config import TrainConfig


def literal(name: str) -> list[str]:
    return list(typing.get_args(typing.get_type_hints(TrainConfig)[name]))


@pytest.mark.parametrize("field, registry", [("policy_loss", losses.POLICY_LOSSES),
                                             ("advantage_estimator", advantages.ADVANTAGE_ESTIMATORS)])
def test_every_literal_is_registered_and_every_registered_name_is_a_literal(field, registry):
    assert sorted(literal(field)) == sorted(registry.names())


def test_an_unknown_name_says_what_is_registered():
    with pytest.raises(ValueError, match=r"unknown policy loss 'nope'; registered: clip, reinforce"):
        losses.policy_loss("nope")
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'nope'; registered: grpo"):
        advantages.estimator("nope")


def test_clip_uses_epsilon_below_and_epsilon_high_above():
    # rho = e^0.5 = 1.6487 and e^-0.5 = 0.6065; A = +1 and -1
    logp, base = torch.tensor([[0.5, -0.5]]), torch.zeros(1, 2)
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool)
    terms = losses.policy_loss("clip")(logp, base, adv, mask, SimpleNamespace(epsilon=0.2, epsilon_high=0.28))
    # token 0: -min(1.6487 * 1, 1.28 * 1) = -1.28;  token 1: -min(0.6065 * -1, 0.8 * -1) = 0.8
    torch.testing.assert_close(terms.loss, torch.tensor([[-1.28, 0.8]]))
    assert terms.clipped_high.tolist() == [[True, False]] and terms.clipped_low.tolist() == [[False, True]]
    same = losses.policy_loss("clip")(logp, base, adv, mask, SimpleNamespace(epsilon=0.2, epsilon_high=None))
    torch.testing.assert_close(same.loss, torch.tensor([[-1.2, 0.8]]))    # epsilon_high empty: epsilon


def test_reinforce_reports_the_ratio_and_clips_nothing():
    logp, base = torch.tensor([[-1.0, -2.0]], requires_grad=True), torch.tensor([[-1.0, -1.0]])
    adv, mask = torch.tensor([[2.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool)
    terms = losses.policy_loss("reinforce")(logp, base, adv, mask, SimpleNamespace())
    torch.testing.assert_close(terms.loss, torch.tensor([[2.0, -2.0]]), check_dtype=False)  # -A log pi
    torch.testing.assert_close(terms.ratio, torch.tensor([[1.0, torch.e ** -1]]))
    assert not terms.clipped_low.any() and not terms.clipped_high.any() and not terms.ratio.requires_grad


def test_the_grpo_estimator_is_the_pipeline():
    rewards, lengths = torch.tensor([[0.8, 0.6], [1.0, 0.0]]), torch.tensor([3, 4, 2, 5])
    s = SimpleNamespace(reward_scaling="group", baseline="group", token_credit="discounted", gamma=0.9,
                        token_norm=True)
    got = advantages.estimator("grpo")(rewards, lengths, 5, s)
    want = advantages.compute_advantages(rewards, lengths, 5, reward_scaling="group", baseline="group",
                                         token_credit="discounted", gamma=0.9, token_norm=True)
    torch.testing.assert_close(got.normalized, want.normalized)
    torch.testing.assert_close(got.scaled_rewards, want.scaled_rewards)
