"""`grpo.GRPOTrainer`: TRL 1.16's GRPOTrainer interface over grpo's trainer, so that a TRL script
runs after changing its import line. What maps and what does not: docs/coming-from-trl.md.

    from grpo import GRPOConfig, GRPOTrainer        # was: from trl import GRPOConfig, GRPOTrainer
    trainer = GRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=[accuracy, fmt],
                          args=GRPOConfig(output_dir="out", num_generations=8), train_dataset=ds,
                          peft_config=LoraConfig(r=16))
    trainer.train()
    trainer.save_model()

The trainer loads the model (when given a name), maps GRPOConfig onto grpo's settings
(trl_config.py), wraps the reward functions so they are called with TRL's keywords and formats
(rewards/trl_style.py), and bridges TRL-style callbacks (transformers.TrainerCallback) onto grpo's
(train/inputs.py): `state.global_step` counts optimizer steps as TRL does.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from ..config import ConfigError
from ..rewards.trl_style import TRLStyle
from .trl_config import GRPOConfig, Plan, to_settings

# grpo metric -> TRL's name for the same figure (log_history and on_log carry both)
TRL_NAMES = {
    "lr": "learning_rate", "reward/mean": "reward", "reward/std": "reward_std",
    "length/mean": "completions/mean_length", "length/min": "completions/min_length",
    "length/max": "completions/max_length", "length/truncated_frac": "completions/clipped_ratio",
    "groups/zero_variance_frac": "frac_reward_zero_std", "clip/low_frac": "clip_ratio/low_mean",
    "clip/high_frac": "clip_ratio/high_mean",
}
# Arguments of TRL's GRPOTrainer that grpo does not take, and what to use instead.
UNSUPPORTED_ARGS = {
    "optimizers": "grpo builds its own AdamW and schedule: set learning_rate, weight_decay, adam_beta1/2, "
                  "lr_scheduler_type and warmup_steps in GRPOConfig",
    "quantization_config": "quantised training is not supported; load the model in full precision",
    "tools": "tool calls run in grpo environments (docs/environments.md): grpo.fit(env=YourEnvironment, ...)",
    "rollout_func": "custom rollouts run in grpo environments (docs/environments.md): grpo.fit(env=..., ...)",
    "environment_factory": "wrap the factory for grpo's trainer, where its get_reward() is the episode's reward: "
                           "grpo.fit(env=grpo.envs.trl_environment(YourFactory), ...) (docs/environments.md)",
    "reward_processing_classes": "a reward model given by path loads its own tokenizer; drop it",
}


def trl_name(key: str) -> str:
    if key in TRL_NAMES:
        return TRL_NAMES[key]
    if key.startswith("reward/") and key.count("/") == 2:           # reward/NAME/mean -> rewards/NAME/mean
        return "rewards/" + key[len("reward/"):]
    return key


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class GRPOTrainer:
    """TRL's GRPOTrainer by its arguments (TRL 1.16), training with grpo."""

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_processing_classes=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None, tools=None, rollout_func=None,
                 environment_factory=None):
        given = dict(reward_processing_classes=reward_processing_classes, quantization_config=quantization_config,
                     tools=tools, rollout_func=rollout_func, environment_factory=environment_factory)
        given["optimizers"] = None if tuple(optimizers or (None, None)) == (None, None) else optimizers
        for name, value in given.items():
            if value is not None:
                raise ConfigError(f"GRPOTrainer: {name} is not supported: {UNSUPPORTED_ARGS[name]}")
        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
        if args is None:
            args = GRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-GRPO")
        if not isinstance(args, GRPOConfig):
            raise ConfigError(f"GRPOTrainer: args must be a grpo.GRPOConfig (from grpo import GRPOConfig), got "
                              f"{type(args).__module__}.{type(args).__name__}")
        if train_dataset is None:
            raise ConfigError("GRPOTrainer: train_dataset is required (a datasets.Dataset with a 'prompt' column)")
        if isinstance(eval_dataset, dict):
            raise ConfigError("GRPOTrainer: eval_dataset as a mapping of several datasets is not supported; pass one")
        from transformers import TrainerControl, TrainerState
        self.args, self.train_dataset, self.eval_dataset = args, train_dataset, eval_dataset
        self.model_id = model if isinstance(model, str) else None
        self.model, self.processing_class = self._load(model, processing_class)
        self.lora = _lora_settings(peft_config, self.model)
        self.state, self.control = TrainerState(), TrainerControl()
        self.callbacks = [cb() if isinstance(cb, type) else cb for cb in (callbacks or [])]
        self._logged: dict[str, list[float]] = {}
        self.reward_funcs, self.reward_model = self._rewards(reward_funcs)
        self._call("on_init_end")

    # ------------------------------------------------------------------ set-up
    def _load(self, model, tokenizer):
        """The model (loaded on the CPU when named) and its tokenizer; the weights' checks, fp32 and the
        device come when training starts (train/setup.given_model)."""
        import torch

        from ..models.loading import load_model
        from ..train.setup import check_model_object, tokenizer_for
        if isinstance(model, str):
            model, tok = load_model(model, torch.device("cpu"))
            tokenizer = tokenizer if tokenizer is not None else tok
        check_model_object(model)
        tokenizer = tokenizer_for(model, tokenizer)
        if self.args.disable_dropout:
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        return model, tokenizer

    def _rewards(self, reward_funcs) -> tuple[list[tuple[str, Any, float]], str | None]:
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        funcs = [f for f in funcs if f is not None]
        if not funcs:
            raise ConfigError("GRPOTrainer: reward_funcs is required (functions, or a reward model's path)")
        weights = self.args.reward_weights or [1.0] * len(funcs)
        if len(weights) != len(funcs):
            raise ConfigError(f"GRPOConfig: reward_weights has {len(weights)} weights for {len(funcs)} reward functions")
        out, model_path = [], None
        for f, w in zip(funcs, weights):
            if isinstance(f, str):
                if model_path is not None:
                    raise ConfigError("GRPOTrainer: reward_funcs names two reward models; grpo takes one "
                                      "(--reward-model)")
                model_path, self._reward_model_weight = f, float(w)
                continue
            if not callable(f) or hasattr(f, "config"):
                raise ConfigError(f"GRPOTrainer: reward_funcs: {type(f).__name__} is not supported: give a function, "
                                  "or a reward model's path or hub id as text")
            name = getattr(f, "__name__", None) or type(f).__name__
            out.append((name, TRLStyle(f, name, state=self.state, log_metric=self._log_metric), float(w)))
        return out, model_path

    def _log_metric(self, name: str, value: float) -> None:
        self._logged.setdefault(name, []).append(float(value))

    def settings(self) -> tuple[dict[str, Any], Plan]:
        """grpo's settings for this trainer, and the step plan (trl_config.to_settings)."""
        eval_rows = len(self.eval_dataset) if self.eval_dataset is not None else 0
        s, p = to_settings(self.args, len(self.train_dataset), eval_rows, _world())
        s.update(self.lora)
        if self.reward_model:
            s.update(reward_model=self.reward_model, reward_model_weight=self._reward_model_weight)
        s.setdefault("reward_workers", 0)            # in this process, as TRL calls them (grpo_settings may say more)
        return s, p

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Train; returns transformers' TrainOutput (global_step, training_loss, metrics)."""
        from transformers.trainer_utils import TrainOutput

        from .native import fit
        if kwargs:
            raise ConfigError(f"GRPOTrainer.train: unsupported arguments {', '.join(kwargs)}")
        settings, plan = self.settings()
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else self.args.resume_from_checkpoint
        if resume:
            settings["resume"] = "latest" if resume is True else str(resume)
        if self.args.no_effect():
            print(f"GRPOConfig: no effect in grpo: {', '.join(self.args.no_effect())} (docs/coming-from-trl.md)")
        self._plan, self._t0, self._losses = plan, time.time(), []
        bridge = _Bridge(self)
        summary = fit(settings, dataset=self.train_dataset,
                             eval_dataset=self.eval_dataset if settings.get("eval_size") else None,
                             rewards={n: (fn, w) for n, fn, w in self.reward_funcs},
                             model=self.model, tokenizer=self.processing_class, callbacks=[bridge])
        self.summary = summary
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        runtime = time.time() - self._t0
        metrics = {"train_runtime": round(runtime, 4), "train_loss": loss,
                   "train_steps_per_second": round(self.state.global_step / max(runtime, 1e-9), 4),
                   "epoch": self.state.epoch}
        self.state.log_history.append({**metrics, "step": self.state.global_step})
        return TrainOutput(self.state.global_step, loss, metrics)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Held-out evaluation of the current model on `eval_dataset` (default: the trainer's): the
        mean reward and each reward function's pass rate (one greedy completion per prompt, as the
        held-out evaluations during training), prefixed `eval_`."""
        import torch

        from ..data.tasks import dataset_task
        from ..rewards import build_reward_fns
        from ..train.evaluate import evaluate
        from .native import resolve_config
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if data is None:
            raise ConfigError("GRPOTrainer.evaluate: no eval_dataset (pass one here or to the trainer)")
        settings, _ = self.settings()
        settings.update(eval_size=0, resume=None)
        cfg = resolve_config(settings, demo=False)
        task = dataset_task(cfg, data)                 # eval_size 0: every row is a "training" row of this task
        fns = build_reward_fns(cfg, task, extra=self.reward_funcs)
        try:
            device = next(self.model.parameters()).device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16)):
                result = evaluate(self.model, self.processing_class, _AllRows(task), n=len(data),
                                  batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens, reward_fns=fns,
                                  system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)
        finally:
            fns.close()
        metrics = {f"{metric_key_prefix}_{trl_name(k) if k != 'mean_reward' else 'reward'}": v
                   for k, v in result.items() if isinstance(v, (int, float))}
        self.state.log_history.append({**metrics, "step": self.state.global_step})
        self._call("on_evaluate", metrics=metrics)
        return metrics

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model (with LoRA, the adapter in peft's format) and tokenizer in `output_dir`
        (default: args.output_dir), as save_pretrained writes them."""
        out = output_dir or self.args.output_dir
        os.makedirs(out, exist_ok=True)
        self.model.save_pretrained(out)
        self.processing_class.save_pretrained(out)

    # ------------------------------------------------------------------ callbacks
    def add_callback(self, callback) -> None:
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def _call(self, event: str, **kwargs) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if callable(fn):
                result = fn(self.args, self.state, self.control, model=self.model,
                            processing_class=self.processing_class, **kwargs)
                if result is not None and hasattr(result, "should_training_stop"):
                    self.control = result

    def is_world_process_zero(self) -> bool:
        return int(os.environ.get("RANK", "0") or 0) == 0


