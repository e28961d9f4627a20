"""Built-in verifiable tasks: prompts, reference answers, a train/held-out split that never
overlaps, and a verifier reward.

`arithmetic` (the demo): "a+b=" with a, b in [0, 99]. The 10,000 problems are shuffled once
with a fixed seed; the first `HELDOUT` form the held-out split, the rest the training split, so
training never sees an evaluation problem whatever the run's seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from .config import ConfigError


def exact_match(prompts: list[str], completions: list[str], answer: list[str], **_) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, equals the answer."""
    return [1.0 if c.strip() == a.strip() else 0.0 for c, a in zip(completions, answer)]


@dataclass
class Task:
    name: str
    train_size: int
    heldout_size: int
    row: Callable[[int, bool], dict]          # (index, heldout?) -> {"prompt", "answer", ...}
    rewards: dict[str, Callable] = field(default_factory=dict)

    def sample_train(self, rng: random.Random, n: int) -> list[dict]:
        return [self.row(rng.randrange(self.train_size), False) for _ in range(n)]

    def heldout(self, n: int) -> list[dict]:
        if n > self.heldout_size:
            raise ValueError(f"task {self.name!r} has {self.heldout_size} held-out problems; {n} requested")
        return [self.row(i, True) for i in range(n)]

    def train_rows(self, n: int, seed: int = 0) -> list[dict]:
        return self.sample_train(random.Random(seed), n)


class _Arithmetic:
    """a+b= over a, b in [0, MAX]; problems indexed through one fixed permutation."""

    MAX = 99
    HELDOUT = 2000
    SPLIT_SEED = 20250723

    def __init__(self):
        n = (self.MAX + 1) ** 2
        # a fixed affine permutation of range(n): cheap, and the same on every machine
        rng = random.Random(self.SPLIT_SEED)
        self._mult = next(m for m in iter(lambda: rng.randrange(1, n), None) if _coprime(m, n))
        self._shift = rng.randrange(n)
        self._n = n

    def problem(self, k: int) -> tuple[int, int]:
        j = (k * self._mult + self._shift) % self._n
        return divmod(j, self.MAX + 1)

    def row(self, index: int, heldout: bool) -> dict:
        k = index if heldout else self.HELDOUT + index
        a, b = self.problem(k)
        return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def _coprime(a: int, b: int) -> bool:
    while b:
        a, b = b, a % b
    return a == 1


def arithmetic() -> Task:
    ar = _Arithmetic()
    return Task(name="arithmetic", train_size=ar._n - ar.HELDOUT, heldout_size=ar.HELDOUT, row=ar.row,
                rewards={"exact_match": exact_match})


TASKS: dict[str, Callable[[], Task]] = {"arithmetic": arithmetic}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]()


def build_task(cfg) -> Task:
    """The run's prompts, held-out split and default rewards: --dataset, else --task, else arithmetic."""
    return get_task(cfg.task or "arithmetic")
