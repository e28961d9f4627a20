"""Run several training configs in one torchrun job (tests/test_distributed.py launches it).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py SPEC.json

SPEC.json: a list of override dicts, each a complete `grpo train` configuration.
"""

from __future__ import annotations

import json
import sys
import zlib

import torch


def dense_reward(prompts, completions, **_):
    """A reward that differs between almost any two completions (a random tiny model's outputs
    are rarely right, so exact-match would leave most groups without signal)."""
    return [(zlib.crc32(c.encode()) % 97) / 96 for c in completions]


def main(spec: str) -> None:
    from grpo import distributed
    from grpo.config import resolve
    from grpo.train import train
    distributed.BUCKET = 4096          # the tiny model's gradients then go over in many all_reduce buckets
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")         # one group for every run of the job
    try:
        for overrides in json.loads(open(spec).read()):
            train(resolve(overrides=overrides), log=lambda *a: None)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
