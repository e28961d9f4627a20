"""Tasks: prompts, reference answers, a train/held-out split that never overlaps, and a verifier reward.

`build_task(cfg)` picks the run's task: `--dataset` (your data, see grpo/data/datasets.py), else
`--task reasoning_gym:NAME`, else a built-in task (`arithmetic` by default).

`arithmetic` (the demo): "a+b=" with a, b in [0, 99]. The 10,000 problems are shuffled once
with a fixed seed; the first `HELDOUT` form the held-out split, the rest the training split, so
training never sees an evaluation problem whatever the run's seed. `multiplication`: "a*b=" with
a, b in [10, 99], split the same way (the calculator environment's task).

`reasoning_gym:NAME`: problems generated offline by the reasoning-gym package, scored by the
dataset's own `score_answer` (the reward named "task"); see `reasoning_gym_task` and docs/data.md.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from typing import Callable

from ..config import ConfigError
from .datasets import split_object_rows, split_rows
from .verifiers import exact_match, extract_answer


@dataclass
class Task:
    name: str
    train_size: int
    heldout_size: int
    row: Callable[[int, bool], dict]          # (index, heldout?) -> {"prompt", "answer", ...}
    rewards: dict[str, Callable] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # where the rows come from, for logs (e.g. {"heldout": ...})
    accuracy: str | None = None               # the reward whose full credit is this task's accuracy, if any

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


class _Multiplication(_Arithmetic):
    """a*b= over a, b in [10, 99]: two-digit products a small model cannot work out in its head
    (the calculator environment's task)."""

    LOW, MAX = 10, 99
    HELDOUT = 1000
    SPLIT_SEED = 20261202

    def __init__(self):
        n = (self.MAX - self.LOW + 1) ** 2
        rng = random.Random(self.SPLIT_SEED)
        self._mult = next(m for m in iter(lambda: rng.randrange(1, n), None) if _coprime(m, n))
        self._shift = rng.randrange(n)
        self._n = n

    def row(self, index: int, heldout: bool) -> dict:
        k = index if heldout else self.HELDOUT + index
        j = (k * self._mult + self._shift) % self._n
        a, b = (x + self.LOW for x in divmod(j, self.MAX - self.LOW + 1))
        return {"prompt": f"{a}*{b}=", "answer": str(a * b)}


def multiplication() -> Task:
    mu = _Multiplication()
    return Task(name="multiplication", train_size=mu._n - mu.HELDOUT, heldout_size=mu.HELDOUT, row=mu.row,
                rewards={"exact_match": exact_match}, accuracy="exact_match")


def _coprime(a: int, b: int) -> bool:
    while b:
        a, b = b, a % b
    return a == 1


def arithmetic() -> Task:
    ar = _Arithmetic()
    return Task(name="arithmetic", train_size=ar._n - ar.HELDOUT, heldout_size=ar.HELDOUT, row=ar.row,
                rewards={"exact_match": exact_match}, accuracy="exact_match")


TASKS: dict[str, Callable[[], Task]] = {"arithmetic": arithmetic, "multiplication": multiplication}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]()


# ------------------------------------------------------------------ reasoning-gym
REASONING_GYM_PREFIX = "reasoning_gym:"
RG_SPLIT_SEED = 20250724        # fixed: the held-out problems are the same whatever the run's seed
RG_SEED_STRIDE = 1_000_003      # seeds of the held-out set and of each training set lie this far apart
RG_TRAIN_POOL = 5000            # training problems (generated one by one, when first drawn)
RG_MIN_HELDOUT = 200            # held-out problems: max(eval_size, this)
RG_ALTERNATES = 8               # a training problem equal to a held-out one is replaced, at most this often
RG_EXAMPLES = ("basic_arithmetic", "countdown", "gsm_symbolic", "chain_sum", "leg_counting", "propositional_logic",
               "word_sorting", "spell_backward")


def _reasoning_gym():
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise ConfigError("task reasoning_gym:NAME needs the reasoning-gym package; install it with "
                          "`pip install reasoning-gym`") from None
    return reasoning_gym, DATASETS


