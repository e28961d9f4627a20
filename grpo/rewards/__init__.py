"""Scoring completions: the built-in reward functions (builtins.py), the user's own (user.py), run
contained in worker processes (contained.py, worker.py), a reward model (reward_model.py), and the
weighted sum the trainer takes (scoring.py); checks.py calls one function and checks its values.

The names below load on first use, so that a reward worker (`python -m grpo.rewards.worker`) does
not import torch."""

__all__ = ["RewardError", "RewardFns", "build_reward_fns", "score"]


def __getattr__(name: str):
    if name == "RewardError":
        from .checks import RewardError
        return RewardError
    if name in ("RewardFns", "build_reward_fns", "score"):
        from . import scoring
        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
