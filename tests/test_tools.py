"""Tools in episodes (grpo/envs/tools.py): schemas from signatures and docstrings, calls parsed
from the model's text, every kind of bad call an answer the model reads, and the two ways tools
are offered (the chat template's `tools=`, or the system message)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from grpo.envs import EpisodeLimits, Reply, run_episodes
from grpo.envs.tools import ToolEnv, call_tool, parse_tool_calls, template_offers_tools, tool_schema
from grpo.models.loading import load_model
from grpo.rollout import HFEngine, SamplingSettings


def multiply(a: int, b: int) -> int:
    """Multiply two whole numbers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def slow(x: int) -> int:
    """Sleep a while.

    Args:
        x: ignored
    """
    time.sleep(5)
    return x


def undocumented(a):
    return a


def test_schema_from_signature_and_docstring():
    s = tool_schema(multiply)
    assert s["function"]["name"] == "multiply"
    assert s["function"]["parameters"]["properties"]["a"] == {"type": "integer", "description": "the first factor"}
    assert s["function"]["parameters"]["required"] == ["a", "b"]
    with pytest.raises(ValueError, match="undocumented"):
        tool_schema(undocumented)


def test_calls_parsed_and_every_bad_call_an_answer():
    text = ('<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call> '
            '<tool_call>{"name": "multiply", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}</tool_call>'
            '<tool_call>{"name": multiply}</tool_call><tool_call>[1]</tool_call>')
    calls = parse_tool_calls(text)
    assert calls[:2] == [{"name": "multiply", "arguments": {"a": 12, "b": 34}},
                         {"name": "multiply", "arguments": {"a": 2, "b": 3}}]
    assert calls[2].startswith("the tool call is not valid JSON") and "name" in calls[3]
    tools = {"multiply": multiply, "slow": slow}
    assert call_tool(tools, calls[0], 1.0) == ("408", True)
    assert call_tool(tools, calls[2], 1.0)[0].startswith("error: the tool call is not valid JSON")
    assert call_tool(tools, {"name": "divide", "arguments": {}}, 1.0) == \
        ("error: no tool named 'divide' (tools: multiply, slow)", False)
    content, ok = call_tool(tools, {"name": "multiply", "arguments": {"a": 1}}, 1.0)
    assert not ok and content.startswith("error: TypeError") and "'b'" in content
    t0 = time.monotonic()
    assert call_tool(tools, {"name": "slow", "arguments": {"x": 1}}, 0.2) == ("error: slow timed out after 0.2 s", False)
    assert time.monotonic() - t0 < 2


class Calc(ToolEnv):
    tools = [multiply]

    def answer(self, text):
        return Reply(done=True, reward=float(text.strip() == "6"))


def test_tool_env_answers_calls_with_tool_messages():
    env = Calc()
    env.reset({"prompt": "2*3="})
    r = env.step('<tool_call>{"name": "multiply", "arguments": {"a": 2, "b": 3}}</tool_call>')
    assert r.messages == [{"role": "tool", "name": "multiply", "content": "6"}] and (r.tool_calls, r.tool_errors) == (1, 0)
    r = env.step('<tool_call>{"name": "multiply", "arguments": {"a": 2}}</tool_call>')
    assert r.tool_errors == 1 and r.messages[0]["content"].startswith("error: TypeError") and not r.done
    assert env.step("6") == Reply(done=True, reward=1.0)


TOOL_TEMPLATE = ("{% if tools %}T{{ tools | map(attribute='function') | map(attribute='name') | join(',') }}<eos>"
                 "{% endif %}{% for m in messages %}{{ m['role'][0] }}{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}a{% endif %}")
PLAIN_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}{{ m['content'] }}<eos>{% endfor %}"
                  "{% if add_generation_prompt %}a{% endif %}")


