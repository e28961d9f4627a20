"""What a run holds fixed from step to step (`Run`): the settings, the models, the data, the reward
functions, the processes, and the pieces the levers plug in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..parallel.world import World
from .phases import Phases
from .plug import Plugged


@dataclass
class Run:
    """What a run holds fixed from step to step: settings, models, data, rewards, processes and
    the pieces the levers plug in (train/plug.py)."""
    cfg: Any
    actor: Any
    ref: Any                  # models.reference.Reference, or None
    tokenizer: Any
    task: Any
    reward_fns: dict
    device: torch.device
    world: World
    plugged: Plugged
    shard: bool = False
    watch: Any = None         # a phase name -> context, wrapped around each phase (phases.py)
    env: Any = None           # --env's class: each completion is an episode (grpo/envs)
    callbacks: Any = None     # train/inputs.Callbacks: the caller's callbacks (rank 0's; none elsewhere)

    def phases(self) -> Phases:
        return Phases(self.cfg, self.device, self.plugged.heap_policy, self.actor, self.ref, self.shard, self.watch)
