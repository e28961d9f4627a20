"""`grpo.fit`: settings and Python objects checked, then the training loop (grpo/train)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from ..config import ConfigError, TrainConfig, check_known, coerce, load_yaml, resolve, validate
from ..train.inputs import EVENTS, Inputs


def fit(config: TrainConfig | dict | str | None = None, *, dataset=None, eval_dataset=None, rewards=None,
        model=None, tokenizer=None, env=None, callbacks=(), log: Callable = print, **settings) -> dict:
    """Train with GRPO; the run's summary (summary.json: output folder, held-out results, steps, ...).

    config:       a TrainConfig, a mapping of settings, or a YAML file's path; `settings` keywords win.
    dataset:      a `datasets.Dataset`, a list of rows, a mapping of columns, a pandas DataFrame, or a
                  path / hub name (as --dataset). A `prompt` column (text or chat messages, see
                  prompt_column); every other column reaches the reward functions by its name.
    eval_dataset: held-out rows (same forms); default: the last eval_size rows of `dataset`.
    rewards:      a list of reward functions f(prompts, completions, **columns) -> one float (or None)
                  per completion, (function, weight) pairs, names or specs as --reward takes them
                  ("exact_match", "path.py:fn:0.5"), or a mapping name -> function or (function, weight).
    model:        a model folder, .gguf file or hub id (as --model), or a loaded causal LM; `tokenizer`
                  with it (default: loaded from the model's name_or_path).
    env:          an environment class (docs/environments.md), or a spec as --env takes it.
    callbacks:    objects with any of on_train_begin, on_step_end, on_evaluate, on_save, on_train_end
                  (train/inputs.py); on_step_end returning True stops the run after that step.
    """
    from ..train import train as run_training
    cfg, inputs = build_inputs(config, dataset=dataset, eval_dataset=eval_dataset, rewards=rewards, model=model,
                               tokenizer=tokenizer, env=env, callbacks=callbacks, **settings)
    return run_training(cfg, log=log, inputs=inputs)


def resolve_config(config=None, demo: bool | None = None, **settings) -> TrainConfig:
    """The run's TrainConfig from `config` (TrainConfig, mapping, YAML path or None) and keyword settings."""
    if isinstance(config, TrainConfig):
        if not settings:
            return config                           # resolved and validated already
        values = {}
        for k, v in settings.items():
            check_known(k)
            values[k] = coerce(k, v, where="keyword")
        return validate(dataclasses.replace(config, **values))
    if isinstance(config, str):
        return resolve(load_yaml(config), settings, yaml_path=config, demo=demo)
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"config: expected a TrainConfig, a mapping of settings or a YAML file's path, got "
                          f"{type(config).__name__}")
    return resolve(dict(config or {}), settings, demo=demo)


def build_inputs(config=None, *, dataset=None, eval_dataset=None, rewards=None, model=None, tokenizer=None,
                 env=None, callbacks=(), **settings) -> tuple[TrainConfig, Inputs]:
    """(the resolved settings, the Python objects) of a `fit` call, every argument checked."""
    inputs = Inputs(tokenizer=tokenizer)
    if isinstance(model, str):
        settings["model"] = model
    elif model is not None:
        inputs.model = model
        if isinstance(getattr(model, "name_or_path", None), str) and "model" not in settings:
            settings["model"] = model.name_or_path        # recorded in config.yaml; the object is what trains
    if isinstance(dataset, str):
        settings["dataset"] = dataset
        if isinstance(eval_dataset, str):
            settings["eval_split"] = eval_dataset
    if isinstance(env, str):
        settings["env"] = env
    specs, functions = _rewards(rewards)
    if specs:
        settings["reward"] = list(settings.get("reward") or []) + specs
    cfg = resolve_config(config, demo=False if inputs.model is not None else None, **settings)

    if dataset is not None and not isinstance(dataset, str):
        from ..data.tasks import dataset_task
        inputs.task = dataset_task(cfg, dataset, eval_dataset)
    elif eval_dataset is not None and not isinstance(eval_dataset, str):
        raise ConfigError("eval_dataset: given as an object, it needs `dataset` given as an object too")
    if env is not None and not isinstance(env, str):
        from ..envs.load import check_env
        inputs.env = check_env(getattr(env, "__name__", type(env).__name__), env)
    inputs.rewards = functions
    inputs.callbacks = _callbacks(callbacks)
    return cfg, inputs


def _rewards(rewards) -> tuple[list[str], list[tuple[str, Callable, float]]]:
    """(specs for --reward, (name, function, weight) of the functions handed in)."""
    from ..rewards.user import check_signature
    if rewards is None:
        return [], []
    if callable(rewards) or isinstance(rewards, (str, tuple)):
        rewards = [rewards]
    items = list(rewards.items()) if isinstance(rewards, dict) else [(None, r) for r in rewards]
    specs, functions = [], []
    for name, item in items:
        fn, weight = item if isinstance(item, tuple) and len(item) == 2 else (item, 1.0)
        if isinstance(fn, str) and name is None:          # a name or spec, as --reward takes it
            specs.append(fn if weight == 1.0 else f"{fn}:{weight}")
            continue
        if not callable(fn):
            raise ConfigError(f"rewards: expected a function, a (function, weight) pair or a reward name, got "
                              f"{type(fn).__name__} {fn!r:.60}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"rewards: the weight of {name or getattr(fn, '__name__', fn)!r} must be a number, "
                              f"got {weight!r}")
        name = name or getattr(fn, "__name__", None) or type(fn).__name__
        check_signature(name, name, fn)
        functions.append((name, fn, float(weight)))
    return specs, functions


def _callbacks(callbacks) -> list:
    out = []
    for cb in callbacks or ():
        if inspect.isclass(cb):
            cb = cb()
        if not any(callable(getattr(cb, e, None)) for e in EVENTS):
            raise ConfigError(f"callbacks: {type(cb).__name__} has none of the methods a callback is called by "
                              f"({', '.join(EVENTS)})")
        out.append(cb)
    return out
