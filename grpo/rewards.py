"""Scoring completions: reward functions called in batches, combined with weights.

A reward function takes `(prompts, completions, **columns)` (lists, one entry per completion;
`columns` are the data row's other fields, e.g. `answer`, plus `completion_length`, the token
count of each completion) and returns one float per completion, or None for "cannot score"
(counted, and treated as 0).

`build_reward_fns(cfg, task)` turns the `--reward NAME[:WEIGHT]` specs, `--reward-model` and
`--overlong-penalty` into the run's `{name: (fn, weight)}`; `score` calls them and sums.
See docs/rewards.md.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch

from .config import ConfigError


class RewardError(RuntimeError):
    """A reward function raised, or returned something other than one number per completion."""


def _call(name: str, fn: Callable, prompts, completions, columns) -> list:
    try:
        return list(fn(prompts, completions, **columns))
    except Exception as batch_error:
        # find the first sample that fails on its own, to name it
        for i in range(len(completions)):
            try:
                fn(prompts[i:i + 1], completions[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})
            except Exception as e:
                raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {e} on sample {i} "
                                  f"(prompt {prompts[i]!r}, completion {completions[i]!r})") from e
        raise RewardError(f"reward function {name!r} raised {type(batch_error).__name__}: {batch_error} "
                          f"on a batch of {len(completions)} completions") from batch_error


def score(reward_fns: dict[str, tuple[Callable, float]], prompts: list[str], completions: list[str],
          columns: dict[str, list]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Weighted sum of every reward function.  Returns (total (N,), per-function (N,) each, unscorable count)."""
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    per_fn, unscorable = {}, 0
    for name, (fn, weight) in reward_fns.items():
        values = _call(name, fn, prompts, completions, columns)
        if len(values) != n:
            raise RewardError(f"reward function {name!r} returned {len(values)} values for {n} completions")
        clean = []
        for i, v in enumerate(values):
            if v is None:
                unscorable += 1
                clean.append(0.0)
                continue
            # plain numbers, numpy scalars and 0-d tensors/arrays are all accepted
            number = isinstance(v, numbers.Real) or (hasattr(v, "item") and getattr(v, "ndim", None) == 0)
            if not number or isinstance(v, str) or not math.isfinite(float(v)):
                raise RewardError(f"reward function {name!r} returned {v!r} for sample {i}; "
                                  "expected a finite number or None")
            clean.append(float(v))
        per_fn[name] = torch.tensor(clean, dtype=torch.float32)
        total += weight * per_fn[name]
    return total, per_fn, unscorable


# ====================================================================== built-in reward functions
def _answers(reward: str, answer, columns: dict, n: int) -> list:
    """The `answer` column, or a clear error naming the columns there are."""
    if answer is None:
        have = ", ".join(sorted(k for k in columns if k != "completion_length")) or "none"
        raise ValueError(f"the {reward} reward needs an `answer` column, the reference answer of each row "
                         f"(the data has: {have})")
    if len(answer) != n:
        raise ValueError(f"the {reward} reward got {len(answer)} answers for {n} completions")
    return answer


def exact_match(prompts: list, completions: list[str], answer: list | None = None, **columns) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals the stripped answer, else 0.0."""
    answer = _answers("exact_match", answer, columns, len(completions))
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


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
    answer = _answers("math_verify", answer, columns, len(completions))
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
    from .advantages import overlong_penalty
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


# ====================================================================== specs and user functions
def parse_spec(spec: str, names: tuple | list = BUILTINS) -> tuple[str, float]:
    """`NAME[:WEIGHT]` -> (NAME, weight). The text after the last colon is a weight only when it
    parses as a number, so `pkg.mod:fn`, `file.py:fn` and `pkg.mod:fn:0.5` all work. `names` are
    the plain reward names (a colon after one of them must be followed by a weight)."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("reward: empty reward spec; expected NAME[:WEIGHT]")
    head, sep, tail = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        weight = float(tail)
    except ValueError:
        weight = None
    if weight is not None:
        if not math.isfinite(weight):
            raise ConfigError(f"reward: bad weight {tail!r} in {spec!r}: the weight must be a finite number")
        if not head:
            raise ConfigError(f"reward: {spec!r} has a weight but no reward name; expected NAME[:WEIGHT]")
        return head, weight
    if not tail.strip():
        raise ConfigError(f"reward: {spec!r} ends with ':'; expected NAME[:WEIGHT], module:function "
                          "or path/to/file.py:function")
    if head in names or ":" in head:
        raise ConfigError(f"reward: bad weight {tail!r} in {spec!r}: the weight must be a number, as in "
                          f"{head}:0.5")
    return spec, 1.0                       # module:function


_loaded_files: dict[str, object] = {}


def _load_file(path: Path, target: str):
    key = str(path.resolve())
    if key in _loaded_files:
        return _loaded_files[key]
    name = f"grpo_user_reward_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"reward: cannot import {path} (from {target!r}): not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.resolve().parent)
    sys.path.insert(0, parent)             # so the file can import its neighbours while it loads
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(name, None)
        raise ConfigError(f"reward: cannot import {path} (from {target!r}): {type(e).__name__}: {e}") from e
    finally:
        try:
            sys.path.remove(parent)
        except ValueError:
            pass
    _loaded_files[key] = module
    return module