class _AllRows:
    """A task whose held-out rows are all of its rows (GRPOTrainer.evaluate)."""

    def __init__(self, task):
        self.task, self.rewards, self.accuracy = task, task.rewards, task.accuracy

    def heldout(self, n: int) -> list[dict]:
        return [self.task.row(i, False) for i in range(min(n, self.task.train_size))]


class _Bridge:
    """grpo's callbacks (train/inputs.py) -> TRL-style callbacks, state and log history."""

    def __init__(self, trainer: GRPOTrainer):
        self.t = trainer
        p, args = trainer._plan, trainer.args
        self.per_step = p.optimizer_steps
        self.rows = max(1, len(trainer.train_dataset))
        self.prompts = p.prompts_per_step
        self.log_every = p.steps(args.logging_steps, p.max_steps) if args.logging_strategy == "steps" else 0
        self.window: list[dict] = []

    def _sync(self, step: int) -> None:
        st = self.t.state
        st.global_step = step * self.per_step
        st.epoch = step * self.prompts / self.rows

    def on_train_begin(self, info: dict) -> None:
        t, st = self.t, self.t.state
        t.model, t.processing_class = info["model"], info["tokenizer"]
        st.max_steps = t._plan.max_steps * self.per_step
        st.num_train_epochs = math.ceil(t._plan.max_steps * self.prompts / self.rows)
        st.logging_steps, st.save_steps = t.args.logging_steps, t.args.save_steps
        st.train_batch_size = t.args.per_device_train_batch_size
        self._sync(info["step"])
        t._call("on_train_begin")

    def on_step_begin(self, step: int) -> None:
        self.t._call("on_step_begin")

    def on_step_end(self, step: int, metrics: dict) -> bool:
        t = self.t
        self._sync(step)
        if metrics.get("loss") is not None:
            t._losses.append(metrics["loss"])
        self.window.append(metrics)
        t._call("on_step_end")
        first = step == 1 and t.args.logging_first_step
        if self.log_every and (step % self.log_every == 0 or first or step == t._plan.max_steps):
            logs = self._logs()
            t.state.log_history.append({**logs, "epoch": t.state.epoch, "step": t.state.global_step})
            t._call("on_log", logs=logs)
        stop = bool(t.control.should_training_stop)
        t.control.should_training_stop = False
        return stop

    def _logs(self) -> dict:
        """The window's metrics averaged (numbers only), under grpo's names and TRL's."""
        sums: dict[str, list[float]] = {}
        for m in self.window:
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    sums.setdefault(k, []).append(float(v))
        self.window = []
        logs = {}
        for k, vs in sums.items():
            v = sum(vs) / len(vs)
            logs[k] = v
            logs.setdefault(trl_name(k), v)
        for k, vs in self.t._logged.items():              # log_metric from reward functions
            logs[k] = sum(vs) / len(vs)
        self.t._logged = {}
        return logs

    def on_evaluate(self, step: int, when: str, result: dict) -> None:
        metrics = {f"eval_{trl_name(k) if k != 'mean_reward' else 'reward'}": v for k, v in result.items()
                   if isinstance(v, (int, float))}
        self.t.state.log_history.append({**metrics, "epoch": self.t.state.epoch, "step": self.t.state.global_step})
        self.t._call("on_evaluate", metrics=metrics)

    def on_save(self, step: int, path) -> None:
        self._sync(step)
        self.t._call("on_save")

    def on_train_end(self, summary: dict) -> None:
        self.t._call("on_train_end")


