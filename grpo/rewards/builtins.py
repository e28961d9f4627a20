"""The built-in reward functions: exact match, math-verify equivalence, format checks, the
think/answer layout and DAPO's overlong penalty (each `(prompts, completions, **columns) -> one
float per completion`, or None where it cannot score)."""

from __future__ import annotations

import re
import threading
from typing import Callable

import torch

from ..algo.advantages import overlong_penalty
from ..config import ConfigError
from ..data.verifiers import answers_of, exact_match

__all__ = ["exact_match", "math_verify", "think_answer_format", "format_reward", "overlong_reward", "BUILTINS"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _math_parse(text: str, timeout: int | None) -> list:
    from math_verify import parse
    try:
        return parse(text, parsing_timeout=timeout)
    except Exception:                       # math-verify's own timeouts and parser errors
        return []


def math_verify(prompts: list, completions: list[str], answer: list | None = None, **columns) -> list[float | None]:
    """1.0 when math-verify finds the completion's final answer mathematically equal to the reference
    (LaTeX, $...$, \\boxed{...} or plain numbers: "\\frac{1}{2}" equals "0.5"), else 0.0.

    When the completion has `<answer>...</answer>` tags, only the last tag's content is checked.
    A completion with nothing parseable scores 0.0; a reference answer that math-verify cannot
    parse makes the sample unscorable (None): that is a data problem, not the model's."""
    from math_verify import verify
    answer = answers_of("math_verify", answer, columns, len(completions))
    # math-verify times out with signal.alarm, which only works in the main thread
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_cache: dict[str, list] = {}
    out: list[float | None] = []
    for c, a in zip(completions, answer):
        a = str(a)
        if a not in gold_cache:
            gold_cache[a] = _math_parse(a, timeout)
        gold = gold_cache[a]
        if not gold:
            out.append(None)
            continue
        tags = _ANSWER_TAG.findall(c)
        pred = _math_parse(tags[-1] if tags else c, timeout)
        if not pred:
            out.append(0.0)
            continue
        try:
            ok = verify(gold, pred, timeout_seconds=timeout)
        except Exception:
            ok = False
        out.append(1.0 if ok else 0.0)
    return out


_TAG_FREE = r"(?:(?!</?think>|</?answer>).)"
THINK_ANSWER_PATTERN = re.compile(
    rf"\s*<think>{_TAG_FREE}*</think>\s*<answer>(?P<answer>{_TAG_FREE}*)</answer>\s*", re.DOTALL)


def _think_answer_ok(text: str) -> bool:
    m = THINK_ANSWER_PATTERN.fullmatch(text)
    return bool(m and m.group("answer").strip())


def think_answer_format(prompts: list, completions: list[str], **_) -> list[float]:
    """1.0 when the completion is exactly `<think>...</think>` then `<answer>...</answer>` (whitespace
    allowed around and between them, each tag once, a non-blank answer), else 0.0."""
    return [1.0 if _think_answer_ok(c) else 0.0 for c in completions]


def format_reward(pattern: str) -> Callable:
    """The `format` reward: 1.0 when `re.search(pattern, completion, re.DOTALL)` finds a match, else 0.0.
    Anchor the pattern (`^...$`, or `\\A...\\Z`) to demand that the whole completion match."""
    try:
        rx = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(f"format_regex: {pattern!r} is not a valid regular expression: {e}") from None

    def format(prompts: list, completions: list[str], **_) -> list[float]:  # noqa: A001 - the reward's name
        return [1.0 if rx.search(c) else 0.0 for c in completions]

    format.pattern = pattern
    return format


def overlong_reward(max_new_tokens: int, buffer: int | None = None, factor: float = 1.0) -> Callable:
    """DAPO's soft overlong penalty as a reward function: 0 up to `max_new_tokens - buffer` tokens,
    then a linear ramp down to -factor at `max_new_tokens` (grpo.advantages.overlong_penalty).
    Reads the `completion_length` column (token counts). `buffer` defaults to max_new_tokens // 4."""
    buffer = buffer or max(1, max_new_tokens // 4)
    if buffer > max_new_tokens:
        raise ConfigError(f"overlong_buffer: must be <= max_new_tokens ({max_new_tokens}), got {buffer}")

    def overlong(prompts: list, completions: list[str], completion_length: list | None = None, **_) -> list[float]:
        if completion_length is None:
            raise ValueError("the overlong reward needs the `completion_length` column (token count of each "
                             "completion), which is missing")
        lengths = torch.as_tensor([int(n) for n in completion_length], dtype=torch.long)
        return overlong_penalty(lengths, max_new_tokens, buffer, factor).tolist()

    overlong.max_new_tokens, overlong.buffer, overlong.factor = max_new_tokens, buffer, factor
    return overlong


BUILTINS = ("exact_match", "math_verify", "format", "think_answer_format", "task", "overlong")