def _import_module(modname: str, target: str):
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)               # `grpo` run as a console script: find modules next to the user
    try:
        return importlib.import_module(modname)
    except (Exception, SystemExit) as e:
        raise ConfigError(f"reward: cannot import module {modname!r} (from {target!r}): "
                          f"{type(e).__name__}: {e}") from e


def load_function(target: str) -> tuple[str, Callable]:
    """`module:function` or `path/to/file.py:function` -> (function name, the callable)."""
    modname, _, attr = target.rpartition(":")
    if not modname or not attr:
        raise ConfigError(f"reward: {target!r} is not module:function or path/to/file.py:function")
    if modname.endswith(".py") or "/" in modname or os.sep in modname:
        path = Path(modname).expanduser()
        if not path.is_file():
            raise ConfigError(f"reward: cannot import {target!r}: file {modname} not found")
        module = _load_file(path, target)
    else:
        module = _import_module(modname, target)
    if not hasattr(module, attr):
        public = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")]
        near = difflib.get_close_matches(attr, public, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"reward: {modname} has no function {attr!r}{hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        kind = type(fn).__name__
        raise ConfigError(f"reward: {target!r} is not a function (it is {'an' if kind[0] in 'aeiou' else 'a'} {kind})")
    return attr, fn


# ====================================================================== the run's reward functions
def _builtin(name: str, cfg, task) -> list[tuple[str, Callable]]:
    if name == "exact_match":
        return [(name, exact_match)]
    if name == "math_verify":
        try:
            import math_verify as _  # noqa: F401
        except ImportError:
            raise ConfigError("reward: math_verify needs the math-verify package (pip install math-verify)") from None
        return [(name, math_verify)]
    if name == "format":
        if not cfg.format_regex:
            raise ConfigError("reward: the format reward needs --format-regex (the pattern a completion must "
                              "contain; anchor it with ^...$ to demand a whole-completion match)")
        return [(name, format_reward(cfg.format_regex))]
    if name == "think_answer_format":
        return [(name, think_answer_format)]
    if name == "task":
        if not task.rewards:
            raise ConfigError(f"reward: task {task.name!r} has no reward function of its own; "
                              "name one with --reward")
        return list(task.rewards.items())
    if name == "overlong":
        return [(name, overlong_reward(cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty_factor))]
    raise AssertionError(name)


def _unknown(name: str, task) -> ConfigError:
    known = list(BUILTINS) + [n for n in task.rewards if n not in BUILTINS]
    if name == "reward_model":
        return ConfigError("reward: a reward model is given with --reward-model PATH (and --reward-model-weight), "
                           "not --reward reward_model")
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return ConfigError(f"reward: unknown reward {name!r}; {hint}built-in rewards: {', '.join(known)}; "
                       "a function of your own is given as module:function or path/to/file.py:function")


def build_reward_fns(cfg, task, device=None) -> dict[str, tuple[Callable, float]]:
    """The run's weighted reward functions, in this order: the --reward specs (default: the task's own
    rewards, weight 1), then --reward-model as "reward_model", then "overlong" when --overlong-penalty
    is on and no `overlong` spec was given.  Raises ConfigError on any bad spec."""
    task_rewards = dict(getattr(task, "rewards", None) or {})
    names = tuple(BUILTINS) + tuple(task_rewards)
    fns: dict[str, tuple[Callable, float]] = {}

    def add(name: str, fn: Callable, weight: float, spec: str) -> None:
        if name in fns:
            raise ConfigError(f"reward: {name!r} is given twice (again by {spec!r}); give each reward once")
        fns[name] = (fn, weight)

    for spec in cfg.reward or []:
        target, weight = parse_spec(spec, names)
        if ":" in target:
            fname, fn = load_function(target)
            add(fname if fname not in fns else target, fn, weight, spec)
        elif target in BUILTINS:
            for name, fn in _builtin(target, cfg, task):
                add(name, fn, weight, spec)
        elif target in task_rewards:
            add(target, task_rewards[target], weight, spec)
        else:
            raise _unknown(target, task)
    if not cfg.reward:
        for name, fn in task_rewards.items():
            add(name, fn, 1.0, "the task's rewards")

    if cfg.reward_model:
        from .reward_model import RewardModel
        if device is None:
            from .policy import pick_device
            device = pick_device(cfg.device)
        add("reward_model", RewardModel(cfg.reward_model, device, cfg.reward_model_batch_size),
            cfg.reward_model_weight, "--reward-model")
    if cfg.overlong_penalty and "overlong" not in fns:
        add("overlong", overlong_reward(cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty_factor),
            1.0, "--overlong-penalty")
    if cfg.format_regex and not any(getattr(fn, "pattern", None) == cfg.format_regex for fn, _ in fns.values()):
        warnings.warn("format_regex is set but no `format` reward uses it; add --reward format[:WEIGHT]",
                      stacklevel=2)
    if not fns:
        raise ConfigError(f"reward: no reward function: task {getattr(task, 'name', '?')!r} has none of its own; "
                          "give --reward or --reward-model")
    return fns
