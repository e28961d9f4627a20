"""One GRPO step, top to bottom: sample -> score -> advantages -> reference -> update -> metrics.

  1. take B prompts, sample G completions each with the actor (recording pi_old log-probs);
  2. score each completion (weighted reward functions, optional overlong penalty);
  3. `build_batch`: advantages on the global batch (the estimator of `advantage_estimator`), the
     loss mask (zero-variance groups dropped where asked);
  4. reference log-probs, when the KL term or ratio_vs=ref needs them;
  5. the update (update.py): `updates_per_batch` passes, each `minibatches` optimizer steps;
  6. one metrics dict (metrics.py).
Each phase runs inside `Phases.run` (phases.py), which owns autocast, memory and timing. Under
data parallelism this runs on every rank with its share of the prompts (grpo/parallel/world.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..algo import advantages as adv_mod
from ..data.prompts import encode_for_model
from ..models.logprobs import reference_logprobs
from ..models.lora import lora_merged
from ..models.loading import hf_model
from ..parallel.world import World, prompt_seed
from ..rewards import score as score_rewards
from ..rollout import Rollout, SamplingSettings, decode
from . import microbatch
from .levers import Plugged
from .metrics import step_metrics
from .phases import Phases
from .update import update_policy


@dataclass
class Run:
    """What a run holds fixed from step to step: settings, models, data, rewards, processes and
    the pieces the levers plug in (train/levers.py)."""
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

    def phases(self) -> Phases:
        return Phases(self.cfg, self.device, self.plugged.memory, self.actor, self.ref, self.shard, self.watch)


@dataclass
class StepBatch:
    """One step's batch. Under data parallelism `rows`, `rollout`, `texts`, `adv`, `loss_mask` and
    `ref_logp` are this rank's share (prompts first_prompt .. first_prompt + b - 1 of the global
    batch); `rewards`, `per_fn`, `lengths` and `truncated` are gathered from all ranks."""
    rows: list[dict]
    rollout: Rollout
    texts: list[str]
    rewards: torch.Tensor            # (B, G) final rewards, global
    per_fn: dict                     # name -> (N,), global
    failed: dict                     # name -> (N,) bool: completions the function could not score, global
    adv: adv_mod.Advantages          # this rank's rows
    loss_mask: torch.Tensor          # (n, L) valid tokens of groups kept in the loss
    ref_logp: torch.Tensor | None    # (n, L)
    lengths: torch.Tensor            # (N,) completion lengths, global
    truncated: torch.Tensor          # (N,) bool, global
    first_prompt: int = 0
    scaled_rewards: torch.Tensor | None = None   # (B, G) global, for the window baseline


def sampling_settings(cfg, tokenizer, **override) -> SamplingSettings:
    return SamplingSettings(**{**dict(
        max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens, eos_ids=(tokenizer.eos_token_id,),
        pad_id=tokenizer.pad_token_id, num_samples=cfg.group_size, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p), **override})


def sampling_generators(cfg, step: int, first: int, count: int, device) -> list[torch.Generator]:
    """One generator per prompt, seeded by (seed, step, index in the global batch): a prompt's
    completions are the same whichever rank, or batch layout, samples them."""
    return [torch.Generator(device=device).manual_seed(prompt_seed(cfg.seed, step, first + i))
            for i in range(count)]


def sample(run: Run, rows: list[dict], generator) -> tuple[Rollout, list[str]]:
    """B prompts -> B*G completions, sequence index b*G + g, through the run's engine (LoRA's
    adapter merged into the weights while sampling)."""
    cfg, actor, tok = run.cfg, run.actor, run.tokenizer
    ids, mask = encode_for_model(tok, [r["prompt"] for r in rows], run.device,
                                 system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)
    with lora_merged(actor, run.plugged.merged_product):
        roll = run.plugged.engine.generate(hf_model(actor), ids, mask, sampling_settings(cfg, tok), generator)
    return roll, decode(tok, roll)


def score(cfg, rows, texts, roll, reward_fns) -> tuple[torch.Tensor, dict, dict]:
    """(rewards (B, G), per-function scores (N,) each, per-function failures (N,) each) of this
    rank's completions."""
    G = cfg.group_size
    prompts = [r["prompt"] for r in rows for _ in range(G)]
    columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
    columns["completion_length"] = roll.lengths.tolist()       # for length-aware rewards (overlong)
    total, per_fn, _, failed = score_rewards(reward_fns, prompts, texts, columns)
    return total.view(len(rows), G), per_fn, failed