class _ReasoningGym:
    """Held-out problems: items 0..H-1 of the dataset at seed RG_SPLIT_SEED, generated together on first use.
    Training problem i: item i of the dataset at seed RG_SPLIT_SEED + RG_SEED_STRIDE, generated when first
    drawn; if its question text is among the held-out questions, item i of the dataset at the next seed
    (+ RG_SEED_STRIDE again) replaces it, and so on."""

    def __init__(self, name: str, heldout_size: int, train_size: int, seed: int = RG_SPLIT_SEED,
                 config: dict | None = None):
        self.rg, registry = _reasoning_gym()
        if name not in registry:
            near = difflib.get_close_matches(name, list(registry), n=3)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            some = [n for n in RG_EXAMPLES if n in registry] or sorted(registry)[:8]
            raise ConfigError(f"task: unknown reasoning-gym dataset {name!r}{hint}; it has {len(registry)} "
                              f"datasets, among them {', '.join(some)} (all: reasoning_gym.factory.DATASETS)")
        self.config = _checked_config(name, registry[name], config or {})
        self.name, self.heldout_size, self.train_size, self.seed = name, heldout_size, train_size, seed
        self._sets: dict[int, object] = {}
        self._held: list[dict] | None = None
        self._held_questions: set[str] = set()
        self._train: dict[int, dict] = {}
        self.scorer = self._dataset(0).score_answer

    def _dataset(self, k: int):
        """k = 0: the held-out set; k >= 1: the k-th training set."""
        if k not in self._sets:
            size = self.heldout_size if k == 0 else self.train_size
            try:
                self._sets[k] = self.rg.create_dataset(self.name, seed=self.seed + k * RG_SEED_STRIDE, size=size,
                                                       **self.config)
            except Exception as e:
                given = f" with task_config {self.config}" if self.config else ""
                raise ConfigError(f"task: reasoning-gym could not create dataset {self.name!r}{given} "
                                  f"({type(e).__name__}: {e})") from None
        return self._sets[k]

    def _heldout(self) -> list[dict]:
        if self._held is None:
            ds = self._dataset(0)
            self._held = [ds[i] for i in range(self.heldout_size)]
            self._held_questions = {e["question"] for e in self._held}
        return self._held

    def entry(self, index: int, heldout: bool) -> dict:
        held = self._heldout()
        if heldout:
            return held[index]
        if index not in self._train:
            for k in range(1, RG_ALTERNATES + 1):
                e = self._dataset(k)[index]
                if e["question"] not in self._held_questions:
                    self._train[index] = e
                    break
            else:
                raise ConfigError(f"task reasoning_gym:{self.name}: training problem {index} and its "
                                  f"{RG_ALTERNATES - 1} replacements all appear among the {self.heldout_size} "
                                  "held-out problems; this dataset has too few distinct problems for that split")
        return self._train[index]

    def row(self, index: int, heldout: bool) -> dict:
        e = self.entry(index, heldout)
        return {"prompt": e["question"], "answer": e["answer"], "rg_entry": e}

    def reward(self, prompts: list, completions: list[str], rg_entry: list[dict], **_) -> list[float]:
        """The dataset's own score_answer on the extracted answer (0.0 when the scorer raises)."""
        out = []
        for c, e in zip(completions, rg_entry):
            try:
                out.append(float(self.scorer(answer=extract_answer(c), entry=e)))
            except Exception:
                out.append(0.0)
        return out


def _checked_config(name: str, entry, config: dict) -> dict:
    """`config` if every key is a setting of the dataset's config class (seed and size are the
    task's own), else a ConfigError naming the unknown keys and the accepted ones."""
    import dataclasses
    cls = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return config
    accepted = [f.name for f in dataclasses.fields(cls) if f.name not in ("seed", "size")]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, accepted, n=1))
                 else repr(k) for k in unknown]
        raise ConfigError(f"task_config: reasoning-gym dataset {name!r} has no setting {', '.join(hints)}; "
                          f"it accepts {', '.join(accepted)}")
    return config


def reasoning_gym_task(name: str, heldout_size: int = RG_MIN_HELDOUT, train_size: int = RG_TRAIN_POOL,
                       seed: int = RG_SPLIT_SEED, config: dict | None = None) -> Task:
    """Task `reasoning_gym:NAME`. Rows: {"prompt": question, "answer": reference answer, "rg_entry": the
    dataset entry}; reward "task": the dataset's score_answer(extract_answer(completion), entry). `config`:
    keyword arguments of the dataset's config (task_config)."""
    rg = _ReasoningGym(name, heldout_size, train_size, seed, config)
    task = Task(name=REASONING_GYM_PREFIX + name, train_size=train_size, heldout_size=heldout_size, row=rg.row,
                rewards={"task": rg.reward}, accuracy="task",
                info={"heldout": f"{heldout_size} problems at seed {seed}",
                      "train": f"{train_size} problems at seed {seed + RG_SEED_STRIDE}, none equal to a held-out one"})
    return task


def build_task(cfg) -> Task:
    """The run's prompts, held-out split and default rewards: --dataset, else --task, else arithmetic."""
    if cfg.dataset:
        return dataset_task(cfg)
    name = cfg.task or "arithmetic"
    if name.startswith(REASONING_GYM_PREFIX):
        rg_name = name[len(REASONING_GYM_PREFIX):].strip()
        if not rg_name:
            raise ConfigError("task: reasoning_gym: needs a dataset name, e.g. reasoning_gym:countdown")
        return reasoning_gym_task(rg_name, heldout_size=max(cfg.eval_size, RG_MIN_HELDOUT), config=cfg.task_config)
    if cfg.task_config:
        raise ConfigError(f"task_config: task {name!r} takes no configuration (only reasoning_gym:NAME does)")
    if name not in TASKS:
        near = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"task: unknown task {name!r}{hint}; built-in tasks are {', '.join(TASKS)}, or "
                          "reasoning_gym:NAME (e.g. reasoning_gym:countdown)")
    return get_task(name)


def dataset_task(cfg, data=None, eval_data=None) -> Task:
    """The Task of `cfg.dataset` (or of `data`, a dataset handed in from Python, with `eval_data` its
    held-out split): rows as read, held-out rows as grpo/data/datasets.py describes, and
    `exact_match` as the default reward when the data has an answer column (none otherwise)."""
    train, held, info = split_rows(cfg) if data is None else split_object_rows(cfg, data, eval_data)

    def row(index: int, heldout: bool) -> dict:
        return dict((held if heldout else train)[index])

    rewards = {"exact_match": exact_match} if "answer" in train[0] else {}
    return Task(name=cfg.dataset or "train_dataset", train_size=len(train), heldout_size=len(held), row=row, rewards=rewards,
                info=info)
