"""Micro-batches by token budget (grpo/train/microbatch.py): what `plan` packs, and that the update
and the reference pass give the same numbers whatever the plan."""

from __future__ import annotations

import pytest
import torch

from grpo.rollout import Rollout
from grpo.train.microbatch import plan, trim

LENGTHS = torch.tensor([5, 1, 8, 3, 8, 2, 6, 4])        # completion lengths of 8 sequences
P = 4                                                    # prompt width


def covers_once(parts, seqs):
    return sorted(torch.cat(parts).tolist()) == sorted(seqs.tolist())


def test_without_a_binding_budget_the_minibatch_is_split_in_order():
    seqs = torch.tensor([7, 2, 5, 0])
    assert [p.tolist() for p in plan(seqs, LENGTHS, P, budget=0, least=2)] == [[7, 2], [5, 0]]
    # 4 rows x (4 + 8) = 48 tokens fit a budget of 48: one micro-batch, in the minibatch's own order
    assert [p.tolist() for p in plan(seqs, LENGTHS, P, budget=48)] == [[7, 2, 5, 0]]


def test_a_binding_budget_packs_sequences_of_similar_length():
    seqs = torch.arange(8)
    parts = plan(seqs, LENGTHS, P, budget=30)
    # longest first: 30 // (4 + 8) = 2 rows (8, 8); 30 // (4 + 6) = 3 rows (6, 5, 4); the 3 rows left (3, 2, 1)
    assert [p.tolist() for p in parts] == [[2, 4], [6, 0, 7], [3, 5, 1]]
    assert covers_once(parts, seqs)
    for p in parts:
        assert len(p) * (P + int(LENGTHS[p].max())) <= 30


def test_a_row_over_the_budget_goes_alone_and_least_is_kept():
    parts = plan(torch.arange(8), LENGTHS, P, budget=5)         # no row fits: one row each
    assert [len(p) for p in parts] == [1] * 8
    parts = plan(torch.arange(8), LENGTHS, P, budget=40, least=5)
    assert len(parts) == 5 and covers_once(parts, torch.arange(8))
    assert plan(torch.tensor([], dtype=torch.long), LENGTHS, P, budget=10) == []


def test_trim_cuts_columns_past_the_longest_completion():
    L = 8
    lengths = torch.tensor([3, 5])
    mask = torch.arange(L)[None] < lengths[:, None]
    roll = Rollout(torch.ones(2, P, dtype=torch.long), torch.ones(2, P, dtype=torch.long),
                   torch.arange(2 * L).view(2, L), mask, torch.randn(2, L), lengths, torch.zeros(2, dtype=torch.bool))
    cut, width = trim(roll)
    assert width == 5 and cut.completion_ids.shape == (2, 5) and cut.completion_mask[:, :5].equal(mask[:, :5])
    assert trim(roll.select(torch.tensor([0, 1])))[1] == 5
    full = roll.select(torch.tensor([1]))
    full.lengths = torch.tensor([8])
    assert trim(full)[0] is full                                  # nothing to cut: the same rollout


@pytest.fixture(autouse=True)
def _dense_task(monkeypatch):
    from test_training import dense_task
    from grpo.data import tasks as tasks_mod
    monkeypatch.setitem(tasks_mod.TASKS, "dense", dense_task)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_token_budgets_give_the_same_update_and_reference(tiny_config, aggregation):
    from test_training import run_update, setup_batch, state
    from grpo.train.update import micro_plan
    base = dict(preset="deepseekmath", task="dense", loss_aggregation=aggregation, prompts_per_step=4,
                max_new_tokens=8, max_grad_norm=0.0)
    out = {}
    for budget in (0, 40, 16):                  # one micro-batch; a few; about one sequence each
        run, batch = setup_batch(tiny_config(**base, micro_batch_tokens=budget))
        parts = micro_plan(run, batch, torch.arange(16))
        acc = run_update(run, batch)
        out[budget] = dict(parts=len(parts), weights=state(run.actor), grads=acc.last_grads, loss=acc.loss,
                           ref=batch.ref_logp, lengths=batch.rollout.lengths)
    assert out[0]["parts"] == 1 < out[40]["parts"] < out[16]["parts"]
    assert len(set(out[0]["lengths"].tolist())) > 1, "the sample should hold completions of several lengths"
    for budget in (40, 16):
        where = f"{aggregation}, budget {budget}"
        torch.testing.assert_close(out[budget]["ref"], out[0]["ref"], atol=1e-5, rtol=0, msg=where)
        assert out[budget]["loss"] == pytest.approx(out[0]["loss"], abs=1e-5), where
        for n, g in out[0]["grads"].items():
            torch.testing.assert_close(out[budget]["grads"][n], g, atol=1e-5, rtol=1e-4, msg=f"{where}: {n}")
