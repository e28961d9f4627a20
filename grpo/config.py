"""Typed configuration: one dataclass, one place that validates it, presets as named bundles.

Every field is at once
  * an attribute of `TrainConfig`,
  * a YAML key of the same name (`--config run.yaml`), and
  * a command-line flag, the name in kebab-case (`group_size` -> `--group-size`).

Resolution order, later wins:
  field defaults  <  preset  <  demo defaults (only when no --model is given)  <  YAML  <  flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError  # noqa: F401  (re-exported: grpo.config.ConfigError)

from .levers import LEVER_FIELDS, Levers  # noqa: F401  (the levers' settings object, re-exported)
from .sinks import REPORT_TO, missing_package


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # ----------------------------------------------------------------- run
    preset: Literal["seed", "deepseekmath", "dr_grpo", "dapo", "gspo", "trl"] = _f(
        "seed", "Named bundle of algorithm settings (see docs/algorithm.md). `seed` is the article's system.")
    model: Optional[str] = _f(
        None, "Causal LM to train: a Hugging Face folder, a .gguf file, or a hub id. Empty: the built-in demo model.")
    gguf_file: Optional[str] = _f(None, "GGUF file name inside the --model folder (or pass the .gguf path as --model).")
    task: Optional[str] = _f(
        None, "Built-in task: `arithmetic` (the demo) or `reasoning_gym:NAME`. Empty and no --dataset: arithmetic.")
    task_config: dict = field(default_factory=dict, metadata={"help": "Settings of the task's generator, a JSON or "
                              "YAML mapping: for reasoning_gym:NAME, keyword arguments of that dataset's config, "
                              "e.g. '{\"min_terms\": 2, \"max_terms\": 2, \"max_digits\": 2}'."})
    dataset: Optional[str] = _f(
        None, "Prompts from a JSONL/JSON/CSV/Parquet file, a `datasets` folder saved to disk, or a hub dataset name.")
    dataset_split: str = _f("train", "Split of --dataset to train on (for `datasets` folders and hub names).")
    eval_split: Optional[str] = _f(
        None, "Held-out split of --dataset. Empty: the last `eval_size` rows of the training split are held out.")
    prompt_column: str = _f("prompt", "Dataset column holding the prompt (text, or a list of chat messages).")
    answer_column: str = _f("answer", "Dataset column holding the reference answer (optional for some rewards).")
    system_prompt: Optional[str] = _f(None, "System message placed before each prompt when the chat template is used.")
    chat_template: bool = _f(True, "Format prompts with the tokenizer's chat template when it has one.")
    env: Optional[str] = _f(
        None, "An environment to train in, module:Class or path/to/file.py:Class (docs/environments.md): each "
        "completion is a multi-turn episode and its reward the environment's. Empty: one completion per prompt.")
    env_max_turns: int = _f(4, "Model turns per episode, at most (--env).", min=1)
    env_max_tokens: int = _f(256, "Tokens per episode after the prompt, the model's and the environment's (--env); "
                             "each model turn is also cut at max_new_tokens.", min=1)
    env_timeout: float = _f(60.0, "Seconds one reset or step of an environment may take before the run stops with "
                            "an error naming the episode (--env; 0: no limit).", min=0.0)
    env_workers: int = _f(8, "Episodes whose environment reset or step run at once, in threads (--env); 1 if your "
                          "environment's objects share state that is not thread-safe.", min=1)
    env_credit: Literal["episode", "turn"] = _f(
        "episode", "How an episode's advantage reaches its turns (--env): `episode`, every turn the episode's; `turn`, "
                   "each turn also its own group-relative advantage from the environment's per-turn rewards, "
                   "weighted by env_turn_weight (MT-GRPO; docs/environments.md).")
    env_turn_weight: float = _f(1.0, "env_credit turn: the weight of the turn advantage added to the episode's.", min=0.0)
    output_dir: Optional[str] = _f(None, "Where the run writes config.yaml, metrics.jsonl, summary.json, model/. Empty: runs/<time>.")
    seed: int = _f(0, "Seed for sampling, data order and initialisation; same seed, same machine -> same metrics.")
    device: str = _f("auto", "`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    max_steps: int = _f(100, "Training steps (one step = sample a batch, then `updates_per_batch` passes over it).", min=1)

    # ------------------------------------------------------------ sampling
    prompts_per_step: int = _f(8, "B: prompts sampled per step.", min=1)
    group_size: int = _f(16, "G: completions sampled per prompt (>= 2; the article advises >= 4).", min=2)
    max_new_tokens: int = _f(256, "Completion length limit; longer completions are cut and counted as truncated.", min=1)
    min_new_tokens: int = _f(0, "EOS cannot be sampled before this many tokens.", min=0)
    temperature: float = _f(1.0, "Sampling temperature; log-probs everywhere are those of logits / temperature.", gt=0.0)
    top_p: float = _f(1.0, "Nucleus sampling mass (1 = off).", gt=0.0, max=1.0)
    top_k: int = _f(0, "Sample among the k most likely tokens (0 = off).", min=0)

    # ------------------------------------------------------------- rewards
    reward: list = field(default_factory=list, metadata={"help": "Reward function NAME[:WEIGHT], repeatable: a built-in (exact_match, math_verify, "
                      "format, think_answer_format, task, overlong), `module:function` or `path.py:function`. "
                      "Empty: the task's own verifier."})
    reward_model: Optional[str] = _f(None, "Frozen AutoModelForSequenceClassification (single score) added as a reward.")
    reward_model_weight: float = _f(1.0, "Weight of --reward-model in the summed reward.")
    reward_model_batch_size: int = _f(16, "Completions scored at once by --reward-model.", min=1)
    format_regex: Optional[str] = _f(None, "Regular expression the `format` reward requires the completion to match.")
    reward_workers: Optional[int] = _f(
        None, "Processes that run your own reward functions (module:function, file.py:function), one completion per "
              "call, so that one that hangs or ends its process is stopped, named and replaced. Empty: one per CPU "
              "core (at most 8); 0: call them in the training process, once per batch (faster; a hang holds the "
              "run, a crash ends it).", min=0)
    reward_timeout: float = _f(60.0, "Seconds one call of a reward function in a worker may take before the worker is "
                                     "killed and the completion counts as a failure.", gt=0.0)
    reward_failure: Literal["stop", "unscorable"] = _f(
        "stop", "What a reward function that raises, times out, ends its worker or returns a non-number does: `stop` "
                "the run with a message naming the function and the sample, or score that completion `unscorable` "
                "(None: 0, counted in reward/<name>/failed) and go on.")

    # ---------------------------------------------------------- advantages
    reward_scaling: Literal["none", "group", "batch"] = _f(
        "none", "Reward z-scoring before the baseline: per prompt group, over the batch, or none.")
    baseline: Literal["group", "leave_one_out", "batch", "window"] = _f(
        "group", "r-bar in A_i = r_i - r-bar: the prompt's group mean, the mean of the group's other G-1 rewards "
                 "(RLOO), the batch mean, or the mean over the last `baseline_window` batches.")
    baseline_window: int = _f(4, "Batches averaged by `baseline=window` (the current one included).", min=1)
    token_credit: Literal["uniform", "mean", "discounted", "discounted_over_length"] = _f(
        "discounted", "How A_i reaches the tokens: A_i; A_i/T_i; gamma^(T_i-t) A_i / sum_k gamma^(T_i-k); gamma^(T_i-t) A_i / T_i.")
    gamma: float = _f(0.99, "Discount of `token_credit=discounted*` (1.0 = equal shares).", gt=0.0, max=1.0)
    token_norm: bool = _f(True, "Normalise token advantages to zero mean, unit std over all valid tokens of the batch.")
    filter_zero_variance_groups: bool = _f(False, "Drop groups whose rewards are all equal from the loss (DAPO).")
    overlong_penalty: bool = _f(False, "Add DAPO's soft overlong penalty to the reward.")
    overlong_buffer: Optional[int] = _f(None, "Length of the penalty ramp before `max_new_tokens`. Empty: max_new_tokens // 4.", min=1)
    overlong_penalty_factor: float = _f(1.0, "Penalty at (and past) `max_new_tokens`.", min=0.0)

    # ---------------------------------------------------------------- loss
    advantage_estimator: Literal["grpo", "reinforce_pp", "reinforce_pp_baseline", "gdpo"] = _f(
        "grpo", "How rewards become per-token advantages: `grpo` = reward_scaling, then baseline, token_credit and "
                "token_norm; `reinforce_pp` (REINFORCE++: rewards whitened over the batch's tokens), "
                "`reinforce_pp_baseline` (the group mean subtracted first), `gdpo` (each reward function "
                "z-scored in its group, summed by weight, then z-scored over the batch). docs/algorithm.md.")
    policy_loss: Literal["clip", "reinforce", "gspo", "gspo_token", "cispo", "dual_clip", "sapo", "gmpo"] = _f(
        "clip", "`clip`: -min(rho A, clip(rho) A); `reinforce`: -A log pi (the article's first form); `gspo` / "
                "`gspo_token`: one ratio per sequence (GSPO); `cispo`: clipped stop-gradient weight times log pi; "
                "`dual_clip`: a second bound c for A < 0; `sapo`: a soft gate instead of the clip; `gmpo`: the "
                "geometric mean of token ratios. Formulas and sources: docs/algorithm.md.")
    cispo_max: float = _f(5.0, "policy_loss cispo: the cap eps_max of the importance weight (ScaleRL).", gt=0.0)
    dual_clip_c: float = _f(3.0, "policy_loss dual_clip: the bound c (> 1) for negative advantages.", gt=1.0)
    sapo_temperature_pos: float = _f(1.0, "policy_loss sapo: the gate's temperature for A > 0.", gt=0.0)
    sapo_temperature_neg: float = _f(1.05, "policy_loss sapo: the gate's temperature for A <= 0.", gt=0.0)
    gmpo_epsilon: float = _f(0.4, "policy_loss gmpo: the clip range of each token's log-ratio, [-eps, eps].", gt=0.0)
    ratio_vs: Literal["ref", "old"] = _f(
        "ref", "Denominator of the ratio rho: the frozen reference (article) or the sampling policy (DeepSeekMath, TRL, verl).")
    epsilon: float = _f(0.2, "Clip range below 1 (and above 1 unless `epsilon_high` is set).", gt=0.0, max=1.0)
    epsilon_high: Optional[float] = _f(None, "Clip range above 1 (DAPO clip-higher). Empty: `epsilon`.", gt=0.0)
    kl_estimator: Literal["k1", "k2", "k3", "full"] = _f(
        "k1", "Per-token KL to the reference: k1 log-ratio, k2 half squared log-ratio, k3 (DeepSeekMath), full vocabulary sum.")
    beta: float = _f(0.05, "KL weight (0 turns the KL term, and the reference forward unless ratio_vs=ref, off).", min=0.0)
    kl_ratio_weight: bool = _f(False, "Weight each token's sampled KL estimate by its ratio pi / pi_old (the sequence's "
                                      "for gspo), with its gradient: the importance-sampling correction of a KL "
                                      "estimated on tokens drawn from pi_old (TRL's use_bias_correction_kl).")
    kl_clamp: Optional[float] = _f(None, "Clamp each token's sampled KL estimate (k1, k2, k3) to [-c, c]: one token "
                                         "far from the reference cannot dominate the term. Empty: no clamp.", gt=0.0)
    mask_truncated_completions: bool = _f(
        False, "Completions cut at max_new_tokens carry no loss (and do not count in its normalisers): a cut "
               "answer is not judged as a wrong one (DAPO's overlong filtering; TRL's setting of this name).")
    rollout_correction: Literal["none", "tis", "icepop", "seq_tis", "mis"] = _f(
        "none", "Correct for the sampler's log-probs differing from the trainer's (bf16 sampling, another engine): "
                "weight each token's policy loss by w = pi_train_old / pi_sampler, `tis` truncated at "
                "rollout_is_max, `icepop` zero outside [rollout_is_min, rollout_is_max], `seq_tis` / `mis` the same "
                "with one ratio per sequence (the product of its tokens'). docs/algorithm.md.")
    rollout_is_min: Optional[float] = _f(None, "rollout_correction: the lower bound of the weight. Empty: the "
                                               "mode's source default (icepop 0.5, the others none).", min=0.0)
    rollout_is_max: Optional[float] = _f(None, "rollout_correction: the upper bound of the weight. Empty: the "
                                               "mode's source default (tis and seq_tis 2.0, icepop 5.0, mis 3.0).",
                                         gt=0.0)
    top_entropy_quantile: float = _f(1.0, "Keep in the policy loss only the tokens whose sampling entropy is in the "
                                          "batch's top fraction rho (0.2 in Wang et al.'s 80/20 result; 1.0 = every "
                                          "token).", gt=0.0, max=1.0)
    entropy_coef: float = _f(0.0, "Entropy bonus: subtract this times each token's entropy (of "
                                  "softmax(logits / temperature)) from the per-token loss (0 = off).", min=0.0)
    ref_sync_every: int = _f(0, "Reference refresh (TR-DPO): every this many steps, ref <- alpha * actor + "
                                "(1 - alpha) * ref (0 = a frozen reference).", min=0)
    ref_sync_alpha: float = _f(0.6, "Reference refresh: the actor's share alpha in the mix.", gt=0.0, max=1.0)
    dynamic_sampling: bool = _f(False, "Keep drawing prompts until the batch holds prompts_per_step groups whose "
                                       "rewards differ (DAPO's dynamic sampling); see dynamic_sampling_max_draws.")
    dynamic_sampling_max_draws: int = _f(10, "dynamic_sampling: at most this many draws of prompts_per_step prompts "
                                             "a step; a batch still short is filled with the last equal-reward "
                                             "groups (left out of the loss when filter_zero_variance_groups).", min=1)
    kl_target: Optional[float] = _f(None, "Adaptive beta: steer the measured KL toward this value. Empty: beta is fixed.", gt=0.0)
    kl_adapt_rate: float = _f(0.1, "Adaptive beta: at most this relative change of beta per step.", gt=0.0, max=1.0)
    loss_aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = _f(
        "seq_mean_token_mean", "Average tokens then sequences; average all tokens; token sums over N_seq * max_new_tokens (Dr. GRPO).")

    # ---------------------------------------------------------- optimiser
    lr: float = _f(5e-7, "AdamW learning rate (the article: 5e-7, about 100x below SFT).", gt=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0)
    adam_beta1: float = _f(0.9, "AdamW beta1.", min=0.0, lt=1.0)
    adam_beta2: float = _f(0.99, "AdamW beta2.", min=0.0, lt=1.0)
    warmup_steps: int = _f(0, "Linear learning-rate warm-up, in optimizer steps.", min=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = _f(
        "constant", "The learning rate after the warm-up: `constant`, or decaying to 0 at the last optimizer step, "
                    "`linear` or `cosine` (half a cosine wave).")
    max_grad_norm: float = _f(1.0, "Gradient clipping by global norm (0 = off).", min=0.0)
    nonfinite: Literal["stop", "skip"] = _f(
        "stop", "A non-finite loss or gradient norm in an update: `stop` the run after the step (the weights as "
                "before that update; a checkpoint is written where checkpointing is on) with a line naming the "
                "step and what to try, or `skip` that optimizer step, weights untouched, counted in "
                "updates/skipped_nonfinite.")
    updates_per_batch: int = _f(1, "mu: passes over each sampled batch.", min=1)
    minibatches: int = _f(1, "Optimizer steps per pass: the batch's groups are split into this many minibatches.", min=1)
    grad_accum: int = _f(1, "Least number of micro-batches per minibatch whose gradients are summed before the "
                            "optimizer step (more when micro_batch_tokens asks).", min=1)
    micro_batch_tokens: Optional[int] = _f(
        None, "Token budget of one micro-batch of the update and reference passes: rows x (prompt width + longest "
              "completion), sequences of similar length packed together (0 = no budget, grad_accum alone). Empty "
              "(auto): 4096, halved down to 1024 while the estimated update peak exceeds 80% of the memory available "
              "(on a CPU, or 10% more than the 1024-token peak).", min=0)
    lora_rank: int = _f(0, "LoRA rank (0 = full fine-tuning). The reference is then the actor with the adapter disabled.", min=0)
    lora_alpha: Optional[float] = _f(None, "LoRA alpha. Empty: 2 x rank.", gt=0.0)
    lora_dropout: float = _f(0.0, "LoRA dropout.", min=0.0, lt=1.0)
    lora_base_dtype: Literal["auto", "fp32", "bf16"] = _f(
        "auto", "With LoRA: the frozen base weights' products (in the update's forward and backward and in the "
                "reference pass) from a bf16 copy of those weights, the adapters, norms, attention, LM head and "
                "activations kept as they are. Pays where bf16 products are fast (GPUs, CPUs with AVX-512 BF16). "
                "auto: bf16 where the hardware multiplies bf16 natively (train/hardware.py), else fp32. Not with "
                "--fsdp (auto: fp32).")
    lora_target_modules: str = _f("all-linear", "Comma-separated module names to adapt (in YAML also a list), or "
                                                "`all-linear`.", joins=True)
    save_merged: bool = _f(False, "With LoRA, also save the merged model to <output_dir>/merged.")
    gradient_checkpointing: Optional[bool] = _f(
        None, "Recompute activations in backward to save memory. Empty (auto): on only where the estimated peak "
              "without it does not fit the memory available.")
    memory_check: bool = _f(True, "Before the first step, estimate the step's memory peak and stop with advice when "
                                  "it exceeds the memory available.")
    fsdp: bool = _f(
        False, "With several processes: shard every decoder layer's weights, gradients and AdamW moments over them "
               "(FSDP2 fully_shard); embeddings and LM head stay whole. Ignored with one process.")
    bf16: Optional[bool] = _f(None, "bf16 autocast for forward passes (where the device supports it; master weights "
                                    "stay fp32). Empty (auto): on for a CUDA GPU with bf16, off elsewhere.")
    rollout_dtype: Literal["auto", "fp32", "bf16"] = _f(
        "auto", "Sample in this dtype (bf16: half the weight bytes per decoded token; the log-probs then differ from "
                "the trainer's: see rollout_correction). auto: bf16 where the hardware multiplies bf16 natively, "
                "with rollout_correction tis where the preset corrects nothing (train/hardware.py), else fp32. "
                "Not with --fsdp (auto: fp32).")
    reference_dtype: Literal["auto", "fp32", "bf16"] = _f(
        "auto", "The reference pass under bf16 autocast (bf16) or as the weights are (fp32). auto: bf16 where the "
                "hardware multiplies bf16 natively, else fp32.")
    engine: Literal["auto", "hf", "static"] = _f(
        "auto", "How completions are decoded. `static`: fixed-shape decoding units over a key/value buffer kept "
                "from call to call, captured in CUDA graphs on a GPU (Llama, Mistral, Qwen2/3; other models decode "
                "through `hf`, said once); `hf`: the model's forward per token (on a CPU with the lean step and "
                "few-row products, see the levers); `auto`: static on CUDA, hf elsewhere.")
    logprob_chunk: int = _f(256, "Completion tokens pushed through the LM head at once (bounds the tokens x vocab logits held).", min=1)

    # ------------------------------------------- speed and memory levers (grpo/fast, see `Levers`)
    lean_decode: bool = _f(True, "Sample from Llama-family models on a CPU through the lean decoding step "
                                 "(plain tensor ops) instead of the model's forward.")
    few_rows_max: int = _f(128, "Decoding products of at most this many rows on a CPU are computed with the weight "
                                "on the left, W x^T (0 = off).", min=0)
    native_kernel: bool = _f(True, "Decoding's 6-32-row products through the compiled AVX2 kernel where it builds "
                                   "(also off with GRPO_NATIVE=0 in the environment).")
    fused_head: bool = _f(True, "Log-probs and entropy through the LM head in one autograd function that keeps no "
                                "(tokens x vocabulary) tensor for backward.")
    head_keep_mb: int = _f(
        256, "With fused_head: under autograd, keep the LM head's softmax of up to this many MB of completion tokens "
             "from the forward pass to the backward pass instead of recomputing those logits (0 = always recompute).",
        min=0)
    heap_reuse: bool = _f(True, "The `grpo` command: sampling and the reference pass reuse freed heap memory "
                                "instead of fresh mappings (glibc).")
    heap_trim_every: float = _f(0.5, "The `grpo` command: the update reuses the heap too and hands its free pages "
                                     "back every this many seconds (0 = fresh mappings during the update).", min=0.0)
    reference_in_file: bool = _f(
        True, "Full fine-tuning on CPU: keep the frozen reference's weights in a file mapped into memory and resident "
              "only during its forward pass, so the update's peak holds one copy of the weights fewer "
              "(not with --fsdp: the reference is sharded instead).")
    grad_bucket_mb: float = _f(32.0, "Data parallelism: gradients summed over processes this many MB at a time.",
                               gt=0.0)

    # -------------------------------------------------------- eval & logs
    eval_size: int = _f(200, "Held-out problems scored before and after training: the run's reward, each reward "
                             "function's pass rate, the task's accuracy where it has one (0 = no eval).", min=0)
    eval_batch_size: int = _f(256, "Prompts decoded at once during evaluation.", min=1)
    eval_every: int = _f(0, "Also evaluate every N steps during training (0 = before and after only); every "
                            "evaluation is a row of eval.jsonl.", min=0)
    log_completions: int = _f(2, "Prompts per step whose G completions go to completions.jsonl, each with its "
                                 "rewards, advantage, length and truncation (0 = none).", min=0)
    report_to: list = field(default_factory=list, metadata={"help": "Also log to these trackers, repeatable or "
                            "comma-separated: " + ", ".join(REPORT_TO) + " (each an optional install: pip install "
                            "'grpo[NAME]')."})
    project: str = _f("grpo", "--report-to: the wandb/trackio project, the MLflow experiment.")
    run_name: Optional[str] = _f(None, "--report-to: the run's name in the trackers (default: the output folder's name).")
    save_model: bool = _f(True, "Write the trained model with save_pretrained to <output_dir>/model.")
    save_every: int = _f(0, "Write a checkpoint every N steps to <output_dir>/checkpoints/step-N (0 = never).", min=0)
    keep_checkpoints: int = _f(2, "Checkpoints kept; older ones are deleted after a new one is complete.", min=1)
    resume: Optional[str] = _f(None, "Continue from a checkpoint folder, `latest` (the newest in --output-dir; "
                                     "refused when damaged) or `latest-good` (the newest that passes its checks).")


# The parameters of the other policy losses and the settings most presets leave off, the same in every
# preset unless it says otherwise (their sources' defaults).
LOSS_PARAMETERS = dict(cispo_max=5.0, dual_clip_c=3.0, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05,
                       gmpo_epsilon=0.4, kl_clamp=None, kl_ratio_weight=False, mask_truncated_completions=False,
                       rollout_correction="none", rollout_is_min=None, rollout_is_max=None, top_entropy_quantile=1.0,
                       entropy_coef=0.0, ref_sync_every=0, ref_sync_alpha=0.6, dynamic_sampling=False,
                       dynamic_sampling_max_draws=10)

# Each preset sets every algorithm field, so a preset alone fully defines the algorithm.
PRESETS: dict[str, dict[str, Any]] = {
    # The article ("LLM training: GRPO explained").
    "seed": dict(advantage_estimator="grpo", reward_scaling="none", baseline="group", token_credit="discounted", gamma=0.99,
                 token_norm=True, ratio_vs="ref", policy_loss="clip", kl_estimator="k1", beta=0.05,
                 loss_aggregation="seq_mean_token_mean", epsilon=0.2, epsilon_high=None,
                 filter_zero_variance_groups=False, overlong_penalty=False, **LOSS_PARAMETERS),
    # Shao et al. 2024, outcome supervision, as public trainers implement it.
    "deepseekmath": dict(advantage_estimator="grpo", reward_scaling="group", baseline="group", token_credit="uniform", gamma=1.0,
                         token_norm=False, ratio_vs="old", policy_loss="clip", kl_estimator="k3", beta=0.04,
                         loss_aggregation="seq_mean_token_mean", epsilon=0.2, epsilon_high=None,
                         filter_zero_variance_groups=False, overlong_penalty=False, **LOSS_PARAMETERS),
    # Liu et al. 2025 ("Understanding R1-Zero-like training"): no std scaling, no length normalisation.
    "dr_grpo": dict(advantage_estimator="grpo", reward_scaling="none", baseline="group", token_credit="uniform", gamma=1.0,
                    token_norm=False, ratio_vs="old", policy_loss="clip", kl_estimator="k3", beta=0.0,
                    loss_aggregation="seq_mean_token_sum_norm", epsilon=0.2, epsilon_high=None,
                    filter_zero_variance_groups=False, overlong_penalty=False, **LOSS_PARAMETERS),
    # Yu et al. 2025: clip-higher, token-level loss, dynamic sampling with the zero-variance group
# filter, soft overlong penalty.
    "dapo": dict(advantage_estimator="grpo", reward_scaling="group", baseline="group", token_credit="uniform", gamma=1.0,
                 token_norm=False, ratio_vs="old", policy_loss="clip", kl_estimator="k3", beta=0.0,
                 loss_aggregation="token_mean", epsilon=0.2, epsilon_high=0.28,
                 filter_zero_variance_groups=True, overlong_penalty=True, **{**LOSS_PARAMETERS, "dynamic_sampling": True}),
    # Zheng et al. 2025: one clipped ratio per sequence, its tiny range (section 5.1), no KL; the
    # sequence mean per completion (TRL's paper index: loss_type "grpo" with importance_sampling_level "sequence").
    "gspo": dict(advantage_estimator="grpo", reward_scaling="group", baseline="group", token_credit="uniform", gamma=1.0,
                 token_norm=False, ratio_vs="old", policy_loss="gspo", kl_estimator="k3", beta=0.0,
                 loss_aggregation="seq_mean_token_mean", epsilon=3e-4, epsilon_high=4e-4,
                 filter_zero_variance_groups=False, overlong_penalty=False, **LOSS_PARAMETERS),
    # TRL 1.16's GRPOTrainer with its defaults (GRPOConfig): loss_type "dapo" (token-level mean over
    # the batch), scale_rewards "group", beta 0.0, epsilon 0.2 both sides, k3 when beta > 0, the
    # ratio against the sampling policy, no entropy mask, truncated completions kept, and the
    # sampler's log-probs corrected by sequence-level masking at 3.0 (vllm_importance_sampling_mode
    # "sequence_mask", clip_max 3.0; TRL applies it when vLLM samples).
    "trl": dict(advantage_estimator="grpo", reward_scaling="group", baseline="group", token_credit="uniform", gamma=1.0,
                token_norm=False, ratio_vs="old", policy_loss="clip", kl_estimator="k3", beta=0.0,
                loss_aggregation="token_mean", epsilon=0.2, epsilon_high=None,
                filter_zero_variance_groups=False, overlong_penalty=False,
                **{**LOSS_PARAMETERS, "rollout_correction": "mis", "rollout_is_max": 3.0}),
}

# Applied when no --model is given: the sizes and learning rate the built-in demo needs
# (the article's lr of 5e-7 is for billion-parameter models, not a 0.3M-parameter one).
DEMO_DEFAULTS: dict[str, Any] = dict(
    preset="dr_grpo", task="arithmetic", prompts_per_step=16, group_size=8, max_new_tokens=8, lr=1e-4,
    max_steps=150, eval_size=500,
)

# ... and with --env calculator (or calculator_off): its demo model is warm-started on two-digit
# products, and an episode is a call, the result and the answer read back
CALCULATOR_DEMO_ENVS = ("calculator", "calculator_off")
CALCULATOR_DEMO_DEFAULTS: dict[str, Any] = dict(task="multiplication", max_new_tokens=8, env_max_turns=2,
                                                env_max_tokens=32, max_steps=100, eval_size=200)

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
ALGORITHM_FIELDS = sorted({k for p in PRESETS.values() for k in p})


# Each rollout_correction mode's (low, high) bounds of the importance weight where the run leaves
# them empty: TIS's cap (Yao et al. 2025, as verl's default), IcePop's band (Ring-1T), TRL's
# sequence_mask cap.
ROLLOUT_IS_BOUNDS = {"none": (None, None), "tis": (None, 2.0), "seq_tis": (None, 2.0), "icepop": (0.5, 5.0),
                     "mis": (None, 3.0)}


def rollout_is_bounds(cfg) -> tuple[float | None, float | None]:
    """The run's (low, high) bounds of the rollout-correction weight, None where unbounded."""
    lo, hi = ROLLOUT_IS_BOUNDS[cfg.rollout_correction]
    return (cfg.rollout_is_min if cfg.rollout_is_min is not None else lo,
            cfg.rollout_is_max if cfg.rollout_is_max is not None else hi)


