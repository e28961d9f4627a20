"""Environments written for other trainers, mapped onto this one's interface.

`trl_environment(Factory)`: a class in the form of TRL's GRPOTrainer `environment_factory` —
`reset(**row)` returning None or a text appended to the prompt's last user message, its public
methods the tools (type hints and docstrings), an optional `get_reward()` read once when the
episode ends — becomes an environment class for `--env`:

    # my_env.py
    from grpo.envs import trl_environment
    Env = trl_environment(MyTrlEnvironment)         # grpo train --env my_env.py:Env

An episode ends at the first model turn without a tool call (or at the episode limits); the reward
is `get_reward()` as it stands after the last turn.
"""

from __future__ import annotations

import inspect

from .base import Reply
from .tools import ToolEnv


def _public_methods(obj) -> list:
    return [getattr(obj, name) for name, _ in inspect.getmembers(type(obj), predicate=inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")]


def trl_environment(factory, prompt_key: str = "prompt"):
    """An environment class for `--env` around TRL-style environment objects made by `factory`."""
    probe = factory()

    class Adapted(ToolEnv):
        tools = _public_methods(probe)         # the schemas the model is offered (names and arguments)

        def __init__(self):
            self.inner = factory()
            self.tools = _public_methods(self.inner)      # this episode's own state

        def reset(self, row: dict) -> list[dict]:
            self.row = row
            observation = self.inner.reset(**row)
            prompt = row[prompt_key]
            messages = list(prompt) if isinstance(prompt, (list, tuple)) else [{"role": "user", "content": str(prompt)}]
            if isinstance(observation, str):
                messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
            return messages

        def reward(self) -> float | None:
            get = getattr(self.inner, "get_reward", None)
            value = get() if callable(get) else None
            return None if value is None else float(value)

        def step(self, text: str) -> Reply:
            reply = super().step(text)
            if not reply.done:              # read after every turn: an episode cut by a limit keeps it
                reply.reward = self.reward()
            return reply

        def answer(self, text: str) -> Reply:
            return Reply(done=True, reward=self.reward())

    Adapted.__name__ = Adapted.__qualname__ = f"{type(probe).__name__}Env"
    return Adapted
