"""Run several training configs in one torchrun job (tests/test_distributed.py launches it).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py SPEC.json

SPEC.json: a list of override dicts, each a complete `grpo train` configuration.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import torch


def dense_reward(prompts, completions, **_):
    """A reward that differs between almost any two completions (a random tiny model's outputs
    are rarely right, so exact-match would leave most groups without signal)."""
    return [(zlib.crc32(c.encode()) % 97) / 96 for c in completions]


class TwoTurns:
    """An environment for the multi-turn comparison: the model's first turn is answered with "=",
    the second ends the episode with a dense reward of both turns."""

    def reset(self, row):
        self.texts = []
        return [{"role": "user", "content": row["prompt"]}]

    def step(self, text):
        from grpo.envs import Reply
        self.texts.append(text)
        if len(self.texts) >= 2:
            return Reply(done=True, reward=dense_reward(None, ["|".join(self.texts)])[0])
        return Reply(messages=[{"role": "user", "content": "="}], reward=0.0)


def main(spec: str) -> None:
    from grpo.config import resolve
    from grpo.fast import lean_decode
    from grpo.train import train
    built = [0]
    init = lean_decode.LeanDecoder.__init__

    def counting_init(self, *a, **k):       # how often sampling took the lean step (checked by the test)
        built[0] += 1
        init(self, *a, **k)

    lean_decode.LeanDecoder.__init__ = counting_init
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")         # one group for every run of the job
    try:
        for overrides in json.loads(open(spec).read()):
            built[0] = 0
            train(resolve(overrides=overrides), log=lambda *a: None)
            rank = torch.distributed.get_rank()
            (Path(overrides["output_dir"]) / f"lean-decoders-rank{rank}.txt").write_text(str(built[0]))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
