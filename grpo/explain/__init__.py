"""`grpo explain`: walk one batch of rewards through the advantage and loss math, printing every number.

The default input is the article's worked example ("GRPO 完整数值示例"): one prompt, two completions
of 3 and 4 tokens with rewards 0.8 and 0.6, and at sequence 1's first token log pi_theta = -1.5,
log pi_ref = -1.6. Every number comes from the functions the trainer uses (the registered advantage
estimator of grpo.algo.advantages, and the per-token loss of grpo.algo.token_loss under every
registered policy loss), in float64 so that what is printed is exact.

With per-token inputs (`--logp`, `--old-logp`, `--ref-logp`, `--sampler-logp`, `--entropy`, or
`--all-losses` for the built-in ones) the loss step shows every token of every completion under every
registered policy loss: the ratio, the rollout correction's weight, the entropy selection, the KL
term and the entropy bonus, and each loss's aggregate under `loss_aggregation`.
`advantage_estimator`s other than `grpo` are walked through by their own stages.

Where the article's printed numbers disagree with its own formulas (the normalized advantages are
printed 10x too small, from a rounded sigma), the formulas win and the text says so.

The package reads as its three stages: parse.py (the options' texts, checked), compute.py (the
numbers), render.py and render_losses.py (the walk-through text, from the numbers only).
"""

from __future__ import annotations

import json

from ..config import TrainConfig
from .compute import explain
from .parse import (DEFAULT_ENTROPY, DEFAULT_LOGP, DEFAULT_OLD_LOGP, DEFAULT_REF_LOGP, DEFAULT_SAMPLER_LOGP,
                    TokenInputs, parse_components, parse_groups, parse_sequences, read_inputs, weighted_sum)
from .render import render

__all__ = ["explain", "main", "render", "parse_groups", "parse_sequences", "parse_components", "weighted_sum",
           "TokenInputs", "DEFAULT_LOGP", "DEFAULT_OLD_LOGP", "DEFAULT_REF_LOGP", "DEFAULT_SAMPLER_LOGP",
           "DEFAULT_ENTROPY"]


def main(cfg: TrainConfig, rewards_text: str | None, lengths_text: str | None, as_json: bool, **options) -> int:
    """`grpo explain`: the walk-through (or with `as_json` one JSON object) of the inputs the options
    give (parse.read_inputs: logp, old_logp, ref_logp, sampler_logp, entropy, advantages, components,
    all_losses)."""
    rewards, lengths, tokens, comps = read_inputs(rewards_text, lengths_text, **options)
    result = explain(cfg, rewards, lengths, tokens=tokens, components=comps)
    print(json.dumps(result) if as_json else render(cfg, result), end="\n" if as_json else "")
    return 0
