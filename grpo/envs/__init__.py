"""Environments: multi-turn episodes the trainer learns from (base.py the interface, episodes.py
the token-in, token-out driver)."""

from __future__ import annotations

from .base import Environment, EpisodeLimits, Reply, episode_limits
from .adapters import trl_environment
from .episodes import Episode, run_episodes

__all__ = ["Environment", "EpisodeLimits", "Reply", "episode_limits", "Episode", "run_episodes", "trl_environment"]
