"""grpo: train causal language models with Group Relative Policy Optimization."""

__version__ = "0.1.0"
