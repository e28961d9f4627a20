"""Sampling completions: the engine seam (base.py), the token sampler (sampling.py) and the plain
Hugging Face decoding loop (hf_loop.py). grpo/fast adds the CPU engine."""

from __future__ import annotations

from .base import Generators, Rollout, RolloutEngine, SamplingSettings, decode
from .hf_loop import HFEngine

__all__ = ["Generators", "Rollout", "RolloutEngine", "SamplingSettings", "decode", "HFEngine", "generate"]


def generate(model, prompt_ids, prompt_mask, *, engine: RolloutEngine | None = None, generator: Generators = None,
             **sampling) -> Rollout:
    """One call: `SamplingSettings(**sampling)` through `engine` (default: the plain HFEngine)."""
    sampling["eos_ids"] = tuple(sampling["eos_ids"])
    return (engine or HFEngine()).generate(model, prompt_ids, prompt_mask, SamplingSettings(**sampling), generator)
