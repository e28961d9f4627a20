"""The settings: one dataclass, each field with its default, its help and its bounds (metadata
`min`, `gt`, `max`, `lt`, checked by checks.validate; `joins`: a text setting that also takes a list
of names)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..sinks import REPORT_TO


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


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
