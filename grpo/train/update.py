"""The policy update of one step: `updates_per_batch` passes over the sampled batch, each split into
`minibatches` optimizer steps over whole groups, each step summed over its micro-batches (at least
`grad_accum`, each within `micro_batch_tokens`: microbatch.py) and over processes. The per-token
loss is grpo/algo/token_loss.py's (the one `grpo explain` prints), aggregated with the minibatch's
own counts, so micro-batches and processes add up to the loss of the whole minibatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..algo import losses
from ..algo.token_loss import TokenLoss, token_loss
from ..config import rollout_is_bounds
from ..models.logprobs import token_stats
from ..parallel.fsdp import with_stand_ins
from ..parallel.world import World
from . import microbatch


def token_terms(run, batch, micro: torch.Tensor, beta: float, reuse_logp_as_old: bool) -> tuple[torch.Tensor, TokenLoss]:
    """Forward the actor on sequences `micro` and build their per-token loss (algo/token_loss.py):
    (the mask of valid tokens of groups kept in the loss, the loss and its parts), all (n, W)."""
    cfg = run.cfg
    roll, W = microbatch.trim(batch.rollout.select(micro))
    full_kl = cfg.kl_estimator == "full" and run.ref is not None
    fwd = token_stats(run.actor, roll, temperature=cfg.temperature, chunk=cfg.logprob_chunk,
                      ref=run.ref if full_kl else None, head=run.plugged.head, entropy_grad=cfg.entropy_coef > 0)
    # the trainer's own log-probs under the weights that sampled (pi_old as the trainer computes it):
    # this pass's, detached, on the first and only update; else the old-policy pass's, where one ran
    if reuse_logp_as_old:
        train_old = fwd.logp.detach()
    else:
        train_old = batch.old_logp[micro, :W] if batch.old_logp is not None else None
    terms = token_loss(cfg, fwd.logp, batch.adv.normalized.to(fwd.logp.device)[micro, :W], roll.loss_tokens,
                       sampler_logp=roll.logprobs, beta=beta, old_logp=train_old,
                       ref_logp=batch.ref_logp[micro, :W] if batch.ref_logp is not None else None,
                       full_kl=fwd.full_kl if full_kl else None, entropy=fwd.entropy,
                       keep=batch.entropy_mask[micro, :W] if batch.entropy_mask is not None else None,
                       bounds=rollout_is_bounds(cfg))
    return batch.loss_mask[micro, :W], terms


@dataclass(frozen=True)
class MismatchStats:
    """Sampler against trainer over the first pass's tokens (where the trainer's pi_old is known),
    named as the `mismatch/*` metrics they feed."""
    kl: float                    # mean k3 estimate of KL(pi_sampler || pi_train)
    logp_diff_mean: float        # mean |log pi_train_old - log pi_sampler|
    logp_diff_max: float
    weight_mean: float           # the rollout correction's weight
    weight_max: float
    masked_frac: float           # tokens the correction masked


@dataclass(frozen=True)
class UpdateStats:
    """One step's update over all ranks, each field named as the metric it feeds (token means over
    the loss tokens of every micro-batch and pass)."""
    loss: float | None           # mean loss of the optimizer steps applied (None: none was)
    policy_loss: float
    kl: float | None             # the KL term (None: the run has no reference); the beta controller reads it
    entropy: float
    ratio_mean: float
    ratio_min: float | None
    ratio_max: float | None
    clip_low_frac: float
    clip_high_frac: float
    grad_norm: float | None      # mean over the optimizer steps applied
    updates: int                 # optimizer steps applied
    skipped: int                 # optimizer steps skipped as non-finite
    nonfinite: str | None        # what was non-finite in a skipped one ("loss", "gradient norm")
    mismatch: MismatchStats | None


class _Sums:
    """Token-weighted sums of the health figures over every micro-batch of a step, as they are made
    (UpdateStats is their summary)."""

    SUMS = ("tokens", "policy", "kl", "entropy", "ratio", "clip_low", "clip_high", "mm_tokens", "mm_kl",
            "mm_weight", "mm_masked", "mm_abs_diff")

    def __init__(self):
        self.loss, self.updates, self.skipped, self.grad_norm = 0.0, 0, 0, 0.0
        self.nonfinite: str | None = None
        self.tokens = self.policy = self.kl = self.entropy = self.ratio = self.clip_low = self.clip_high = 0.0
        self.ratio_min, self.ratio_max = math.inf, -math.inf
        # sampler vs trainer, counted on the first pass only (each token once)
        self.mm_tokens = self.mm_kl = self.mm_weight = self.mm_masked = self.mm_abs_diff = 0.0
        self.mm_weight_max = self.mm_abs_diff_max = -math.inf
        self.count_mismatch = True

    def reduce(self, world: World) -> None:
        """Sum the token-weighted figures over ranks (the losses are summed as they are made)."""
        if world.active:
            sums = world.sum(torch.tensor([getattr(self, k) for k in self.SUMS], dtype=torch.float64,
                                          device=world.device))
            for k, v in zip(self.SUMS, sums.tolist()):
                setattr(self, k, v)
            self.ratio_min, self.ratio_max = world.min(self.ratio_min), world.max(self.ratio_max)
            self.mm_weight_max, self.mm_abs_diff_max = world.max(self.mm_weight_max), world.max(self.mm_abs_diff_max)

    def add(self, t: TokenLoss, mask: torch.Tensor) -> None:
        if not mask.any():               # every group here was filtered out: nothing to count
            return
        m = mask.float()
        self.tokens += m.sum().item()
        self.policy += (t.policy.detach() * m).sum().item()
        self.entropy += (t.entropy * m).sum().item()
        self.ratio += (t.ratio * m).sum().item()
        self.clip_low += (t.clipped_low & mask).sum().item()
        self.clip_high += (t.clipped_high & mask).sum().item()
        self.ratio_min = min(self.ratio_min, t.ratio[mask].min().item())
        self.ratio_max = max(self.ratio_max, t.ratio[mask].max().item())
        if t.kl is not None:
            self.kl += (t.kl.detach() * m).sum().item()
        if t.mismatch is not None and self.count_mismatch:
            d = t.mismatch.log_ratio[mask]
            w = t.mismatch.weight[mask]
            self.mm_tokens += d.numel()
            self.mm_kl += losses.mismatch_kl(d.double()).sum().item()
            self.mm_weight += w.double().sum().item()
            self.mm_masked += (t.mismatch.masked & mask).sum().item()
            self.mm_abs_diff += d.abs().double().sum().item()
            self.mm_weight_max = max(self.mm_weight_max, w.max().item())
            self.mm_abs_diff_max = max(self.mm_abs_diff_max, d.abs().max().item())

    def stats(self, has_reference: bool) -> UpdateStats:
        n_up, tok = max(self.updates, 1), max(self.tokens, 1.0)
        mm = None
        if self.mm_tokens:
            n = self.mm_tokens
            mm = MismatchStats(self.mm_kl / n, self.mm_abs_diff / n, self.mm_abs_diff_max, self.mm_weight / n,
                               self.mm_weight_max, self.mm_masked / n)
        return UpdateStats(
            loss=self.loss / n_up if self.updates else None, policy_loss=self.policy / tok,
            kl=self.kl / tok if has_reference else None, entropy=self.entropy / tok, ratio_mean=self.ratio / tok,
            ratio_min=self.ratio_min if math.isfinite(self.ratio_min) else None,
            ratio_max=self.ratio_max if math.isfinite(self.ratio_max) else None,
            clip_low_frac=self.clip_low / tok, clip_high_frac=self.clip_high / tok,
            grad_norm=self.grad_norm / n_up if self.updates else None, updates=self.updates, skipped=self.skipped,
            nonfinite=self.nonfinite, mismatch=mm)


def single_update(cfg) -> bool:
    """One optimizer step per sampled batch: pi_old is then pi_theta in value, and the update's
    own forward (detached) gives the trainer's log pi_old."""
    return cfg.updates_per_batch == 1 and cfg.minibatches == 1


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _minibatch_seqs(batch, groups: torch.Tensor, G: int) -> torch.Tensor:
    """The sequence indices (local to this rank) of the minibatch's groups that this rank holds."""
    lo = batch.first_prompt
    hi = lo + batch.rollout.completion_ids.shape[0] // G
    mine = groups[(groups >= lo) & (groups < hi)] - lo
    return (mine[:, None] * G + torch.arange(G)[None, :]).flatten().to(batch.rollout.completion_ids.device)


