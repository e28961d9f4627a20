"""`grpo.GRPOConfig`: TRL 1.16's GRPOConfig by its field names and defaults, mapped onto grpo's
settings (TrainConfig) by `to_settings`. The table of every mapping is docs/coming-from-trl.md.

Fields come in four kinds:
  * mapped: a TRL field with a grpo counterpart (learning_rate -> lr, num_generations -> group_size,
    loss_type -> loss_aggregation and policy_loss, ...), TRL's default kept where it differs from ours;
  * no effect here: housekeeping of TRL's data loader, distributed backend and console
    (dataloader_num_workers, ddp_backend, log_level, ...), accepted and named once in the log when set;
  * unsupported: a field whose value would change the training and that grpo does not do (use_vllm,
    delta, loss_type "vespo", push_to_hub, ...): set to anything but TRL's default, it is one
    ConfigError naming it and what to use instead;
  * TrainingArguments' other fields (read from the installed transformers): unsupported the same way.

`grpo_settings={...}` takes grpo's own settings (TrainConfig's names), applied last.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from ..config import ConfigError, check_known

# GRPOConfig's own fields in TRL 1.16 and their defaults, and the TrainingArguments defaults it changes.
TRL_FIELDS: dict[str, Any] = dict(
    model_init_kwargs=None, trust_remote_code=False, router_aux_loss_coef=None, disable_dropout=False,
    cast_lm_head_to_fp32=False, num_generations=8, num_generations_eval=None, max_completion_length=512,
    ds3_gather_for_generation=True, shuffle_dataset=True, pad_to_multiple_of="auto", generation_batch_size=None,
    steps_per_generation=None, temperature=1.0, top_p=1.0, top_k=0, min_p=None, generation_kwargs=None,
    chat_template_kwargs=None, repetition_penalty=1.0, cache_implementation=None, use_vllm=False,
    vllm_mode="colocate", vllm_model_impl="vllm", vllm_enable_sleep_mode=False, vllm_structured_outputs_regex=None,
    vllm_server_base_url=None, vllm_server_host="0.0.0.0", vllm_server_port=8000, vllm_server_timeout=240.0,
    vllm_group_port=51216, vllm_gpu_memory_utilization=0.3, vllm_max_model_length=None,
    vllm_tensor_parallel_size=1, beta=0.0, num_iterations=1, epsilon=0.2, delta=None, epsilon_high=None,
    sapo_temperature_neg=1.05, sapo_temperature_pos=1.0, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
    vespo_lambda_neg=2.0, importance_sampling_level="token", reward_weights=None,
    multi_objective_aggregation="sum_then_normalize", scale_rewards="group", loss_type="dapo",
    mask_truncated_completions=False, sync_ref_model=False, ref_model_mixup_alpha=0.6, ref_model_sync_steps=512,
    top_entropy_quantile=1.0, entropy_coef=0.0, use_adaptive_entropy=False, entropy_coef_min=0.0,
    entropy_coef_max=1.0, entropy_coef_delta=0.005, entropy_target=0.2, max_tool_calling_iterations=None,
    vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="sequence_mask",
    vllm_importance_sampling_clip_max=3.0, vllm_importance_sampling_clip_min=None, off_policy_mask_threshold=None,
    use_bias_correction_kl=True, log_completions=False, log_multimodal=True, num_completions_to_print=None,
    log_unique_prompts=False, log_completions_hub_repo=None, use_transformers_continuous_batching=False,
    transformers_continuous_batching_config=None, use_transformers_paged=False, vllm_importance_sampling_cap=None,
    # TrainingArguments fields whose default GRPOConfig changes
    learning_rate=1e-6, bf16=None, gradient_checkpointing=True, logging_steps=10, remove_unused_columns=False,
    include_for_metrics=[],
)
# Fields of earlier TRL versions that scripts still set; TRL 1.16 has none of them.
FORMER_FIELDS = {
    "max_prompt_length": "TRL 1.16 has no max_prompt_length either: prompts are used whole; drop it (and "
                         "shorten long prompts in the dataset)",
    "use_liger_loss": "grpo's log-probs already go through its own fused LM head (fused_head); drop it",
    "wandb_log_unique_prompts": "drop it (wandb logging of unique prompts is not done here)",
}

# Fields grpo maps (read by to_settings).
MAPPED = {
    "output_dir", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "steps_per_generation", "generation_batch_size", "num_generations",
    "num_iterations", "seed", "bf16", "fp16", "gradient_checkpointing", "logging_steps", "logging_first_step",
    "logging_strategy", "save_strategy", "save_steps", "save_total_limit", "report_to", "run_name", "project",
    "eval_strategy", "eval_steps", "per_device_eval_batch_size", "resume_from_checkpoint", "use_cpu",
    "max_completion_length", "temperature", "top_p", "top_k", "beta", "epsilon", "epsilon_high",
    "sapo_temperature_pos", "sapo_temperature_neg", "importance_sampling_level", "reward_weights",
    "multi_objective_aggregation", "scale_rewards", "loss_type", "mask_truncated_completions", "sync_ref_model",
    "ref_model_mixup_alpha", "ref_model_sync_steps", "top_entropy_quantile", "entropy_coef",
    "use_bias_correction_kl", "log_completions", "disable_dropout", "ddp_bucket_cap_mb", "optim",
    "gradient_checkpointing_kwargs",
}
# Accepted, with no effect on a grpo run (data loading, distributed backend, console and hub housekeeping).
NO_EFFECT = {
    "remove_unused_columns", "include_for_metrics", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_drop_last", "dataloader_in_order",
    "dataloader_multiprocessing_context", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters",
    "ddp_broadcast_buffers", "ddp_static_graph", "local_rank", "log_level", "log_level_replica", "log_on_each_node",
    "logging_nan_inf_filter", "disable_tqdm", "do_train", "do_eval", "do_predict", "skip_memory_metrics",
    "label_names", "length_column_name", "save_on_each_node", "save_only_model", "num_completions_to_print",
    "log_multimodal", "log_unique_prompts", "ds3_gather_for_generation", "pad_to_multiple_of", "shuffle_dataset",
    "average_tokens_across_devices", "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object",
    "batch_eval_metrics", "prediction_loss_only", "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap", "restore_callback_states_from_checkpoint", "ignore_data_skip",
    "trust_remote_code", "cache_implementation",
}
# Fields that would change the run in a way grpo does not: what to do instead.
UNSUPPORTED = {
    "use_vllm": "grpo samples in its own process with its own engine (engine static on a GPU: CUDA graphs over a "
                "static key/value buffer); drop use_vllm",
    "use_transformers_paged": "grpo samples with its own engine (engine static on a GPU); drop it",
    "use_transformers_continuous_batching": "grpo samples with its own engine (engine static on a GPU); drop it",
    "transformers_continuous_batching_config": "grpo samples with its own engine; drop it",
    "delta": "the two-sided clip is not implemented; policy_loss dual_clip (grpo_settings) bounds negative "
             "advantages instead",
    "vespo_k_pos": "loss_type vespo is not implemented", "vespo_lambda_pos": "loss_type vespo is not implemented",
    "vespo_k_neg": "loss_type vespo is not implemented", "vespo_lambda_neg": "loss_type vespo is not implemented",
    "off_policy_mask_threshold": "off-policy sequence masking is not implemented; rollout_correction (grpo_settings) "
                                 "corrects sampler mismatch",
    "use_adaptive_entropy": "adaptive entropy is not implemented; entropy_coef gives a fixed bonus",
    "entropy_coef_min": "adaptive entropy is not implemented", "entropy_coef_max": "adaptive entropy is not implemented",
    "entropy_coef_delta": "adaptive entropy is not implemented", "entropy_target": "adaptive entropy is not implemented",
    "num_generations_eval": "held-out evaluation scores one completion per prompt; drop it",
    "min_p": "min-p sampling is not implemented; use top_p or top_k",
    "repetition_penalty": "a repetition penalty is not implemented (it would also bias the log-probs the loss uses)",
    "generation_kwargs": "pass the sampling settings as fields (temperature, top_p, top_k)",
    "chat_template_kwargs": "prompts go through the tokenizer's chat template as is; render them yourself if they "
                            "need template arguments",
    "model_init_kwargs": "load the model yourself (AutoModelForCausalLM.from_pretrained(..., your arguments)) and "
                         "pass it as model=",
    "cast_lm_head_to_fp32": "the LM head's log-probs are computed from fp32 weights already (fused_head)",
    "router_aux_loss_coef": "mixture-of-experts router losses are not added",
    "max_tool_calling_iterations": "tools run in grpo environments (env=..., docs/environments.md), with "
                                   "env_max_turns in grpo_settings",
    "log_completions_hub_repo": "completions are written to completions.jsonl in the output folder; push it "
                                "yourself",
    "push_to_hub": "push the saved model yourself (huggingface_hub.upload_folder)",
    "torch_compile": "grpo's GPU engine captures decoding in CUDA graphs; compiling the update is not supported",
    "deepspeed": "use grpo's own sharding: fsdp in grpo_settings, under torchrun",
    "fsdp": "use grpo's own sharding: grpo_settings={'fsdp': True}, under torchrun",
    "data_seed": "one seed drives the data order and sampling: set seed",
    "tf32": "not switched by grpo; set torch.backends.cuda.matmul.allow_tf32 yourself",
    "label_smoothing_factor": "not a GRPO setting",
    "neftune_noise_alpha": "not a GRPO setting",
    "eval_on_start": "grpo evaluates before training whenever it evaluates during it (eval_strategy)",
    "load_best_model_at_end": "the last model is the one saved",
    "metric_for_best_model": "the last model is the one saved",
}
LOSS_TYPES = {   # TRL loss_type -> (loss_aggregation, policy_loss)
    "grpo": ("seq_mean_token_mean", "clip"), "bnpo": ("token_mean", "clip"),
    "dr_grpo": ("seq_mean_token_sum_norm", "clip"), "dapo": ("token_mean", "clip"),
    "cispo": ("token_mean", "cispo"), "sapo": ("seq_mean_token_mean", "sapo"),
}
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


def training_arguments_defaults() -> dict[str, Any]:
    """TrainingArguments' fields and defaults in the installed transformers (GRPOConfig's base)."""
    from transformers import TrainingArguments
    out = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


def all_defaults() -> dict[str, Any]:
    return {**training_arguments_defaults(), **TRL_FIELDS}


class GRPOConfig:
    """TRL's GRPOConfig by its field names and defaults (TRL 1.16), for grpo.GRPOTrainer.
    `grpo_settings`: grpo's own settings (TrainConfig names), applied after the mapped ones."""

    def __init__(self, output_dir: str | None = None, *, grpo_settings: dict | None = None, **fields):
        defaults = all_defaults()
        for name in fields:
            if name in FORMER_FIELDS:
                raise ConfigError(f"GRPOConfig: {name}: {FORMER_FIELDS[name]}")
            if name not in defaults:
                near = difflib.get_close_matches(name, list(defaults), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"GRPOConfig: unknown field {name!r}{hint}; TRL 1.16's GRPOConfig has no such "
                                  "field (grpo's own settings go in grpo_settings={...})")
        self._given = set(fields) | ({"output_dir"} if output_dir is not None else set())
        for name, value in defaults.items():
            setattr(self, name, fields.get(name, value))
        self.output_dir = output_dir if output_dir is not None else (defaults.get("output_dir") or "trainer_output")
        self.grpo_settings = dict(grpo_settings or {})
        for name in self.grpo_settings:
            check_known(name, where="GRPOConfig: grpo_settings")
        self.check()

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={getattr(self, k)!r}" for k in sorted(self._given))
        return f"GRPOConfig({given})"

    def changed(self) -> dict[str, Any]:
        """Fields whose value differs from TRL's default."""
        defaults = all_defaults()
        return {k: getattr(self, k) for k in defaults if k != "output_dir" and _differs(getattr(self, k), defaults[k])}

    def check(self) -> None:
        """A ConfigError for the first field set to something grpo does not do."""
        for name, value in self.changed().items():
            if name in MAPPED or name in NO_EFFECT:
                continue
            why = UNSUPPORTED.get(name, "grpo has no counterpart (docs/coming-from-trl.md lists what is mapped); "
                                        "remove it")
            raise ConfigError(f"GRPOConfig: {name}={value!r} is not supported: {why}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"GRPOConfig: loss_type={self.loss_type!r} is not supported: grpo maps "
                              f"{', '.join(LOSS_TYPES)}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ConfigError(f"GRPOConfig: importance_sampling_level must be 'token' or 'sequence', got "
                              f"{self.importance_sampling_level!r}")
        if self.fp16:
            raise ConfigError("GRPOConfig: fp16=True is not supported: grpo runs bf16 autocast (bf16=True) over fp32 "
                              "weights")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ConfigError(f"GRPOConfig: lr_scheduler_type={self.lr_scheduler_type!r} is not supported: grpo has "
                              f"{', '.join(SCHEDULES)}")
        if self.optim not in ("adamw_torch_fused", "adamw_torch"):
            raise ConfigError(f"GRPOConfig: optim={self.optim!r} is not supported: grpo trains with torch's AdamW "
                              "(adamw_torch_fused)")
        if not math.isclose(self.adam_epsilon, 1e-8):
            raise ConfigError(f"GRPOConfig: adam_epsilon={self.adam_epsilon!r} is not supported: grpo's AdamW uses "
                              "1e-8")
        if self.save_strategy not in ("steps", "no", "epoch"):
            raise ConfigError(f"GRPOConfig: save_strategy={self.save_strategy!r} is not supported: use 'steps', "
                              "'epoch' or 'no'")
        if self.eval_strategy not in ("no", "steps", "epoch"):
            raise ConfigError(f"GRPOConfig: eval_strategy={self.eval_strategy!r} is not supported: use 'no', "
                              "'steps' or 'epoch'")
        if self.gradient_checkpointing_kwargs not in (None, {}, {"use_reentrant": False}):
            raise ConfigError("GRPOConfig: gradient_checkpointing_kwargs is not supported: grpo checkpoints each "
                              "decoder layer with use_reentrant=False")
        if self.logging_strategy not in ("steps", "no"):
            raise ConfigError(f"GRPOConfig: logging_strategy={self.logging_strategy!r} is not supported: use "
                              "'steps' or 'no'")

    def no_effect(self) -> list[str]:
        """The fields set here that have no effect on a grpo run."""
        return sorted(k for k in self.changed() if k in NO_EFFECT)


