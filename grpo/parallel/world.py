"""Data-parallel training on torch.distributed (launched by torchrun, or `grpo train --nproc N`).

Each step's B prompts are drawn identically on every rank and split into W contiguous slices, so
rank r owns prompts [r*B/W, (r+1)*B/W) and all G completions of each. Everything that spans the
batch is computed from gathered values, so 1 process and W processes compute the same numbers:

  * rewards, completion lengths and per-function scores are all-gathered (they are small), and every
    rank runs the whole advantage pipeline on the global (B, G) batch, then keeps its own rows;
  * the sequence and token counts that normalise the loss are all-reduced sums;
  * gradients are summed over ranks (all_reduce) before clipping, so every rank takes the same
    optimizer step and the weights stay identical without ever being broadcast again;
  * health figures (KL, entropy, clip fractions, ...) are all-reduced sums, minima and maxima.

Sampling does not depend on the layout either: each prompt draws from its own generator, seeded by
(seed, step, the prompt's index in the global batch). Rank 0 logs, evaluates and writes
checkpoints; a checkpoint holds nothing rank-specific, so a run may resume with a different
number of processes. With one process (no torchrun) every collective here is the identity.
"""

from __future__ import annotations

import datetime
import hashlib
import os

import torch

from ..device import pick_device
from .fsdp import clip_grad_norm, is_sharded


def _all_reduce_flat(params) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


class World:
    """This process's place in the job: rank, size, and the collectives the trainer uses."""

    def __init__(self, rank: int = 0, size: int = 1, device: torch.device | None = None,
                 bucket_bytes: int = 32 * 2 ** 20):
        self.rank, self.size = rank, size
        self.device = device or torch.device("cpu")       # where collectives' small tensors live
        self.owns_group = False
        self.bucket_bytes = bucket_bytes                  # gradients summed per all_reduce

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------------------------ collectives
    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `t` along dim 0, in rank order (equal shapes on all ranks)."""
        if not self.active:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def gather_padded(self, t: torch.Tensor, dim: int = 1, value=0) -> torch.Tensor:
        """Like `gather`, for tensors whose size along `dim` differs by rank (padded with `value`)."""
        if not self.active:
            return t
        width = int(self.max(float(t.shape[dim])))
        pad = [0, 0] * (t.dim() - dim - 1) + [0, width - t.shape[dim]]
        return self.gather(torch.nn.functional.pad(t, pad, value=value))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.active:
            values = values.clone()
            torch.distributed.all_reduce(values)
        return values

    def max(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.item()

    def min(self, value: float) -> float:
        return -self.max(-value)

    def all(self, flag: bool) -> bool:
        return self.min(1.0 if flag else 0.0) > 0.5

    def any(self, flag: bool) -> bool:
        return self.max(1.0 if flag else 0.0) > 0.5

    def sum_grads(self, params) -> None:
        """Sum the gradients of `params` over ranks in place (a missing gradient counts as zero).
        Sharded parameters (sharding.py) are skipped: FSDP has summed theirs already."""
        if not self.active:
            return
        params = [p for p in params if p.requires_grad and not is_sharded(p)]
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # in buckets of about bucket_bytes: one flat copy of every gradient at once would hold a
        # second set of gradients at the step's memory peak
        bucket: list = []
        size = 0
        for p in params:
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            if size >= self.bucket_bytes:
                _all_reduce_flat(bucket)
                bucket, size = [], 0
        if bucket:
            _all_reduce_flat(bucket)

    def clip_grad_norm(self, params, max_norm: float, sharded: bool) -> torch.Tensor:
        """Clip the gradients of `params` by their global 2-norm (0: no clipping); the norm.
        Sharded, the pieces' squares are summed over processes (fsdp.clip_grad_norm)."""
        if sharded:
            return clip_grad_norm(params, max_norm, self)
        return torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))

    def broadcast_params(self, module) -> None:
        """Make every rank hold rank 0's trainable weights (e.g. a randomly initialised adapter)."""
        if self.active:
            for p in module.parameters():
                if p.requires_grad:
                    torch.distributed.broadcast(p.data, 0)

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def init(device_name: str, bucket_bytes: int = 32 * 2 ** 20) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a world of one.

    CPU ranks talk over gloo; CUDA ranks over NCCL, each on the GPU of its LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if size <= 1:
        return World(bucket_bytes=bucket_bytes), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    world = World(rank, size, device, bucket_bytes)
    if not torch.distributed.is_initialized():                # else: the caller owns the group
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(hours=2))
        world.owns_group = True
    return world, device


def close(world: World) -> None:
    if world.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def prompt_seed(seed: int, step: int, index: int) -> int:
    """The sampling seed of the prompt at `index` of step `step`'s global batch."""
    digest = hashlib.blake2b(f"{seed}/{step}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
