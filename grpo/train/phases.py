"""The context each phase of a training step runs in, so the step itself reads as its stages.

`Phases.run(name)` wraps one phase: bf16 autocast where the config asks (the phases that run the
model), the heap policy the levers give that phase, the actor's gathered weights while sampling
under FSDP, the reference's release after the phases that read it, and the phase's wall time.
A `watch(name)` context, when given (bench/alloc_probe.py counts page faults with one), wraps
each phase too.
"""

from __future__ import annotations

import contextlib
import time

import torch

from ..parallel import fsdp

MODEL_PHASES = ("generate", "reference", "old_policy", "policy")
READS_REFERENCE = ("reference", "policy")


def autocast(cfg, device: torch.device, phase: str | None = None):
    """bf16 autocast where `bf16` asks (every model phase), or for the reference pass alone where
    `reference_dtype` does."""
    on = cfg.bf16 or (phase == "reference" and cfg.reference_dtype == "bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


class Phases:
    def __init__(self, cfg, device: torch.device, heap_policy, actor=None, reference=None, sharded: bool = False,
                 watch=None):
        self.cfg, self.device, self.heap_policy = cfg, device, heap_policy
        self.actor, self.reference, self.sharded, self.watch = actor, reference, sharded, watch
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def run(self, name: str):
        t = time.time()
        with contextlib.ExitStack() as stack:
            if self.watch is not None:
                stack.enter_context(self.watch(name))
            if name in MODEL_PHASES:
                stack.enter_context(autocast(self.cfg, self.device, name))
            stack.enter_context(self.heap_policy(name))
            if name == "generate" and self.sharded:
                stack.enter_context(fsdp.gathered(self.actor))
            yield
        if name in READS_REFERENCE and self.reference is not None:
            self.reference.release()          # a file-backed reference's pages leave memory
        self.times[name] = self.times.get(name, 0.0) + time.time() - t     # a phase may run more than once