def _differs(value, default) -> bool:
    if isinstance(value, float) and isinstance(default, float):
        return not math.isclose(value, default)
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):     # an enum of TrainingArguments
        value = value.value
    if hasattr(default, "value") and not isinstance(default, (int, float, str)):
        default = default.value
    return value != default


@dataclasses.dataclass
class Plan:
    """How TRL's step counts fall onto grpo's: one grpo step samples one generation batch and makes
    `optimizer_steps` optimizer steps over it."""
    prompts_per_step: int
    minibatches: int
    optimizer_steps: int
    max_steps: int

    def steps(self, optimizer_steps: float, total: int) -> int:
        """A count of TRL optimizer steps (a fraction < 1: of the whole run) in grpo steps, at least 1."""
        if 0 < optimizer_steps < 1:
            optimizer_steps = optimizer_steps * total * self.optimizer_steps
        return max(1, round(optimizer_steps / self.optimizer_steps))


def plan(args: GRPOConfig, train_rows: int, world: int = 1) -> Plan:
    """TRL's batch arithmetic: a generation batch of per_device_train_batch_size x processes x
    steps_per_generation completions (or generation_batch_size), num_generations per prompt; an
    optimizer step every gradient_accumulation_steps micro-batches; num_iterations passes."""
    per, ga, G = args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_generations
    if args.generation_batch_size is not None and args.steps_per_generation is not None:
        raise ConfigError("GRPOConfig: give generation_batch_size or steps_per_generation, not both")
    if args.generation_batch_size is not None:
        if args.generation_batch_size % (per * world):
            raise ConfigError(f"GRPOConfig: generation_batch_size ({args.generation_batch_size}) must be a multiple of "
                              f"per_device_train_batch_size x processes ({per} x {world})")
        spg = args.generation_batch_size // (per * world)
    else:
        spg = args.steps_per_generation or ga
    completions = per * world * spg
    if completions % G:
        raise ConfigError(f"GRPOConfig: the generation batch ({completions} completions: per_device_train_batch_size "
                          f"{per} x {world} processes x steps_per_generation {spg}) must be a multiple of "
                          f"num_generations ({G})")
    if spg % ga:
        raise ConfigError(f"GRPOConfig: steps_per_generation ({spg}) must be a multiple of "
                          f"gradient_accumulation_steps ({ga}): each optimizer step takes whole micro-batches")
    prompts = completions // G
    minibatches = min(spg // ga, prompts)
    per_step = args.num_iterations * minibatches
    if args.max_steps and args.max_steps > 0:
        steps = math.ceil(args.max_steps / per_step)
    else:
        steps = max(1, math.ceil(args.num_train_epochs * train_rows / prompts))
    return Plan(prompts, minibatches, per_step, steps)


def to_settings(args: GRPOConfig, train_rows: int, eval_rows: int = 0, world: int = 1) -> tuple[dict[str, Any], Plan]:
    """grpo's settings for this GRPOConfig (then grpo_settings), and the step plan."""
    p = plan(args, train_rows, world)
    loss_aggregation, policy_loss = LOSS_TYPES[args.loss_type]
    if args.importance_sampling_level == "sequence":
        policy_loss = "gspo"
    scale = args.scale_rewards
    scale = {True: "group", False: "none", "group": "group", "batch": "batch", "none": "none"}.get(scale)
    if scale is None:
        raise ConfigError(f"GRPOConfig: scale_rewards must be 'group', 'batch', 'none', True or False, got "
                          f"{args.scale_rewards!r}")
    estimator = {"sum_then_normalize": "grpo", "normalize_then_sum": "gdpo"}.get(args.multi_objective_aggregation)
    if estimator is None:
        raise ConfigError("GRPOConfig: multi_objective_aggregation must be 'sum_then_normalize' or "
                          f"'normalize_then_sum', got {args.multi_objective_aggregation!r}")
    total = p.max_steps * p.optimizer_steps
    warmup = args.warmup_steps
    warmup = round(warmup * total) if 0 < warmup < 1 else int(warmup)
    s: dict[str, Any] = dict(
        preset="trl", output_dir=args.output_dir, lr=args.learning_rate, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, max_grad_norm=args.max_grad_norm,
        lr_schedule=SCHEDULES[args.lr_scheduler_type], warmup_steps=warmup,
        prompts_per_step=p.prompts_per_step, group_size=args.num_generations, minibatches=p.minibatches,
        grad_accum=args.gradient_accumulation_steps, updates_per_batch=args.num_iterations, max_steps=p.max_steps,
        seed=args.seed, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        max_new_tokens=args.max_completion_length, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k or 0, beta=args.beta, kl_estimator="k3", ratio_vs="old", epsilon=args.epsilon,
        epsilon_high=args.epsilon_high, sapo_temperature_pos=args.sapo_temperature_pos,
        sapo_temperature_neg=args.sapo_temperature_neg, policy_loss=policy_loss,
        loss_aggregation=loss_aggregation, reward_scaling=scale, advantage_estimator=estimator,
        mask_truncated_completions=args.mask_truncated_completions,
        top_entropy_quantile=args.top_entropy_quantile, entropy_coef=args.entropy_coef,
        kl_ratio_weight=bool(args.use_bias_correction_kl), run_name=args.run_name,
        save_model=False,                          # as TRL: the model is written by save_model() or at save_steps
        eval_batch_size=args.per_device_eval_batch_size, grad_bucket_mb=float(args.ddp_bucket_cap_mb or 32.0),
    )
    if args.loss_type == "cispo":
        s["cispo_max"] = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    if args.project and args.project != training_arguments_defaults().get("project"):
        s["project"] = args.project
    if args.use_cpu:
        s["device"] = "cpu"
    if args.sync_ref_model:
        s.update(ref_sync_every=p.steps(args.ref_model_sync_steps, p.max_steps), ref_sync_alpha=args.ref_model_mixup_alpha)
    s.update(_schedules(args, p, train_rows, eval_rows))
    reports = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    s["report_to"] = _trackers([str(r) for r in reports if r is not None])
    s["log_completions"] = p.prompts_per_step if args.log_completions else 2
    s.update(args.grpo_settings)
    return s, p


def _schedules(args: GRPOConfig, p: Plan, train_rows: int, eval_rows: int) -> dict[str, Any]:
    """When checkpoints and evaluations happen: TRL's save and eval strategies as grpo's steps."""
    steps_per_epoch = max(1, math.ceil(train_rows / p.prompts_per_step))
    if args.save_strategy == "no":
        s: dict[str, Any] = {"save_every": 0}
    else:
        s = {"save_every": steps_per_epoch if args.save_strategy == "epoch" else p.steps(args.save_steps, p.max_steps),
             "keep_checkpoints": args.save_total_limit or 1_000_000}
    if args.eval_strategy != "no" and eval_rows:
        every = args.eval_steps if args.eval_steps is not None else args.logging_steps
        s.update(eval_size=eval_rows, eval_every=steps_per_epoch if args.eval_strategy == "epoch"
                 else p.steps(every, p.max_steps))
    else:
        s["eval_size"] = 0
    return s


def _trackers(names: list[str]) -> list[str]:
    from ..sinks import REPORT_TO, missing_package
    out = []
    for n in names:
        if n in ("none", ""):
            continue
        if n == "all":
            out += [t for t in REPORT_TO if t != "none" and not missing_package(t)]
        elif n not in REPORT_TO:
            raise ConfigError(f"GRPOConfig: report_to {n!r} is not supported: grpo reports to "
                              f"{', '.join(t for t in REPORT_TO if t != 'none')}")
        else:
            out.append(n)
    return list(dict.fromkeys(out))
