"""Evaluation: the run's reward, each function's pass rate, the task's accuracy where it defines one,
and pass@k, on the held-out split."""

from __future__ import annotations

import pytest
import torch

from grpo.data import tasks
from grpo.train.evaluate import evaluate
from grpo.models.loading import load_model


def test_pass_at_k_counts_problems_solved_by_any_sample(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    task = tasks.get_task("arithmetic")
    # a verifier that accepts exactly the completions starting with "1": the sample-level rate and
    # the problem-level "any of k" rate then differ in a way we can recompute by hand below
    seen = []

    def starts_with_one(prompts, completions, **_):
        seen.extend(completions)
        return [1.0 if c.startswith("1") else 0.0 for c in completions]

    task.rewards, task.accuracy = {"starts_with_one": starts_with_one}, "starts_with_one"
    res = evaluate(model, tok, task, n=6, batch_size=12, max_new_tokens=4, samples=4, greedy=False, seed=3)
    assert res["n"] == 6 and res["samples"] == 4 and len(seen) == 24
    solved = torch.tensor([c.startswith("1") for c in seen]).view(6, 4)
    assert res["accuracy"] == solved.double().mean().item()
    assert res["pass@4"] == solved.any(1).double().mean().item()
    assert res["pass@4"] >= res["accuracy"]


def test_greedy_is_one_sample_and_deterministic(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    task = tasks.get_task("arithmetic")
    a = evaluate(model, tok, task, n=8, batch_size=4, max_new_tokens=4)
    b = evaluate(model, tok, task, n=8, batch_size=8, max_new_tokens=4, samples=5)   # greedy ignores samples
    assert a == b and a["samples"] == 1 and "pass@5" not in b


def test_the_runs_reward_and_each_functions_pass_rate(tiny_model_dir):
    """A task with no accuracy of its own (a dataset's): the figures are the run's rewards only."""
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    base = tasks.get_task("arithmetic")
    task = tasks.Task(name="data", train_size=10, heldout_size=10, row=base.row,
                      rewards={"exact_match": base.rewards["exact_match"]})          # no `accuracy`
    seen = []

    def length(prompts, completions, **_):                # 1.0 (full credit) for 2+ characters, else 0.25
        seen.extend(completions)
        return [1.0 if len(c) >= 2 else 0.25 for c in completions]

    def half(prompts, completions, **_):
        return [0.5] * len(completions)

    res = evaluate(model, tok, task, n=6, batch_size=6, max_new_tokens=4,
                   reward_fns={"length": (length, 2.0), "half": (half, 1.0)})
    scores = torch.tensor([1.0 if len(c) >= 2 else 0.25 for c in seen])
    assert "accuracy" not in res
    assert res["mean_reward"] == pytest.approx((2.0 * scores + 0.5).mean().item())
    assert res["pass/length"] == pytest.approx((scores >= 1).double().mean().item())
    assert res["pass/half"] == 0.0                        # never full credit


def test_accuracy_comes_from_the_tasks_verifier_even_when_the_run_rewards_something_else(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    task = tasks.get_task("arithmetic")

    def one(prompts, completions, **_):
        return [1.0] * len(completions)

    res = evaluate(model, tok, task, n=8, batch_size=8, max_new_tokens=4, reward_fns={"one": (one, 1.0)})
    plain = evaluate(model, tok, task, n=8, batch_size=8, max_new_tokens=4)      # exact match alone
    assert res["mean_reward"] == 1.0 and res["pass/one"] == 1.0                  # the verifier weighs nothing
    assert res["accuracy"] == plain["accuracy"] == plain["pass/exact_match"]
