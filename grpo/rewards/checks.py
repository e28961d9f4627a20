"""Calling one reward function and checking what it gives back, the same way in this process and
in a reward worker (contained.py): one number or None per completion, and every way that can go
wrong as a `Failure` that names the function and the sample. Torch-free, so that a worker process
stays small."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

from ..errors import RewardError  # noqa: F401  (re-exported)


@dataclass
class Failure:
    """One completion a reward function could not score: what happened (`what`, a phrase such as
    "raised ValueError: boom" or "timed out after 5 s"), and where. `batch` > 1: the failure was
    the batch call's (a wrong number of values, or an error no completion alone reproduces)."""
    name: str
    what: str
    index: int
    prompt: object = None
    completion: str = ""
    batch: int = 1

    def message(self, hint: bool = False) -> str:
        """The one-line account; `hint`: with the setting that scores such a completion None instead."""
        text = self._account()
        return text + ("; --reward-failure unscorable scores such a completion None and goes on" if hint else "")

    def _account(self) -> str:
        sample = f"prompt {shorten(self.prompt)}, completion {shorten(self.completion)}"
        if self.batch > 1:
            return f"reward function {self.name!r} {self.what} (the batch's first sample: {sample})"
        return f"reward function {self.name!r} {self.what} on sample {self.index} ({sample})"


def shorten(text, limit: int = 80) -> str:
    """repr() of a prompt or completion, cut to about `limit` characters for one-line messages."""
    if isinstance(text, list):             # chat messages: the last message's content says most
        text = text[-1].get("content", "") if text and isinstance(text[-1], dict) else str(text)
    text = str(text)
    if len(text) > limit:
        text = text[:limit - 15] + " ... " + text[-10:]
    return repr(text)


def check_value(v) -> tuple[float | None, str | None]:
    """(the value as a float or None, None) or (None, what is wrong with it). Python numbers, numpy
    scalars and 0-d tensors or arrays are numbers; bools count as 0/1."""
    if v is None:
        return None, None
    number = isinstance(v, numbers.Real) or (hasattr(v, "item") and getattr(v, "ndim", None) == 0)
    if not number or isinstance(v, str):
        return None, f"returned {_short_repr(v)} (expected a finite number or None)"
    f = float(v)
    if not math.isfinite(f):
        return None, f"returned {f!r} (expected a finite number or None)"
    return f, None


def _short_repr(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:50] + " ... " + r[-5:]


def values_of(name: str, fn: Callable, prompts: list, completions: list, columns: dict) -> list:
    """One call of `fn` on a batch: per completion, a float, None, or a Failure. Raises
    BatchFailed when the call itself raises or returns the wrong number of values."""
    n = len(completions)
    try:
        values = list(fn(prompts, completions, **columns))
    except Exception as e:
        raise BatchFailed(f"raised {type(e).__name__}: {e}") from e
    if len(values) != n:
        raise BatchFailed(f"returned {len(values)} values for {n} completion{'s' if n != 1 else ''}")
    out = []
    for i, v in enumerate(values):
        value, wrong = check_value(v)
        out.append(Failure(name, wrong, i, prompts[i], completions[i]) if wrong else value)
    return out


class BatchFailed(Exception):
    """A reward function's batch call raised, or returned the wrong number of values."""


def call(name: str, fn: Callable, prompts: list, completions: list, columns: dict) -> list:
    """Score a batch in this process: per completion, a float, None or a Failure. A call that
    raises is made again one completion at a time, so each failure names its own sample and the
    others keep their scores; a wrong number of values fails the whole batch."""
    n = len(completions)
    try:
        return values_of(name, fn, prompts, completions, columns)
    except BatchFailed as e:
        batch_error = e
    if n > 1 and not str(batch_error).startswith("returned"):
        out = []
        for i in range(n):
            try:
                out += values_of(name, fn, prompts[i:i + 1], completions[i:i + 1],
                                 {k: v[i:i + 1] for k, v in columns.items()})
            except BatchFailed as e:
                out.append(Failure(name, str(e), i, prompts[i], completions[i]))
            if isinstance(out[-1], Failure):
                out[-1].index = i
        if any(isinstance(v, Failure) for v in out):
            return out
        batch_error = BatchFailed(f"{batch_error} on a batch of {n} completions, though on none of them alone")
    return [Failure(name, str(batch_error), i, prompts[i], completions[i], batch=n) for i in range(n)]