# --------------------------------------------------------------- typing helpers
@functools.cache
def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)      # resolving every annotation compiles each: once per process


def field_type(name: str) -> tuple[type, tuple | None, bool]:
    """(base type, allowed choices or None, optional?) of a field."""
    hints = _hints()
    tp = hints[name]
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if typing.get_origin(tp) is Literal:
        return str, typing.get_args(tp), optional
    if tp in (list, dict):
        return tp, None, True
    return tp, None, optional


def _mapping(name: str, value: Any, src: str) -> dict:
    """A mapping setting: a mapping (YAML), or its JSON / YAML text (a flag)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{name}{src}: expected a JSON or YAML mapping such as '{{\"key\": 1}}', "
                              f"got {value!r} ({str(e).splitlines()[0]})") from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{name}{src}: expected a mapping of name: value, got {value!r}")
    return dict(value)


def coerce(name: str, value: Any, where: str = "") -> Any:
    """Convert a YAML or flag value to the field's type, or raise ConfigError naming the field."""
    tp, choices, optional = field_type(name)
    src = f" (in {where})" if where else ""
    if tp is dict:
        return _mapping(name, value, src)
    if tp is list:
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"{name}{src}: expected a list of non-empty strings, got {value!r}")
        return list(items)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null", "auto")):
        if optional:
            return None
        raise ConfigError(f"{name}{src}: a value is required, got nothing")
    if tp is str and isinstance(value, (list, tuple, dict)):
        joins = FIELDS[name].metadata.get("joins")
        if not (joins and isinstance(value, (list, tuple)) and value
                and all(isinstance(v, str) and v.strip() for v in value)):
            form = "a list" if isinstance(value, (list, tuple)) else "a mapping"
            raise ConfigError(f"{name}{src}: expected text{' or a list of names' if joins else ''}, got {form}: "
                              f"{value!r}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                out = True
            elif isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        elif isinstance(value, (list, tuple)):            # a YAML list for a comma-separated setting
            out = ",".join(v.strip() for v in value)
        else:
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}{src}: expected {tp.__name__}, got {value!r}") from None
    if choices and out not in choices:
        raise ConfigError(f"{name}{src}: must be one of {', '.join(choices)}; got {out!r}")
    return out


