"""Sampling completions: the engine seam (base.py), the token sampler (sampling.py), the plain
Hugging Face decoding loop (hf_loop.py) and the static engine (static.py: fixed shapes, CUDA
graphs on a GPU), registered by the names the `engine` setting uses. grpo/fast adds the CPU
engine (the lean step), which the `hf` engine takes on a CPU."""

from __future__ import annotations

from ..algo.registry import Registry
from .base import Capabilities, Generators, Rollout, RolloutEngine, SamplingSettings, Seeds, decode
from .hf_loop import HFEngine
from .static import StaticEngine

__all__ = ["Capabilities", "ENGINES", "Generators", "Rollout", "RolloutEngine", "SamplingSettings", "Seeds", "decode",
           "HFEngine", "StaticEngine", "generate"]

ENGINES = Registry("rollout engine")      # the `engine` setting's names (`auto` picks one of them by device)
ENGINES.register("hf")(lambda **_: HFEngine())
ENGINES.register("static")(StaticEngine)


def generate(model, prompt_ids, prompt_mask, *, engine: RolloutEngine | None = None, generator: Generators = None,
             **sampling) -> Rollout:
    """One call: `SamplingSettings(**sampling)` through `engine` (default: the plain HFEngine)."""
    sampling["eos_ids"] = tuple(sampling["eos_ids"])
    return (engine or HFEngine()).generate(model, prompt_ids, prompt_mask, SamplingSettings(**sampling), generator)