def _lora_settings(peft_config, model) -> dict[str, Any]:
    """grpo's LoRA settings for a peft LoraConfig (rank, alpha, dropout, target modules); any
    other LoRA option set away from peft's default is refused by name."""
    if peft_config is None:
        return {}
    from peft import LoraConfig
    if not isinstance(peft_config, LoraConfig):
        raise ConfigError(f"GRPOTrainer: peft_config {type(peft_config).__name__} is not supported: grpo trains "
                          "LoRA adapters (peft.LoraConfig)")
    default = LoraConfig()
    allowed = {"r", "lora_alpha", "lora_dropout", "target_modules", "task_type", "peft_type", "base_model_name_or_path",
               "revision", "inference_mode", "auto_mapping", "peft_version"}
    for name in vars(default):
        if name in allowed or name.startswith("_"):
            continue
        if getattr(peft_config, name) != getattr(default, name):
            raise ConfigError(f"GRPOTrainer: peft_config.{name}={getattr(peft_config, name)!r} is not supported: grpo "
                              "trains plain LoRA (r, lora_alpha, lora_dropout, target_modules)")
    targets = peft_config.target_modules
    if targets is None:                 # peft's default modules for the architecture, as peft itself picks them
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULTS:
            raise ConfigError(f"GRPOTrainer: peft_config.target_modules is empty and peft has no default modules for "
                              f"model type {model_type!r}; name them (e.g. target_modules='all-linear')")
        targets = DEFAULTS[model_type]
    if not isinstance(targets, str):
        targets = ",".join(sorted(targets))
    return dict(lora_rank=peft_config.r, lora_alpha=float(peft_config.lora_alpha),
                lora_dropout=float(peft_config.lora_dropout), lora_target_modules=targets)
