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
import warnings
from typing import Callable

import torch

from ..device import pick_device
from ..config import ConfigError
from .builtins import (BUILTINS, exact_match, format_reward, math_verify, overlong_reward,  # noqa: F401
                       think_answer_format)
from .checks import Failure, RewardError, call
from .contained import Contained, WorkerPool, default_workers
from .user import load_function, parse_spec, target_of


class RewardFns(dict):
    """The run's `{name: (fn, weight)}`, plus what a failure does (`failure`: "stop" or
    "unscorable") and the worker pool of its contained functions (closed by `close`)."""
    failure: str = "stop"
    pool: WorkerPool | None = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def score(reward_fns: dict[str, tuple[Callable, float]], prompts: list[str], completions: list[str],
          columns: dict[str, list], failure: str | None = None
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weighted sum of every reward function: (total (N,), then per function: scores (N,), the
    completions it called unscorable by returning None (N,) bool, and those it failed on (N,) bool).
    A failure (the function raised, hung, ended its worker, or returned something that is not a
    number) stops the run with a RewardError when `failure` is "stop" (default: the reward set's own
    setting, else "stop"); with "unscorable" that completion scores 0, like None."""
    failure = failure or getattr(reward_fns, "failure", "stop")
    stop = failure == "stop"
    n = len(completions)
    results, pools = {}, {}
    for name, (fn, _) in reward_fns.items():          # in-process functions first, then the workers'
        if isinstance(fn, Contained):
            pools.setdefault(fn.pool, []).append(name)
        else:
            results[name] = call(name, fn, prompts, completions, columns_for(fn, columns))
            first = next((v for v in results[name] if isinstance(v, Failure)), None)
            if first is not None and stop:
                raise RewardError(first.message(hint=True))
    for pool, names in pools.items():
        results.update(pool.run([(name, prompts, completions, columns_for(reward_fns[name][0], columns))
                                 for name in names], stop_at_failure=stop))
    total = torch.zeros(n, dtype=torch.float32)
    per_fn, unscorable, failed = {}, {}, {}
    for name, (fn, weight) in reward_fns.items():
        values = results[name]
        first = next((v for v in values if isinstance(v, Failure)), None)
        if first is not None and stop:
            raise RewardError(first.message(hint=True))
        failed[name] = torch.tensor([isinstance(v, Failure) for v in values], dtype=torch.bool)
        unscorable[name] = torch.tensor([v is None for v in values], dtype=torch.bool)
        per_fn[name] = torch.tensor([v if isinstance(v, float) else 0.0 for v in values], dtype=torch.float32)
        total += weight * per_fn[name]
    return total, per_fn, unscorable, failed


IDS = "completion_ids"     # a column given only to functions that ask for it (wants_completion_ids)


def score_rows(reward_fns: dict, rows: list[dict], k: int, texts: list[str], roll, failure: str | None = None):
    """`score` of k completions of each data row (completion i of row i // k): each row's prompt and
    its other columns repeated for its completions, with the completions' lengths (for length-aware
    rewards such as overlong) and, for the functions that ask, their token ids (a rollout.Rollout)."""
    prompts = [r["prompt"] for r in rows for _ in range(k)]
    columns = {c: [r[c] for r in rows for _ in range(k)] for c in rows[0] if c != "prompt"}
    columns["completion_length"] = roll.lengths.tolist()
    if wants_ids(reward_fns):
        columns[IDS] = completion_ids(roll)
    return score(reward_fns, prompts, texts, columns, failure=failure)


def wants_ids(reward_fns: dict) -> bool:
    """Whether a function of the run takes each completion's token ids (TRL-style functions do)."""
    return any(getattr(fn, "wants_completion_ids", False) for fn, _ in reward_fns.values())


def completion_ids(roll) -> list[list[int]]:
    """Each completion's sampled token ids, its end-of-sequence token included (a rollout.Rollout)."""
    return [row[:n].tolist() for row, n in zip(roll.completion_ids.cpu(), roll.lengths.tolist())]


def columns_for(fn, columns: dict) -> dict:
    if IDS in columns and not getattr(fn, "wants_completion_ids", False):
        return {k: v for k, v in columns.items() if k != IDS}
    return columns


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


def _add_implied(cfg, fns: RewardFns, add: Callable, device) -> None:
    """The functions settings other than --reward imply: --reward-model and --overlong-penalty (and
    a warning for a format_regex no `format` reward reads)."""
    if cfg.reward_model:
        from .reward_model import RewardModel      # loads transformers' model classes: only when asked
        if device is None:
            device = pick_device(cfg.device)
        add("reward_model", RewardModel(cfg.reward_model, device, cfg.reward_model_batch_size),
            cfg.reward_model_weight, "--reward-model")
    if cfg.overlong_penalty and "overlong" not in fns:
        add("overlong", overlong_reward(cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty_factor),
            1.0, "--overlong-penalty")
    if cfg.format_regex and not any(getattr(fn, "pattern", None) == cfg.format_regex for fn, _ in fns.values()):
        warnings.warn("format_regex is set but no `format` reward uses it; add --reward format[:WEIGHT]",
                      stacklevel=3)


def build_reward_fns(cfg, task, device=None, extra=()) -> RewardFns:
    """The run's weighted reward functions, in this order: the --reward specs (default: the task's own
    rewards, weight 1, unless `extra` gives functions), then `extra`'s (name, function, weight) (functions
    handed in from Python), then --reward-model as "reward_model", then "overlong" when
    --overlong-penalty is on and no `overlong` spec was given.  Raises ConfigError on any bad spec.
    The user's own functions (module:function, file.py:function) run contained in `reward_workers`
    worker processes unless that is 0; functions handed in from Python run in this process unless
    `reward_workers` is set above 0 (then they must be importable: user.target_of); `close()` the
    result to stop the workers."""
    task_rewards = dict(getattr(task, "rewards", None) or {})
    names = tuple(BUILTINS) + tuple(task_rewards)
    fns = RewardFns()
    fns.failure = getattr(cfg, "reward_failure", "stop")
    own: dict[str, str] = {}                 # the user's functions: name -> spec target

    def add(name: str, fn: Callable, weight: float, spec: str) -> None:
        if name in fns:
            raise ConfigError(f"reward: {name!r} is given twice (again by {spec!r}); give each reward once")
        fns[name] = (fn, weight)

    for spec in cfg.reward or []:
        target, weight = parse_spec(spec, names)
        if ":" in target:
            fname, fn = load_function(target)
            name = fname if fname not in fns else target
            add(name, fn, weight, spec)
            own[name] = target
        elif target in BUILTINS:
            for name, fn in _builtin(target, cfg, task):
                add(name, fn, weight, spec)
        elif target in task_rewards:
            add(target, task_rewards[target], weight, spec)
        else:
            raise _unknown(target, task)
    if not cfg.reward and not extra:
        for name, fn in task_rewards.items():
            add(name, fn, 1.0, "the task's rewards")
    workers = getattr(cfg, "reward_workers", 0)
    for name, fn, weight in extra:
        add(name, fn, weight, f"the function {name!r}")
        if workers:                      # asked for by number: contained, found again by its module and name
            own[name] = target_of(name, fn)
    _add_implied(cfg, fns, add, device)
    if not fns:
        raise ConfigError(f"reward: no reward function: task {getattr(task, 'name', '?')!r} has none of its own; "
                          "give --reward or --reward-model")
    if own and workers != 0:
        fns.pool = WorkerPool(own, workers or default_workers(), getattr(cfg, "reward_timeout", 60.0))
        for name in own:
            fn, weight = fns[name]
            fns[name] = (Contained(fns.pool, name, fn), weight)
    return fns
