"""The environment seam: what an episode is made of.

An environment plays the other side of a conversation. For each data row one environment object
is made (the class called with no arguments), and

    env.reset(row)  -> the opening messages ([{"role", "content"}, ...]): the prompt
    env.step(text)  -> Reply: the environment's answer to the model's turn `text` (its sampled
                       tokens decoded, special tokens included, less the end-of-turn token)

A Reply carries messages for the model to read next (tool results, feedback; roles "user",
"tool" or "system") or `done=True` to end the episode, and a `reward` (a number or None). The
episode's reward is the last one given (None everywhere: 0). An episode also ends when it reaches
`max_turns` model turns or `max_tokens` trajectory tokens, or when a model turn is cut by the
per-turn token limit; the reward is then still the last one given. `turn_reward` is the reward
of the turn just taken, on its own (a well-formed call, a right intermediate answer): read only
under `env_credit=turn`, where each turn's tokens also get its group-relative turn advantage
(grpo/algo/advantages.py:turn_advantages). `tools` (optional, a list of
Python functions) are the tools offered to the model; an environment that offers tools parses and
runs the calls itself (grpo/envs/tools.py has the pieces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Reply:
    messages: list[dict] = field(default_factory=list)   # what the model reads before its next turn
    done: bool = False                                   # the episode ends here
    reward: float | None = None                          # the episode's reward so far (the last one counts)
    turn_reward: float | None = None                     # this turn's own reward (per-turn credit, env_credit=turn)
    tool_calls: int = 0                                  # counted in the step's metrics
    tool_errors: int = 0


class Environment(Protocol):
    def reset(self, row: dict) -> list[dict]:
        """The opening messages of the episode for this data row."""
        ...

    def step(self, text: str) -> Reply:
        """The environment's answer to the model's turn."""
        ...


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 4                 # model turns per episode
    max_tokens: int = 256              # trajectory tokens after the prompt (model's and environment's)
    timeout: float = 60.0              # seconds one reset or step may take (0: no limit)
    workers: int = 8                   # episodes whose reset or step run at once (grpo/envs/contain.py)


def episode_limits(cfg) -> EpisodeLimits:
    """The limits a run's settings (env_max_turns, env_max_tokens, env_timeout, env_workers) set."""
    return EpisodeLimits(cfg.env_max_turns, cfg.env_max_tokens, cfg.env_timeout, cfg.env_workers)
