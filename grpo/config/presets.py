"""Presets (named bundles of algorithm settings), the demo's defaults, and the rules derived from
settings that several stages read (the rollout correction's bounds, whether a run needs pi_ref)."""

from __future__ import annotations

from typing import Any

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


def needs_reference(cfg) -> bool:
    """The run needs pi_ref: a KL term (or an adaptive beta), or the ratio taken against it. The one
    place this is decided: the models built, the memory plan, the KL metric and the checks read it."""
    return cfg.beta > 0 or cfg.ratio_vs == "ref" or cfg.kl_target is not None
