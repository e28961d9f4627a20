"""Training from Python: `grpo.fit(...)`, the native entry point, which the `grpo train` command
also goes through, and (grpo/api/trl_*.py) `GRPOTrainer` / `GRPOConfig` for scripts written
against TRL's trainer.

    import grpo
    summary = grpo.fit(model="HuggingFaceTB/SmolLM2-135M-Instruct", dataset=my_dataset,
                         rewards=[my_reward, (other_reward, 0.5)], max_steps=200, lora_rank=16)

Settings are TrainConfig's fields (the command line's flags, snake_case), given as a TrainConfig,
a mapping, a YAML file's path, or keywords (keywords win). Python objects take the place of the
settings that name things: see `train`.
"""

from __future__ import annotations

from typing import Any

from .native import build_inputs, fit, resolve_config

__all__ = ["fit", "build_inputs", "resolve_config", "GRPOConfig", "GRPOTrainer"]


def __getattr__(name: str) -> Any:
    if name in ("GRPOConfig", "GRPOTrainer"):
        from . import trl_config, trl_trainer
        return {"GRPOConfig": trl_config.GRPOConfig, "GRPOTrainer": trl_trainer.GRPOTrainer}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