@pytest.mark.parametrize("template", [TOOL_TEMPLATE, PLAIN_TEMPLATE])
def test_tools_offered_through_the_template_or_the_system_message(tiny_model_dir, template):
    model, tok = load_model(tiny_model_dir, torch.device("cpu"))
    tok.chat_template = template
    offers = template_offers_tools(tok, [tool_schema(multiply)])
    assert offers == (template is TOOL_TEMPLATE)
    sampling = SamplingSettings(max_new_tokens=3, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    _, eps, _ = run_episodes(HFEngine(), model, tok, [Calc()], [{"prompt": "2*3="}], sampling,
                             [torch.Generator().manual_seed(0)], EpisodeLimits(1, 8), tools=[multiply])
    opening = eps[0].messages[0]
    if offers:                              # the template wrote the tools; no system message added
        assert opening["role"] == "user"
        # (the tiny tokenizer knows only digits and signs: its view of the text drops the letters)
        assert len(eps[0].prompt) == len(tok(tok.apply_chat_template(
            eps[0].messages[:1], tools=[tool_schema(multiply)], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"])
    else:
        assert opening["role"] == "system" and '"name": "multiply"' in opening["content"]
        assert "<tool_call>" in opening["content"]


def test_calculate_evaluates_arithmetic_only():
    from grpo.envs.builtin import calculate
    assert calculate("23*47") == "1081" and calculate("(2+3)/2") == "2.5" and calculate("-4+1") == "-3"
    for bad in ("__import__('os')", "2**100", "x+1", "1;2"):
        with pytest.raises((ValueError, SyntaxError)):
            calculate(bad)


@pytest.mark.parametrize("offered", [True, False])
def test_calculator_env_answers_hermes_and_compact_calls(offered):
    from types import SimpleNamespace
    from grpo.data.tasks import get_task
    from grpo.envs.load import load_env
    task = get_task("multiplication")
    make = load_env("calculator" if offered else "calculator_off", task, SimpleNamespace(env_max_turns=3))
    assert (make.tools is not None) == offered
    row = task.heldout(1)[0]
    a, b = row["prompt"].rstrip("=").split("*")
    env = make()
    env.reset(row)
    compact = env.step(f"{a}*{b}")
    hermes = env.step('<tool_call>{"name": "calculate", "arguments": {"expression": "%s*%s"}}</tool_call>' % (a, b))
    if offered:
        assert compact.messages == [{"role": "tool", "content": f"={row['answer']} "}] and compact.tool_errors == 0
        assert hermes.messages[0]["content"] == row["answer"] and hermes.tool_calls == 1
    else:
        assert compact.messages[0]["content"] == "=? " and compact.tool_errors == 1
        assert hermes.messages[0]["content"].startswith("error") and hermes.tool_errors == 1
    assert env.step(row["answer"]) == Reply(done=True, reward=1.0)


def test_multiplication_task_splits_never_overlap():
    from grpo.data.tasks import get_task
    task = get_task("multiplication")
    held = {r["prompt"] for r in task.heldout(task.heldout_size)}
    train = {task.row(i, False)["prompt"] for i in range(task.train_size)}
    assert len(held) == 1000 and len(train) == 90 * 90 - 1000 and not held & train
    r = task.heldout(1)[0]
    a, b = map(int, r["prompt"].rstrip("=").split("*"))
    assert 10 <= a <= 99 and 10 <= b <= 99 and r["answer"] == str(a * b)


def test_calculator_teacher_episodes_train_only_the_models_turns():
    import random
    from grpo import demo
    from grpo.demo.sft import sft_batch
    tok = demo.build_tokenizer()
    rng = random.Random(0)
    row = {"prompt": "23*47=", "answer": "1081"}
    eps = [demo.calculator_episode(row, rng, 0.5) for _ in range(40)]
    calls = [e for e in eps if len(e["segments"]) == 4]
    guesses = [e for e in eps if len(e["segments"]) == 2]
    assert calls and guesses
    ids, mask, labels = sft_batch(tok, [calls[0], guesses[0]], "cpu")
    text = tok.decode(ids[0][mask[0].bool()])
    assert text == "23*47=23*47<eos>=1081 1081<eos>"
    trained = tok.decode(ids[0][labels[0] != -100])
    assert trained == "23*47<eos>1081<eos>"             # the environment's "=1081 " and the prompt are context
    assert tok.decode(ids[1][labels[1] != -100]).startswith("10") and len(guesses[0]["segments"][1][0]) == 4


def test_the_calculator_demo_defaults():
    from grpo.config import resolve
    cfg = resolve(overrides={"env": "calculator"})
    assert (cfg.task, cfg.env_max_turns, cfg.max_new_tokens) == ("multiplication", 2, 8)
    assert resolve(overrides={"env": "calculator", "task": "arithmetic"}).task == "arithmetic"
    assert resolve(overrides={"env": "retry"}).task == "arithmetic"


class Counter:
    """A TRL-style environment: reset(**row), public methods as tools, get_reward()."""

    def reset(self, prompt=None, answer=None, **_):
        self.total, self.target = 0, int(answer)
        return " Use add."

    def add(self, n: int) -> str:
        """Add to the running total.

        Args:
            n: how much to add
        """
        self.total += n
        return str(self.total)

    def get_reward(self) -> float:
        return float(self.total == self.target)


def test_a_trl_style_environment_maps_onto_ours():
    from grpo.envs import trl_environment
    from grpo.envs.load import load_env
    Env = trl_environment(Counter)
    assert [t.__name__ for t in Env.tools] == ["add"] and tool_schema(Env.tools[0])["function"]["name"] == "add"
    env = Env()
    assert env.reset({"prompt": "make 5", "answer": "5"}) == [{"role": "user", "content": "make 5 Use add."}]
    r = env.step('<tool_call>{"name": "add", "arguments": {"n": 5}}</tool_call>')
    assert r.messages == [{"role": "tool", "name": "add", "content": "5"}]
    assert env.step("done") == Reply(done=True, reward=1.0)
    other = Env()                                   # each episode its own state
    other.reset({"prompt": "make 5", "answer": "5"})
    assert other.step("done").reward == 0.0
    import types
    mod = types.ModuleType("trl_env_mod")
    mod.Env = Env
    import sys
    sys.modules["trl_env_mod"] = mod
    assert load_env("trl_env_mod:Env") is Env


def test_odd_tool_results_and_odd_json_are_answers_not_crashes():
    def odd(x: int):
        """Return something JSON cannot hold.

        Args:
            x: ignored
        """
        return {x, x + 1}

    def leaves(x: int) -> int:
        """Call sys.exit.

        Args:
            x: ignored
        """
        raise SystemExit(3)

    content, ok = call_tool({"odd": odd}, {"name": "odd", "arguments": {"x": 1}}, 1.0)
    assert ok and "1" in content
    assert call_tool({"leaves": leaves}, {"name": "leaves", "arguments": {"x": 1}}, 1.0) == ("error: SystemExit: 3", False)
    deep = "<tool_call>" + "[" * 100000 + "]" * 100000 + "</tool_call>"
    huge = '<tool_call>{"name": "f", "arguments": {"n": ' + "9" * 5000 + "}}</tool_call>"
    for text in (deep, huge):
        (call,) = parse_tool_calls(text)
        assert isinstance(call, str) and call.startswith("the tool call is not valid JSON")
