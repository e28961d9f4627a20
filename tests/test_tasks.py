"""build_task: the built-in arithmetic task unchanged, reasoning-gym tasks (disjoint splits, deterministic
sampling, the dataset's own scorer) and the errors for unknown names."""

from __future__ import annotations

import json
import random

import pytest

from grpo.data import tasks
from grpo.config import ConfigError, resolve
from grpo.data.tasks import build_task, extract_answer, reasoning_gym_task


def cfg(**kw):
    return resolve(overrides={"model": "m", **kw})


def prompts(rows):
    return [r["prompt"] for r in rows]


# ------------------------------------------------------------------ arithmetic
def test_default_and_named_arithmetic_are_the_built_in_task():
    ref = tasks.get_task("arithmetic")
    for c in (cfg(), cfg(task="arithmetic"), resolve(overrides={})):    # the last: demo defaults
        t = build_task(c)
        assert (t.name, t.train_size, t.heldout_size) == ("arithmetic", ref.train_size, ref.heldout_size)
        assert t.heldout(5) == ref.heldout(5) and t.train_rows(5, seed=3) == ref.train_rows(5, seed=3)
    assert ref.heldout(2) == [{"prompt": "99+27=", "answer": "126"}, {"prompt": "1+50=", "answer": "51"}]


def test_dataset_wins_over_task(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "hi", "answer": "1"}) + "\n")
    t = build_task(resolve(overrides={"dataset": str(p), "eval_size": 0}))   # demo defaults set task=arithmetic
    assert t.name == str(p) and t.row(0, False) == {"prompt": "hi", "answer": "1"}


def test_unknown_task_names():
    with pytest.raises(ConfigError) as e:
        build_task(cfg(task="arithmetik"))
    assert str(e.value) == ("task: unknown task 'arithmetik' (did you mean 'arithmetic'?); built-in tasks are "
                            "arithmetic, multiplication, or reasoning_gym:NAME (e.g. reasoning_gym:countdown)")
    with pytest.raises(ConfigError) as e:
        build_task(cfg(task="reasoning_gym:countdwn"))
    assert str(e.value).startswith("task: unknown reasoning-gym dataset 'countdwn' (did you mean countdown")
    assert "basic_arithmetic, countdown, gsm_symbolic" in str(e.value)
    with pytest.raises(ConfigError, match="needs a dataset name"):
        build_task(cfg(task="reasoning_gym:"))


