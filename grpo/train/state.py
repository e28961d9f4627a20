"""Everything of a run that changes from step to step besides the weights: the optimizer and its
schedule, every random generator, the data position, beta and the baseline window. Saved whole in
checkpoints (checkpoint.py), in the same layout sharded or not."""

from __future__ import annotations

import functools
import math
import random
from collections import deque
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..parallel import fsdp
from .update import trainable


class BetaController:
    """Fixed beta, or (kl_target set) a multiplicative controller: beta grows when the measured KL
    is above the target and shrinks below it, by at most `kl_adapt_rate` per step."""

    def __init__(self, cfg: TrainConfig):
        self.beta, self.target, self.rate = cfg.beta, cfg.kl_target, cfg.kl_adapt_rate

    def update(self, kl: float | None) -> float:
        if self.target is not None and kl is not None and math.isfinite(kl):
            error = max(-1.0, min(1.0, (kl - self.target) / self.target))
            self.beta = max(self.beta * (1.0 + self.rate * error), 1e-6)
        return self.beta


@dataclass
class RunState:
    """Everything that changes from step to step besides the weights; saved in checkpoints."""
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    data_rng: random.Random
    shuffle_gen: torch.Generator
    beta_ctl: BetaController
    history: deque
    step: int = 0
    skipped_total: int = 0
    eval_before: dict | None = None

    def to_dict(self) -> dict:
        return dict(opt=self.opt.state_dict(), sched=self.sched.state_dict(), data_rng=self.data_rng.getstate(),
                    shuffle_gen=self.shuffle_gen.get_state(),
                    torch_rng=torch.get_rng_state(), python_rng=random.getstate(), beta=self.beta_ctl.beta,
                    history=list(self.history), step=self.step, skipped_total=self.skipped_total,
                    eval_before=self.eval_before)

    def load(self, d: dict) -> None:
        self.opt.load_state_dict(d["opt"])
        self.sched.load_state_dict(d["sched"])
        self.data_rng.setstate(d["data_rng"])
        self.shuffle_gen.set_state(d["shuffle_gen"])
        torch.set_rng_state(d["torch_rng"])
        random.setstate(d["python_rng"])
        self.beta_ctl.beta = d["beta"]
        self.history.extend(d["history"])
        self.step, self.skipped_total, self.eval_before = d["step"], d["skipped_total"], d["eval_before"]


def optimizer_steps(cfg: TrainConfig) -> int:
    """Optimizer steps of the whole run: each step's passes times its minibatches."""
    return cfg.max_steps * cfg.updates_per_batch * cfg.minibatches


def lr_factor(cfg: TrainConfig, s: int) -> float:
    """The learning rate's factor at optimizer step s (0-based): a linear warm-up over warmup_steps,
    then constant, or a linear or cosine decay that reaches 0 after the run's last optimizer step."""
    if s < cfg.warmup_steps:
        return (s + 1) / (cfg.warmup_steps + 1)
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, optimizer_steps(cfg) - cfg.warmup_steps)
    done = min(1.0, (s - cfg.warmup_steps) / span)
    return 1.0 - done if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))


def new_run_state(cfg: TrainConfig, actor, device, shard: bool = False) -> RunState:
    params = trainable(actor)
    # fused: one kernel per step, without the foreach path's parameter-sized temporaries
    opt = torch.optim.AdamW(fsdp.param_groups(params) if shard else params, lr=cfg.lr,
                            betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
                            fused=torch.device(device).type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, cfg))
    return RunState(opt, sched, random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1), BetaController(cfg),
                    deque(maxlen=cfg.baseline_window - 1))


def whole_state(actor, st: RunState, shard: bool) -> tuple[dict | None, dict]:
    """(the actor's whole weights, or None to take them from the actor; the run state) for a
    checkpoint. Sharded, every process must call: the pieces are gathered."""
    state = st.to_dict()
    if not shard:
        return None, state
    state["opt"] = fsdp.full_optimizer_state(st.opt, trainable(actor))
    state["sched"] = fsdp.fit_scheduler_state(state["sched"], 1)
    return fsdp.full_state_dict(actor), state