def build_batch(cfg, rows, roll: Rollout, texts, rewards, per_fn, world: World, first: int,
                history: list | None = None, failed: dict | None = None, weights: dict | None = None) -> StepBatch:
    """This rank's StepBatch from its sampled and scored rows: the advantage pipeline runs on the
    global batch (rewards, per-function scores and lengths gathered), then each rank keeps its
    rows; groups left out of the loss (zero-variance filter) are masked out. `ref_logp` is left
    for the reference phase."""
    G, b = cfg.group_size, len(rows)
    rewards = world.gather(rewards.to(world.device)).cpu()
    per_fn = {k: world.gather(v.to(world.device)).cpu() for k, v in per_fn.items()}
    failed = {k: world.gather(v.to(world.device, torch.uint8)).cpu().bool() for k, v in (failed or {}).items()}
    lengths = world.gather(roll.lengths.to(world.device)).cpu()
    truncated = world.gather(roll.truncated.to(world.device, torch.uint8)).cpu().bool()
    L = roll.completion_ids.shape[1]
    estimate = adv_mod.estimator(cfg.advantage_estimator)
    B = rewards.shape[0]
    components = {k: (v.view(B, -1), weights[k]) for k, v in per_fn.items()} if weights else None
    full = estimate(rewards, lengths, int(world.max(float(L))), cfg, history=list(history or []),
                    components=components)
    keep = (~adv_mod.zero_variance_groups(rewards) if cfg.filter_zero_variance_groups
            else torch.ones(rewards.shape[0], dtype=torch.bool))[first:first + b]
    loss_mask = roll.completion_mask & keep.repeat_interleave(G).to(roll.completion_mask.device)[:, None]
    if cfg.mask_truncated_completions:                 # a cut completion is not judged (DAPO's overlong filter)
        loss_mask = loss_mask & ~roll.truncated.to(loss_mask.device)[:, None]
    return StepBatch(rows, roll, texts, rewards, per_fn, failed, full.rows(first, b, G, L), loss_mask, None, lengths,
                     truncated, first, full.scaled_rewards)


def collect_batch(run: Run, st, phases: Phases) -> StepBatch:
    """Steps 1-4: this rank's prompts sampled, scored, turned into advantages, and (where needed)
    scored by the reference. Advances the data order and the baseline window in `st`."""
    cfg, world = run.cfg, run.world
    every = run.task.sample_train(st.data_rng, cfg.prompts_per_step)     # the same global batch on every rank
    b = cfg.prompts_per_step // world.size
    first = world.rank * b
    rows = every[first:first + b]
    run.actor.eval()
    with phases.run("generate"):
        roll, texts = sample(run, rows, sampling_generators(cfg, st.step, first, b, run.device))
    run.actor.train()
    with phases.run("score"):
        rewards, per_fn, failed = score(cfg, rows, texts, roll, run.reward_fns)
    weights = {name: weight for name, (_, weight) in run.reward_fns.items()}
    batch = build_batch(cfg, rows, roll, texts, rewards, per_fn, world, first, st.history, failed, weights)
    st.history.append(batch.scaled_rewards)         # the window baseline averages scaled rewards
    with phases.run("reference"):
        if run.ref is not None and (cfg.ratio_vs == "ref" or cfg.kl_estimator != "full"):
            batch.ref_logp = reference_pass(run, roll)
    return batch


def reference_pass(run: Run, roll: Rollout) -> torch.Tensor:
    """(N, L) log pi_ref of the rollout's tokens, in micro-batches within `micro_batch_tokens`."""
    cfg = run.cfg
    seqs = torch.arange(roll.completion_ids.shape[0], device=roll.completion_ids.device)
    parts = microbatch.plan(seqs, roll.lengths, roll.prompt_ids.shape[1], cfg.micro_batch_tokens)
    if len(parts) == 1:
        return reference_logprobs(run.ref, roll, temperature=cfg.temperature, chunk=cfg.logprob_chunk,
                                  head=run.plugged.head)
    out = torch.zeros_like(roll.logprobs)
    for part in parts:
        sub, width = microbatch.trim(roll.select(part))
        out[part, :width] = reference_logprobs(run.ref, sub, temperature=cfg.temperature, chunk=cfg.logprob_chunk,
                                               head=run.plugged.head).to(out.dtype)
    return out


def train_step(run: Run, st) -> tuple[dict, StepBatch]:
    """One GRPO step; returns its metrics (for the whole batch, on every rank)."""
    t0 = time.time()
    phases = run.phases()
    batch = collect_batch(run, st, phases)
    with phases.run("policy"):
        acc = update_policy(run, st.opt, st.sched, batch, st.beta_ctl.beta, st.shuffle_gen)
    st.skipped_total += acc.skipped
    times = {**phases.times, "step": time.time() - t0}
    metrics = step_metrics(run.cfg, st.step, batch, acc, st.beta_ctl.beta, st.sched.get_last_lr()[0], times,
                           st.skipped_total)
    st.beta_ctl.update(metrics["kl"])
    return metrics, batch