def validate(cfg: TrainConfig, sources: dict[str, str] | None = None) -> TrainConfig:
    """Check every numeric bound declared in the field metadata, then cross-field rules.
    `sources` maps a field to where its value came from (a YAML path, "command line")."""
    sources = sources or {}
    for name, f in FIELDS.items():
        setattr(cfg, name, coerce(name, getattr(cfg, name), sources.get(name, "")))
        v = getattr(cfg, name)
        if v is None or isinstance(v, (bool, str, list, dict)):
            continue
        m = f.metadata
        label = f"{name} (in {sources[name]})" if name in sources else name
        if not math.isfinite(v):
            raise ConfigError(f"{label}: must be a finite number, got {v}")
        for key, ok, words in (("min", v >= m.get("min", 0), ">="), ("gt", v > m.get("gt", 0), ">"),
                               ("max", v <= m.get("max", 0), "<="), ("lt", v < m.get("lt", 0), "<")):
            if key in m and not ok:
                raise ConfigError(f"{label}: must be {words} {m[key]}, got {v}")
    if cfg.group_size < 4:
        warnings.warn(f"group_size={cfg.group_size}: groups under 4 give unreliable relative advantages "
                      "(the article advises G >= 4)", stacklevel=2)
    if cfg.min_new_tokens > cfg.max_new_tokens:
        raise ConfigError(f"min_new_tokens ({cfg.min_new_tokens}) must be <= max_new_tokens ({cfg.max_new_tokens})")
    if cfg.minibatches > cfg.prompts_per_step:
        raise ConfigError(f"minibatches ({cfg.minibatches}) must be <= prompts_per_step ({cfg.prompts_per_step}): "
                          "each minibatch holds whole groups")
    if cfg.epsilon >= 1.0:
        raise ConfigError(f"epsilon: must be < 1, got {cfg.epsilon}")
    lo, hi = rollout_is_bounds(cfg)
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"rollout_is_min ({lo}) must be < rollout_is_max ({hi})")
    if cfg.ref_sync_every:
        if cfg.lora_rank:
            raise ConfigError("ref_sync_every: under LoRA the reference is the actor's own base weights (the adapter "
                              "switched off), which a refresh cannot move without changing the actor; train the full "
                              "model (lora_rank 0) to refresh the reference")
        if cfg.fsdp:
            raise ConfigError("ref_sync_every: a refreshed reference is not checkpointed under --fsdp; train without "
                              "--fsdp to refresh the reference")
        if not needs_reference(cfg):
            raise ConfigError("ref_sync_every: this run has no reference to refresh (beta is 0 and ratio_vs is old); "
                              "set beta > 0 or leave ref_sync_every at 0")
    if cfg.env_credit == "turn" and not cfg.env:
        raise ConfigError("env_credit: turn credits the turns of multi-turn episodes; it needs --env")
    if cfg.rollout_dtype == "bf16" and cfg.fsdp:
        raise ConfigError(f"rollout_dtype: {cfg.rollout_dtype} sampling keeps a whole copy of the weights, which "
                          "--fsdp does not; sample in fp32 or train without --fsdp")
    if cfg.lora_base_dtype == "bf16":
        if not cfg.lora_rank:
            raise ConfigError(f"lora_base_dtype: {cfg.lora_base_dtype} applies to LoRA's frozen base weights; set "
                              "lora_rank > 0, or use bf16 for autocast of the whole model")
        if cfg.fsdp:
            raise ConfigError(f"lora_base_dtype: {cfg.lora_base_dtype} keeps a copy of the base weights, which --fsdp "
                              "does not shard; use fp32 or train without --fsdp")
    cfg.report_to = [n.strip() for spec in cfg.report_to for n in spec.split(",") if n.strip()]
    for name in cfg.report_to:
        if name not in REPORT_TO:
            raise ConfigError(f"report_to: unknown tracker {name!r}; choose from {', '.join(REPORT_TO)}")
        if name != "none" and (install := missing_package(name)):
            raise ConfigError(f"report_to: {install}")
    return cfg


