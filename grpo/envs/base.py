"""The environment seam: what an episode is made of.

An environment plays the other side of a conversation. For each data row one environment object
is made (the class called with no arguments), and

    env.reset(row)  -> the opening messages ([{"role", "content"}, ...]): the prompt
    env.step(text)  -> Reply: the environment's answer to the model's turn `text`

A Reply carries messages for the model to read next (tool results, feedback; roles "user",
"tool" or "system") or `done=True` to end the episode, and a `reward` (a number or None). The
episode's reward is the last one given (None everywhere: 0). An episode also ends when it reaches
`max_turns` model turns or `max_tokens` trajectory tokens, or when a model turn is cut by the
per-turn token limit; the reward is then still the last one given. `tools` (optional, a list of
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
