"""Built-in rewards, NAME[:WEIGHT] specs, user functions, the weighted sum, and every error message."""

from __future__ import annotations

import textwrap

import pytest

from grpo.data import tasks
from grpo.config import ConfigError, TrainConfig
from grpo.rewards.scoring import (RewardError, build_reward_fns, exact_match, format_reward, load_function,
                          math_verify, overlong_reward, parse_spec, score, think_answer_format)


def crc(prompts, completions, **_):
    return [0.25 for _ in completions]


def fake_task(rewards_=None, name="fake"):
    return tasks.Task(name=name, train_size=1, heldout_size=0, row=lambda i, h: {},
                      rewards={"crc": crc} if rewards_ is None else rewards_)


def build(*specs, task=None, **kw):
    return build_reward_fns(TrainConfig(reward=list(specs), **kw), task or fake_task())


def errmsg(*specs, task=None, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        build(*specs, task=task, **kw)
    return str(e.value)


# ------------------------------------------------------------------------------ exact_match
def test_exact_match():
    out = exact_match(["p"] * 4, [" 12\n", "12", "012", "1 2"], answer=["12", 12, "12", "12"])
    assert out == [1.0, 1.0, 0.0, 0.0]               # stripped equality; an int answer is compared as text


def test_missing_answer_column_is_named():
    fns = build("exact_match")
    with pytest.raises(RewardError, match=r"exact_match reward needs an `answer` column.*\(the data has: source\) on sample 0"):
        score(fns, ["p"], ["c"], {"source": ["x"]})


# ------------------------------------------------------------------------------ math_verify
@pytest.mark.parametrize("completion, answer, expected", [
    ("\\frac{1}{2}", "0.5", 1.0),                     # LaTeX vs a plain number
    ("0.5", "\\frac{1}{2}", 1.0),
    ("$2$", "2", 1.0),                                # inline math
    ("The answer is \\boxed{2}.", "2", 1.0),
    ("<think>2+2=4? no</think> <answer>$\\frac{3}{6}$</answer>", "0.5", 1.0),   # only <answer> is read
    ("3", "2", 0.0),
    ("blah garbage", "2", 0.0),                       # nothing parseable: 0.0, not an exception
    ("", "2", 0.0),
    ("\\frac{", "2", 0.0),                            # malformed LaTeX
])
def test_math_verify(completion, answer, expected):
    assert math_verify(["p"], [completion], answer=[answer]) == [expected]


def test_math_verify_unparseable_reference_is_unscorable():
    assert math_verify(["p", "p"], ["2", "2"], answer=["no math here", "2"]) == [None, 1.0]
    total, _, unscorable, failed = score(build("math_verify"), ["p", "p"], ["2", "2"],
                                         {"answer": ["no math here", "2"]})
    assert total.tolist() == [0.0, 1.0] and unscorable["math_verify"].tolist() == [True, False]
    assert not failed["math_verify"].any()


# ------------------------------------------------------------------------------ format
def test_format_searches_anywhere_and_dotall():
    fn = format_reward(r"\\boxed\{.+\}")
    assert fn([0] * 4, ["so \\boxed{4}.", "\\boxed{}", "no box", "line\n\\boxed{a\nb}"]) == [1.0, 0.0, 0.0, 1.0]
    anchored = format_reward(r"^Answer: \d+$")           # anchor for a whole-completion match
    assert anchored([0] * 3, ["Answer: 42", "I think Answer: 42", "Answer: 42 or 43"]) == [1.0, 0.0, 0.0]


def test_format_needs_a_valid_regex():
    assert "the format reward needs --format-regex" in errmsg("format")
    msg = errmsg("format", format_regex="(unclosed")
    assert msg.startswith("format_regex: '(unclosed' is not a valid regular expression")
    fns = build("format", format_regex=r"\d")
    assert fns["format"][0]([0, 0], ["a1", "ab"]) == [1.0, 0.0]


# ------------------------------------------------------------------------------ think_answer_format
@pytest.mark.parametrize("text", [
    "<think>a</think><answer>4</answer>",
    "  <think>\nstep 1\nstep 2\n</think>\n\n<answer>\n4\n</answer>\n",
    "<think></think><answer>4</answer>",               # an empty thought is allowed
])
def test_think_answer_format_positive(text):
    assert think_answer_format([0], [text]) == [1.0]


@pytest.mark.parametrize("text", [
    "<answer>4</answer>",                              # no think
    "<think>a</think>",                                # no answer
    "<answer>4</answer><think>a</think>",              # wrong order
    "<think>a</think>so<answer>4</answer>",            # text between
    "<think>a</think><answer>4</answer> trailing",     # text after
    "<think>a</think><answer>4</answer><answer>5</answer>",   # two answers
    "<think>a<think>b</think><answer>4</answer>",      # nested think
    "<think>a</think><answer>  </answer>",             # blank answer
    "<think>a</think><answer>4",                       # unclosed
])
def test_think_answer_format_negative(text):
    assert think_answer_format([0], [text]) == [0.0]


# ------------------------------------------------------------------------------ overlong
def test_overlong_numbers_by_hand():
    # max_new_tokens 8, default buffer 8 // 4 = 2: free up to 8 - 2 = 6 tokens, then (6 - T) / 2, floored at -1
    fn = overlong_reward(8)
    lengths = [3, 6, 7, 8, 9]
    #                         3    6    7 -> (6-7)/2   8 -> (6-8)/2   9 -> past the limit, floored
    assert fn([0] * 5, [""] * 5, completion_length=lengths) == pytest.approx([0, 0, -0.5, -1.0, -1.0])
    # buffer 4, factor 0.5: free up to 4, then (4 - T) / 4 * 0.5, floored at -0.5
    fn = overlong_reward(8, buffer=4, factor=0.5)
    assert fn([0] * 4, [""] * 4, completion_length=[4, 5, 6, 8]) == pytest.approx([0, -0.125, -0.25, -0.5])


def test_overlong_from_config():
    fns = build("overlong", max_new_tokens=10, overlong_buffer=4, overlong_penalty_factor=2.0)
    fn, w = fns["overlong"]
    assert w == 1.0 and (fn.max_new_tokens, fn.buffer, fn.factor) == (10, 4, 2.0)
    # free up to 6; T = 8 -> (6 - 8) / 4 * 2 = -1.0
    assert fn([0], [""], completion_length=[8]) == [-1.0]
    assert errmsg("overlong", max_new_tokens=10, overlong_buffer=12) == ("overlong_buffer: must be <= "
                                                                         "max_new_tokens (10), got 12")


def test_overlong_penalty_flag_adds_it_once():
    fns = build(overlong_penalty=True, max_new_tokens=8)          # the dapo preset's way
    assert list(fns) == ["crc", "overlong"] and fns["overlong"][1] == 1.0
    fns = build("crc", "overlong:0.5", overlong_penalty=True)     # an explicit spec wins, not added twice
    assert list(fns) == ["crc", "overlong"] and fns["overlong"][1] == 0.5
    assert "overlong" not in build(max_new_tokens=8)


def test_overlong_needs_completion_length():
    with pytest.raises(RewardError, match="needs the `completion_length` column .*which is missing"):
        score(build("overlong"), ["p"], ["c"], {"answer": ["1"]})


# ------------------------------------------------------------------------------ spec parsing
@pytest.mark.parametrize("spec, expected", [
    ("exact_match", ("exact_match", 1.0)),
    ("exact_match:2", ("exact_match", 2.0)),
    ("math_verify:0.25", ("math_verify", 0.25)),
    ("format:-1", ("format", -1.0)),                  # negative weights: penalties
    ("task:0", ("task", 0.0)),                        # weight 0: logged, not trained on
    ("format:1e-3", ("format", 1e-3)),
    ("my_rewards.py:score", ("my_rewards.py:score", 1.0)),       # the last part is a weight only if a number
    ("pkg.mod:fn", ("pkg.mod:fn", 1.0)),
    ("pkg.mod:fn:0.5", ("pkg.mod:fn", 0.5)),
    ("dir/r.py:fn:3", ("dir/r.py:fn", 3.0)),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec, words", [
    ("exact_match:abc", "bad weight 'abc' in 'exact_match:abc': the weight must be a number"),
    ("pkg.mod:fn:abc", "bad weight 'abc' in 'pkg.mod:fn:abc'"),
    ("format:nan", "bad weight 'nan' in 'format:nan': the weight must be a finite number"),
    ("format:inf", "bad weight 'inf'"),
    ("exact_match:", "ends with ':'"),
    (":0.5", "has a weight but no reward name"),
    ("", "empty reward spec"),
])
def test_bad_specs(spec, words):
    with pytest.raises(ConfigError) as e:
        parse_spec(spec)
    assert words in str(e.value) and str(e.value).startswith("reward: ")


def test_weights_reach_the_dict():
    fns = build("exact_match:2", "think_answer_format:0.5", "crc")
    assert [(k, w) for k, (_, w) in fns.items()] == [("exact_match", 2.0), ("think_answer_format", 0.5), ("crc", 1.0)]


# ------------------------------------------------------------------------------ user functions
USER_CODE = textwrap.dedent("""
    CONSTANT = 3
    def length_reward(prompts, completions, **columns):
        return [float(len(c)) for c in completions]
    def answer_len(prompts, completions, answer, **_):
        return [float(len(a)) for a in answer]
""")


def test_module_function(tmp_path, monkeypatch):
    (tmp_path / "grpo_test_user_mod_a.py").write_text(USER_CODE)
    pkg = tmp_path / "grpo_test_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    fns = build("grpo_test_user_mod_a:length_reward", "grpo_test_user_pkg.mod:answer_len:0.5")
    assert list(fns) == ["length_reward", "answer_len"]
    assert fns["answer_len"][1] == 0.5
    total, per_fn, _, _ = score(fns, ["p", "p"], ["ab", "abcd"], {"answer": ["x", "xyz"]})
    assert per_fn["length_reward"].tolist() == [2.0, 4.0]
    assert total.tolist() == [2.0 + 0.5 * 1, 4.0 + 0.5 * 3]


def test_file_function(tmp_path, monkeypatch):
    path = tmp_path / "sub dir" / "my_rewards.py"
    path.parent.mkdir()
    path.write_text(USER_CODE)
    fns = build(f"{path}:length_reward:2")
    fn, w = fns["length_reward"]
    assert w == 2.0 and fn(["p"], ["abc"]) == [3.0]
    monkeypatch.chdir(tmp_path / "sub dir")                     # a relative path works too
    name, fn2 = load_function("my_rewards.py:answer_len")
    assert name == "answer_len" and fn2(["p"], ["c"], answer=["ab"]) == [2.0]


def test_same_function_name_from_two_places(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "r.py").write_text(USER_CODE)
    a, b = f"{tmp_path}/a/r.py:length_reward", f"{tmp_path}/b/r.py:length_reward"
    assert list(build(a, b)) == ["length_reward", b]            # the second is named by its full spec


# ------------------------------------------------------------------------------ errors
def test_unknown_reward_name_lists_builtins_and_suggests():
    msg = errmsg("exact_mach")
    assert msg == ("reward: unknown reward 'exact_mach'; did you mean 'exact_match'? built-in rewards: "
                   "exact_match, math_verify, format, think_answer_format, task, overlong, crc; a function "
                   "of your own is given as module:function or path/to/file.py:function")
    assert "did you mean" not in errmsg("zzzz")
    assert "--reward-model PATH" in errmsg("reward_model")


def test_import_errors(tmp_path, monkeypatch):
    msg = errmsg("grpo_no_such_module_xyz:fn")
    assert msg.startswith("reward: cannot import module 'grpo_no_such_module_xyz' (from 'grpo_no_such_module_xyz:fn'): "
                          "ModuleNotFoundError")
    msg = errmsg(f"{tmp_path}/missing.py:fn")
    assert msg == f"reward: cannot import '{tmp_path}/missing.py:fn': file {tmp_path}/missing.py not found"
    broken = tmp_path / "broken.py"
    broken.write_text("import grpo_not_a_real_dependency\n")
    msg = errmsg(f"{broken}:fn")
    assert msg.startswith(f"reward: cannot import {broken} (from '{broken}:fn'): ModuleNotFoundError")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    assert "SyntaxError" in errmsg(f"{tmp_path}/syntax.py:f")


def test_missing_and_uncallable_attributes(tmp_path):
    path = tmp_path / "user.py"
    path.write_text(USER_CODE)
    assert errmsg(f"{path}:length_rewrd") == f"reward: {path} has no function 'length_rewrd'; did you mean 'length_reward'?"
    assert errmsg("math:no_such_fn") == "reward: math has no function 'no_such_fn'"
    assert errmsg(f"{path}:CONSTANT") == f"reward: '{path}:CONSTANT' is not a function (it is an int)"
    assert errmsg("math:pi") == "reward: 'math:pi' is not a function (it is a float)"


def test_bad_weight_through_build():
    assert errmsg("exact_match:lots").startswith("reward: bad weight 'lots' in 'exact_match:lots'")
    assert errmsg("crc:x").startswith("reward: bad weight 'x' in 'crc:x'")     # task reward names too


def test_duplicates_and_empty():
    assert errmsg("exact_match", "exact_match:2") == ("reward: 'exact_match' is given twice (again by "
                                                      "'exact_match:2'); give each reward once")
    assert errmsg("task", task=fake_task({})) == ("reward: task 'fake' has no reward function of its own; "
                                                  "name one with --reward")
    assert errmsg(task=fake_task({})) == ("reward: no reward function: task 'fake' has none of its own; "
                                          "give --reward or --reward-model")


def test_unused_format_regex_warns():
    with pytest.warns(UserWarning, match="format_regex is set but no `format` reward uses it"):
        build(format_regex="x")


# ------------------------------------------------------------------------------ defaults, task, weighted sum
def test_default_is_the_tasks_own_rewards():
    task = tasks.arithmetic()
    fns = build_reward_fns(TrainConfig(), task)
    assert fns == {"exact_match": (tasks.exact_match, 1.0)}
    assert build_reward_fns(TrainConfig(reward=["task:0.5"]), task) == {"exact_match": (tasks.exact_match, 0.5)}
    two = fake_task({"a": crc, "b": crc})
    assert build_reward_fns(TrainConfig(reward=["task:3"]), two) == {"a": (crc, 3.0), "b": (crc, 3.0)}
    assert build_reward_fns(TrainConfig(reward=["b"]), two) == {"b": (crc, 1.0)}   # a task reward by name


def test_weighted_sum_through_score():
    fns = build("exact_match:2", "think_answer_format:0.5", "overlong:1", "crc:-4", max_new_tokens=8)
    completions = ["4", "<think>x</think><answer>5</answer>", " 4 "]
    columns = {"answer": ["4", "4", "4"], "completion_length": [1, 7, 8]}
    total, per_fn, unscorable, _ = score(fns, ["2+2="] * 3, completions, columns)
    assert per_fn["exact_match"].tolist() == [1.0, 0.0, 1.0]
    assert per_fn["think_answer_format"].tolist() == [0.0, 1.0, 0.0]
    assert per_fn["overlong"].tolist() == [0.0, -0.5, -1.0]      # free up to 8 - 2 = 6: (6-7)/2, (6-8)/2
    assert per_fn["crc"].tolist() == [0.25] * 3
    # 2*exact + 0.5*format + 1*overlong - 4*0.25
    assert total.tolist() == pytest.approx([2 - 1, 0.5 - 0.5 - 1, 2 - 1 - 1])
    assert not any(v.any() for v in unscorable.values())


def test_score_accepts_numpy_and_tensor_scalars_but_not_text():
    import numpy as np
    import torch

    fns = {"np": (lambda p, c, **_: np.array([0.5, 1.0], dtype=np.float32), 1.0),
           "torch": (lambda p, c, **_: torch.tensor([1.0, 2.0]), 2.0),
           "none": (lambda p, c, **_: [None, True], 1.0)}
    total, _, unscorable, _ = score(fns, ["p", "p"], ["a", "b"], {})
    assert total.tolist() == [0.5 + 2.0, 1.0 + 4.0 + 1.0] and unscorable["none"].tolist() == [True, False]
    with pytest.raises(RewardError, match=r"reward function 'bad' returned '1' \(expected a finite number or None\) "
                                          r"on sample 0"):
        score({"bad": (lambda p, c, **_: ["1"], 1.0)}, ["p"], ["a"], {})
    with pytest.raises(RewardError, match=r"returned nan \(expected a finite number or None\) on sample 0"):
        score({"nan": (lambda p, c, **_: [float("nan")], 1.0)}, ["p"], ["a"], {})


def test_think_answer_format_is_linear_on_long_text():
    long = "<think>" + "a" * 50_000 + "</think><answer>" + "b" * 50_000     # unclosed: no backtracking blow-up
    assert think_answer_format([0, 0], [long, long + "</answer>"]) == [0.0, 1.0]