# ------------------------------------------------------------------ answer extraction
@pytest.mark.parametrize("completion, answer", [
    ("42", "42"),
    ("  42 \n", "42"),
    ("<answer>42</answer>", "42"),
    ("think... <answer>1</answer> no wait <answer> 42 </answer> done", "42"),
    ("<think>x</think><answer>\n3 + 4\n</answer>", "3 + 4"),
    ("reasoning <answer>42", "42"),                       # opened, never closed (cut off)
    ("no tags </answer>", "no tags </answer>"),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


# ------------------------------------------------------------------ reasoning-gym
@pytest.fixture(scope="module", params=["basic_arithmetic", "countdown"])
def rg_task(request):
    return reasoning_gym_task(request.param, heldout_size=20, train_size=40)


@pytest.mark.slow
def test_reasoning_gym_splits_never_overlap(rg_task):
    held = prompts(rg_task.heldout(rg_task.heldout_size))
    train = prompts(rg_task.row(i, False) for i in range(rg_task.train_size))
    assert len(set(held)) > 15 and len(set(train)) > 30
    assert not set(held) & set(train)


def test_reasoning_gym_sampling_is_deterministic_per_seed(rg_task):
    name = rg_task.name.split(":", 1)[1]
    again = reasoning_gym_task(name, heldout_size=20, train_size=40)       # a fresh task, rows drawn anew
    a = rg_task.sample_train(random.Random(1), 12)
    assert prompts(again.sample_train(random.Random(1), 12)) == prompts(a)
    assert prompts(rg_task.sample_train(random.Random(2), 12)) != prompts(a)
    assert set(a[0]) == {"prompt", "answer", "rg_entry"} and a[0]["rg_entry"]["question"] == a[0]["prompt"]


def test_reasoning_gym_reward_is_the_dataset_scorer(rg_task):
    rows = rg_task.heldout(4)
    reward = rg_task.rewards["task"]
    assert list(rg_task.rewards) == ["task"]
    true = [r["answer"] for r in rows]
    cols = {"answer": true, "rg_entry": [r["rg_entry"] for r in rows]}
    assert reward(prompts(rows), true, **cols) == [1.0] * 4
    assert reward(prompts(rows), [f"<think>hm</think> <answer>{a}</answer>" for a in true], **cols) == [1.0] * 4
    wrong = reward(prompts(rows), ["1+1", "<answer>oops</answer>", "", "<answer></answer>"], **cols)
    assert all(0.0 <= w < 1.0 for w in wrong)


def test_reasoning_gym_task_from_config_holds_out_at_least_200():
    t = build_task(cfg(task="reasoning_gym:basic_arithmetic", eval_size=50))
    assert (t.name, t.heldout_size, t.train_size) == ("reasoning_gym:basic_arithmetic", 200, tasks.RG_TRAIN_POOL)
    assert build_task(cfg(task="reasoning_gym:basic_arithmetic", eval_size=300)).heldout_size == 300


def test_training_problems_equal_to_held_out_ones_are_replaced(monkeypatch):
    # basic_arithmetic seeds item i with seed + i, so with a stride of 10 the first training set's items
    # 0..9 are held-out items 10..19: they must be replaced from the next training set (whose items
    # then repeat some of the first set's: duplicates within training are allowed, overlap is not).
    monkeypatch.setattr(tasks, "RG_SEED_STRIDE", 10)
    t = reasoning_gym_task("basic_arithmetic", heldout_size=20, train_size=30)
    held = set(prompts(t.heldout(20)))
    train = prompts(t.row(i, False) for i in range(30))
    assert not held & set(train)
    assert 2 in t.rewards["task"].__self__._sets                    # the replacements' set was built
    monkeypatch.setattr(tasks, "RG_SEED_STRIDE", 0)                  # every training set is the held-out set
    t = reasoning_gym_task("basic_arithmetic", heldout_size=20, train_size=30)
    with pytest.raises(ConfigError) as e:
        t.row(0, False)
    assert str(e.value) == ("task reasoning_gym:basic_arithmetic: training problem 0 and its 7 replacements all "
                            "appear among the 20 held-out problems; this dataset has too few distinct problems "
                            "for that split")


# ------------------------------------------------------------------ task_config
def two_term_task(**extra):
    cfg = resolve(overrides={"task": "reasoning_gym:basic_arithmetic", "model": "m", "eval_size": 20,
                             "task_config": '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}',
                             **extra})
    return cfg, build_task(cfg)


def test_task_config_reaches_the_generator():
    import re
    _, task = two_term_task()
    for row in task.heldout(20) + task.train_rows(20):
        expr = row["rg_entry"]["metadata"]["expression"]
        numbers = re.findall(r"\d+", expr)
        assert len(numbers) == 2 and all(len(n) <= 2 for n in numbers), expr


def test_task_config_from_yaml_and_back(tmp_path):
    from grpo.config import load_yaml, save_yaml
    cfg, _ = two_term_task()
    path = tmp_path / "run.yaml"
    save_yaml(cfg, str(path))
    again = resolve(load_yaml(str(path)), yaml_path=str(path))
    assert again.task_config == {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2} == cfg.task_config


@pytest.mark.parametrize("config, message", [
    ('{"max_term": 2}', "has no setting 'max_term' (did you mean 'max_terms'?); it accepts min_terms, max_terms"),
    ('{"min_terms": 5, "max_terms": 2}', "could not create dataset 'basic_arithmetic' with task_config"),
    ("[1, 2]", "task_config (in command line): expected a mapping of name: value, got [1, 2]"),
    ("{bad", "task_config (in command line): expected a JSON or YAML mapping"),
])
def test_bad_task_config_is_one_line(config, message):
    with pytest.raises(ConfigError) as e:
        build_task(resolve(overrides={"task": "reasoning_gym:basic_arithmetic", "model": "m", "task_config": config}))
    assert message in str(e.value)


def test_a_task_without_configuration_refuses_one():
    with pytest.raises(ConfigError, match="task 'arithmetic' takes no configuration"):
        build_task(resolve(overrides={"task": "arithmetic", "model": "m", "task_config": '{"a": 1}'}))