def micro_plan(run, batch, seqs: torch.Tensor) -> list[torch.Tensor]:
    """The micro-batches of one minibatch's sequences (microbatch.plan)."""
    return microbatch.plan(seqs, batch.rollout.lengths, batch.rollout.prompt_ids.shape[1],
                           run.cfg.micro_batch_tokens, run.cfg.grad_accum)


def _accumulate(run, batch, seqs, counts, beta, reuse_logp_as_old, sums: _Sums) -> tuple[float, bool]:
    """Forward and backward every micro-batch of one minibatch; (its summed loss, all finite)."""
    cfg = run.cfg
    num_seqs, num_tokens = counts
    total, finite = 0.0, True
    parts = micro_plan(run, batch, seqs)
    count = int(run.world.max(float(len(parts)))) if run.shard else len(parts)
    # Dr. GRPO's constant: the longest a completion can be (an episode: its token budget)
    longest = cfg.env_max_tokens if cfg.env else cfg.max_new_tokens
    for micro, stand_in in with_stand_ins(parts, count, seqs.device):
        mask, terms = token_terms(run, batch, micro, beta, reuse_logp_as_old)
        loss = losses.aggregate(terms.per_token, mask, cfg.loss_aggregation, longest, num_seqs, num_tokens)
        if stand_in:
            loss = loss * 0.0                                # zero gradients, same collectives
        if not torch.isfinite(loss):
            finite = False
            if not run.shard:                 # sharded: every process must still run every backward
                break
        loss.backward()
        if not stand_in:
            total += loss.item()
            sums.add(terms, mask)
    return total, finite


