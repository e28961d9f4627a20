"""grpo: train causal language models with Group Relative Policy Optimization.

From Python: `grpo.fit(...)` (grpo/api), `grpo.TrainConfig` (its settings), and for scripts written
against TRL's trainer, `grpo.GRPOTrainer` with `grpo.GRPOConfig` (docs/coming-from-trl.md). The
names load on first use, so that `import grpo` stays light. (`grpo.train` is the package of the
training loop, so the function is `fit`.)"""

__version__ = "0.1.0"

__all__ = ["fit", "TrainConfig", "GRPOTrainer", "GRPOConfig", "__version__"]


def __getattr__(name: str):
    if name == "fit":
        from .api import fit
        return fit
    if name == "TrainConfig":
        from .config import TrainConfig
        return TrainConfig
    if name in ("GRPOConfig", "GRPOTrainer"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
