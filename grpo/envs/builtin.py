"""Built-in environments, named by `--env NAME`.

calculator
        the task's problem with a calculator tool (`calculate`): a turn that calls it is answered
        with the result; a turn without a call is the answer, reward 1 when the task's verifier
        gives it full credit. A call is a Hermes <tool_call> (how instruction-tuned models call
        tools) or, for the demo's character-level model, a turn that is an arithmetic expression
        and nothing else ("23*47"), answered with "=1081 ". `calculator_off` is the same episode
        with the tool refused ("=? "): the baseline of what the tool is worth.

retry   the task's problem; a wrong answer is met with the problem again, up to env_max_turns
        model turns; reward 1 when an answer is right (the task's verifier), else 0. Each turn's
        own reward (env_credit=turn) is 1 when that turn's answer is right, else 0.
        A multi-turn episode with feedback that any task with a verifier can play.
"""

from __future__ import annotations

import ast
import operator
import re

from .base import Reply
from .tools import ToolEnv, call_tool, parse_tool_calls


def solved(verifier, row: dict, text: str) -> bool:
    """Whether the task's verifier gives `text` full credit on `row`."""
    score = verifier([row["prompt"]], [text], **{k: [v] for k, v in row.items() if k != "prompt"})[0]
    return score is not None and score >= 1.0


class Retry:
    def __init__(self, verifier, turns: int = 3):
        self.verifier = verifier          # the task's verifier: fn(prompts, completions, **columns) -> scores
        self.turns = turns

    def reset(self, row: dict) -> list[dict]:
        self.row, self.turn = row, 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text: str) -> Reply:
        self.turn += 1
        if solved(self.verifier, self.row, text):
            return Reply(done=True, reward=1.0, turn_reward=1.0)
        if self.turn >= self.turns:
            return Reply(done=True, reward=0.0, turn_reward=0.0)
        return Reply(messages=[{"role": "user", "content": f" {self.row['prompt']}"}], reward=0.0, turn_reward=0.0)


OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.USub: operator.neg, ast.UAdd: operator.pos}
EXPRESSION = re.compile(r"^\s*[0-9][0-9+\-*/(). ]*[+\-*/][0-9+\-*/(). ]*[0-9)]\s*$")


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression of numbers, + - * / and parentheses.

    Args:
        expression: the expression, for example "23*47"
    """
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not an arithmetic expression: {expression!r}")
    if len(expression) > 200:
        raise ValueError("expression too long")
    return _number(ev(ast.parse(expression, mode="eval")))


class Calculator(ToolEnv):
    tools = [calculate]
    tool_timeout = 5.0

    def __init__(self, verifier, offered: bool = True):
        self.verifier, self.offered = verifier, offered

    def step(self, text: str) -> Reply:
        if parse_tool_calls(text):
            if not self.offered:
                return Reply(messages=[{"role": "tool", "name": "calculate", "content": "error: no tools here"}],
                             tool_calls=1, tool_errors=1)
            return super().step(text)
        if EXPRESSION.match(text):                  # the compact call of the demo's model
            if not self.offered:
                return Reply(messages=[{"role": "tool", "content": "=? "}], tool_calls=1, tool_errors=1)
            content, ok = call_tool({"calculate": calculate}, {"name": "calculate", "arguments": {"expression": text}},
                                    self.tool_timeout)
            return Reply(messages=[{"role": "tool", "content": f"={content} " if ok else "=? "}],
                         tool_calls=1, tool_errors=int(not ok))
        return self.answer(text)

    def answer(self, text: str) -> Reply:
        return Reply(done=True, reward=float(solved(self.verifier, self.row, text)))


def _verifier(task, env: str):
    from ..errors import ConfigError
    name = task.accuracy or next(iter(task.rewards), None)
    if name is None:
        raise ConfigError(f"env: {env} needs a task with a verifier; task {task.name!r} has none")
    return task.rewards[name]


def calculator(task, cfg, offered: bool = True):
    verifier = _verifier(task, "calculator")
    factory = lambda: Calculator(verifier, offered)            # noqa: E731
    factory.tools = Calculator.tools if offered else None       # offered to the model in the prompt
    return factory


def retry(task, cfg):
    verifier = _verifier(task, "retry")
    return lambda: Retry(verifier, cfg.env_max_turns)


BUILTIN = {"retry": retry, "calculator": calculator,
           "calculator_off": lambda task, cfg: calculator(task, cfg, offered=False)}        # name -> fn(task, settings) -> a factory of environments