def _optimizer_step(run, opt, sched, params, loss: float, finite: bool, sums: _Sums) -> None:
    """Sum the gradients over processes, clip, and step, or skip a non-finite update untouched."""
    world = run.world
    finite = world.all(finite)
    if finite:
        world.sum_grads(params)
        loss = world.sum(torch.tensor([loss], dtype=torch.float64, device=world.device)).item()
    grad_norm = world.clip_grad_norm(params, run.cfg.max_grad_norm, run.shard)
    if not finite or not torch.isfinite(grad_norm):
        opt.zero_grad(set_to_none=True)     # weights untouched
        sums.skipped += 1
        sums.nonfinite = sums.nonfinite or ("loss" if not finite else "gradient norm")
        return
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)         # free the gradients before the next rollout
    sums.loss += loss
    sums.grad_norm += grad_norm.item()
    sums.updates += 1


def update_policy(run, opt, sched, batch, beta: float, shuffle: torch.Generator) -> UpdateStats:
    """Every optimizer step of one sampled batch; the step's health figures (over all ranks)."""
    cfg, world = run.cfg, run.world
    B, G = batch.rewards.shape                                         # the global batch
    reuse_logp_as_old = single_update(cfg)
    params = trainable(run.actor)
    sums = _Sums()
    for n_pass in range(cfg.updates_per_batch):
        sums.count_mismatch = n_pass == 0
        order = torch.randperm(B, generator=shuffle) if cfg.minibatches > 1 else torch.arange(B)
        for groups in torch.tensor_split(order, cfg.minibatches):
            seqs = _minibatch_seqs(batch, groups, G)
            mb_mask = batch.loss_mask[seqs]
            # the minibatch's own counts (over all ranks) normalise every micro-batch, so their sum
            # over micro-batches and ranks is the minibatch loss
            counts = world.sum(torch.stack([losses.sequence_count(mb_mask), mb_mask.sum()]).double().to(world.device))
            num_seqs, num_tokens = counts[0].item(), counts[1].item()
            if num_tokens == 0:
                continue
            opt.zero_grad(set_to_none=True)
            loss, finite = _accumulate(run, batch, seqs, (num_seqs, num_tokens), beta, reuse_logp_as_old, sums)
            _optimizer_step(run, opt, sched, params, loss, finite, sums)
    sums.reduce(world)
    return sums.stats(has_reference=run.ref is not None)