# ------------------------------------------------------------------ resolution
def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (--config)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file (--config)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}{where}: not valid YAML ({what}"
                          f"{f', column {mark.column + 1}' if mark is not None else ''})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    for key in data:
        check_known(key, where=path)
    return data


def check_known(key: str, where: str = "") -> None:
    if key not in FIELDS:
        near = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        src = f"{where}: " if where else ""
        raise ConfigError(f"{src}unknown setting {key!r}{hint}")


def resolve(yaml_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            yaml_path: str = "", demo: bool | None = None) -> TrainConfig:
    """Build the final config: defaults < preset < demo defaults < YAML < overrides (flags).

    `demo`: apply DEMO_DEFAULTS; by default, exactly when no model is named."""
    yaml_values = dict(yaml_values or {})
    overrides = dict(overrides or {})
    for k in overrides:
        check_known(k)
    explicit = {**yaml_values, **overrides}
    if demo is None:
        demo = not explicit.get("model")
    demo = DEMO_DEFAULTS if demo else {}
    if demo and explicit.get("env") in CALCULATOR_DEMO_ENVS:
        demo = {**demo, **CALCULATOR_DEMO_DEFAULTS}
    preset = coerce("preset", explicit.get("preset", demo.get("preset", FIELDS["preset"].default)))
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update({k: v for k, v in demo.items() if k != "preset"})
    for k, v in yaml_values.items():
        values[k] = coerce(k, v, where=yaml_path)
    for k, v in overrides.items():
        values[k] = coerce(k, v, where="command line")
    values["preset"] = preset
    sources = {**{k: yaml_path for k in yaml_values if yaml_path}, **{k: "command line" for k in overrides}}
    return validate(TrainConfig(**values), sources)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def needs_reference(cfg: TrainConfig) -> bool:
    """The run needs pi_ref: a KL term (or an adaptive beta), or the ratio taken against it."""
    return cfg.beta > 0 or cfg.ratio_vs == "ref" or cfg.kl_target is not None
