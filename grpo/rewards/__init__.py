"""Scoring completions: the built-in reward functions (builtins.py), the user's own (user.py), a
reward model (reward_model.py), and the weighted sum the trainer takes (scoring.py)."""

from .scoring import RewardError, build_reward_fns, score

__all__ = ["RewardError", "build_reward_fns", "score"]
