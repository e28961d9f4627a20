"""Built-in environments, named by `--env NAME`.

retry   the task's problem; a wrong answer is met with the problem again, up to env_max_turns
        model turns; reward 1 when an answer is right (the task's verifier), else 0.
        A multi-turn episode with feedback that any task with a verifier can play.
"""

from __future__ import annotations

from .base import Reply


class Retry:
    def __init__(self, verifier, turns: int = 3):
        self.verifier = verifier          # the task's verifier: fn(prompts, completions, **columns) -> scores
        self.turns = turns

    def reset(self, row: dict) -> list[dict]:
        self.row, self.turn = row, 0
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text: str) -> Reply:
        self.turn += 1
        columns = {k: [v] for k, v in self.row.items() if k != "prompt"}
        score = self.verifier([self.row["prompt"]], [text], **columns)[0]
        if score is not None and score >= 1.0:
            return Reply(done=True, reward=1.0)
        if self.turn >= self.turns:
            return Reply(done=True, reward=0.0)
        return Reply(messages=[{"role": "user", "content": f" {self.row['prompt']}"}], reward=0.0)


def retry(task, cfg):
    from ..errors import ConfigError
    name = task.accuracy or next(iter(task.rewards), None)
    if name is None:
        raise ConfigError(f"env: retry needs a task with a verifier; task {task.name!r} has none")
    verifier = task.rewards[name]
    return lambda: Retry(verifier, cfg.env_max_turns)


BUILTIN = {"retry": retry}        # name -> fn(task, settings) -> a factory of environments
