"""One GRPO step, top to bottom: sample -> score -> advantages -> reference -> update -> metrics.

  1. take B prompts, sample G completions each with the actor (recording pi_old log-probs);
  2. score each completion (weighted reward functions, optional overlong penalty);
     (1 and 2: rollouts.py, `draw_groups`)
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
from dataclasses import dataclass, replace

import torch

from ..algo import advantages as adv_mod
from ..algo import losses
from ..errors import NonFinite
from ..models.logprobs import reference_logprobs, token_stats
from ..parallel.world import World
from ..rollout import Rollout
from . import microbatch
from .metrics import step_metrics
from .phases import Phases
from .rollouts import Drawn, draw_groups
from .run import Run
from .update import single_update, update_policy

__all__ = ["Run", "Drawn", "StepBatch", "train_step", "collect_batch", "sample_groups", "advantages", "reference",
           "build_batch"]


@dataclass(frozen=True)
class StepBatch:
    """One step's batch, advantages in hand. Under data parallelism `rows`, `rollout`, `texts`,
    `adv`, `loss_mask` and `ref_logp` are this rank's share (prompts first_prompt .. first_prompt +
    b - 1 of the global batch); `rewards`, `per_fn`, `lengths` and `truncated` are gathered from all
    ranks. The reference phase fills `ref_logp` and `old_logp` (a new record)."""
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
    old_logp: torch.Tensor | None = None         # (n, L) the trainer's log pi_old, where a pass computed it
    entropy_mask: torch.Tensor | None = None     # (n, L) bool: the top-rho entropy tokens (top_entropy_quantile)
    draws: int = 1                               # dynamic sampling: draws of prompts_per_step prompts this step
    short: int = 0                               # dynamic sampling: equal-reward groups that filled the batch, global
    episodes: dict | None = None                 # --env: episode figures summed over ranks (env seconds: the slowest)


def gather_scores(world: World, rewards: torch.Tensor, per_fn: dict, failed: dict, roll: Rollout,
                  counted: torch.Tensor | None):
    """Every rank's rewards (b, G), per-function scores and failures, completion lengths,
    truncation and (`counted`, (n,)) sampled-token counts, in one packed gather, on the CPU: (rewards
    (B, G), per_fn, failed, lengths, truncated, counted (the lengths where None))."""
    n = rewards.numel()
    cols = [rewards.reshape(n), roll.lengths, roll.truncated, *per_fn.values(), *failed.values()]
    cols += [counted] if counted is not None else []
    every = world.gather(torch.stack([c.to(world.device, torch.float64).reshape(n) for c in cols], 1)).cpu()
    col = iter(every.unbind(1))
    out_rewards = next(col).to(rewards.dtype).contiguous().view(-1, rewards.shape[1])
    lengths = next(col).to(roll.lengths.dtype).contiguous()
    truncated = next(col).bool()
    out_fn = {k: next(col).to(v.dtype).contiguous() for k, v in per_fn.items()}
    out_failed = {k: next(col).bool() for k in failed}
    return (out_rewards, out_fn, out_failed, lengths, truncated,
            lengths if counted is None else next(col).to(counted.dtype).contiguous())


def build_batch(cfg, rows, roll: Rollout, texts, rewards, per_fn, world: World, first: int,
                history: list | None = None, failed: dict | None = None, weights: dict | None = None) -> StepBatch:
    """This rank's StepBatch from its sampled and scored rows: the advantage pipeline runs on the
    global batch (rewards, per-function scores and lengths gathered), then each rank keeps its
    rows; groups left out of the loss (zero-variance filter) are masked out. `ref_logp` is left
    for the reference phase."""
    G, b = cfg.group_size, len(rows)
    tokens = roll.loss_tokens
    # a trajectory with environment tokens: the advantages are those of its sampled tokens alone
    # (counts, positions and normalisations over the policy's tokens), then put at their places
    sampled = None if roll.sampled is None else tokens.sum(1)                       # (n,) the policy's tokens
    rewards, per_fn, failed, lengths, truncated, counted = gather_scores(world, rewards, per_fn, failed or {}, roll,
                                                                        sampled)
    L = roll.completion_ids.shape[1]
    estimate = adv_mod.estimator(cfg.advantage_estimator)
    B = rewards.shape[0]
    components = {k: (v.view(B, -1), weights[k]) for k, v in per_fn.items()} if weights else None
    width = L if sampled is None else int(sampled.max()) if tokens.numel() else 0
    full = estimate(rewards, counted, int(world.max(float(width))), cfg, history=list(history or []),
                    components=components)
    keep = (~adv_mod.zero_variance_groups(rewards) if cfg.filter_zero_variance_groups
            else torch.ones(rewards.shape[0], dtype=torch.bool))[first:first + b]
    loss_mask = tokens & keep.repeat_interleave(G).to(tokens.device)[:, None]
    if cfg.mask_truncated_completions:                 # a cut completion is not judged (DAPO's overlong filter)
        loss_mask = loss_mask & ~roll.truncated.to(loss_mask.device)[:, None]
    adv = full.rows(first, b, G, L) if roll.sampled is None else spread(full.rows(first, b, G, width), tokens)
    if cfg.env_credit == "turn" and roll.turns is not None:
        adv = with_turn_credit(adv, roll, G, cfg.env_turn_weight)
    kept = (entropy_mask(roll.entropy, loss_mask, cfg.top_entropy_quantile, world)
            if cfg.top_entropy_quantile < 1.0 else None)
    return StepBatch(rows, roll, texts, rewards, per_fn, failed, adv, loss_mask, None, lengths, truncated, first,
                     full.scaled_rewards, entropy_mask=kept)


def spread(adv: adv_mod.Advantages, tokens: torch.Tensor) -> adv_mod.Advantages:
    """Per-token advantages computed over each row's sampled tokens alone (row i's first n_i
    columns) put at those tokens' places in the trajectory (`tokens` (N, L), n_i True each)."""
    def put(x):
        out = torch.zeros(tokens.shape, dtype=x.dtype)
        out[tokens.cpu()] = x[adv.mask]
        return out
    return adv_mod.Advantages(adv.scaled_rewards, adv.sequence, put(adv.token), put(adv.normalized),
                              tokens.cpu().clone())


def with_turn_credit(adv: adv_mod.Advantages, roll: Rollout, G: int, weight: float) -> adv_mod.Advantages:
    """env_credit=turn: each sampled token also gets weight x its turn's group-relative advantage
    (advantages.turn_advantages), added after the estimator's per-token advantages (so token_credit
    and token_norm do not scale it). A rank holds whole groups, so the turn statistics are its own."""
    K = roll.turn_rewards.shape[1]
    turn = adv_mod.turn_advantages(roll.turn_rewards.cpu().double().view(-1, G, K)).view(-1, K)
    extra = weight * adv_mod.turn_token_advantages(turn, roll.turns.cpu())
    extra = torch.where(roll.loss_tokens.cpu(), extra, torch.zeros((), dtype=extra.dtype))
    return adv_mod.Advantages(adv.scaled_rewards, adv.sequence, adv.token + extra.to(adv.token.dtype),
                              adv.normalized + extra.to(adv.normalized.dtype), adv.mask)


def entropy_mask(entropy: torch.Tensor, loss_mask: torch.Tensor, rho: float, world: World) -> torch.Tensor:
    """The tokens of this rank whose sampling entropy is in the top-rho fraction of the whole
    batch's loss tokens (the threshold over every rank's, so it does not depend on the layout)."""
    local = entropy[loss_mask].double()
    every = world.gather_padded(local.to(world.device), dim=0, value=-1.0).cpu()
    every = every[every >= 0]                          # entropies are >= 0; -1 is the padding
    return losses.high_entropy_mask(entropy, loss_mask, rho, pool=every)


def collect_batch(run: Run, st, phases: Phases) -> StepBatch:
    """Steps 1-4 in one call (sample and score, advantages, reference): this rank's batch as the
    update takes it. Advances the data order and the baseline window in `st`."""
    return reference(run, advantages(run, st, sample_groups(run, st, phases)), phases)


def sample_groups(run: Run, st, phases: Phases) -> Drawn:
    """Steps 1-2: this rank's share of the step's prompts, sampled and scored (draw_groups)."""
    b = run.cfg.prompts_per_step // run.world.size
    return draw_groups(run, st, phases, b, run.world.rank * b)


def advantages(run: Run, st, drawn: Drawn) -> StepBatch:
    """Step 3: the advantages of the global batch (build_batch), this rank's rows kept, and the
    episodes' figures summed over ranks. Adds the step's scaled rewards to the baseline window."""
    cfg, world = run.cfg, run.world
    weights = {name: weight for name, (_, weight) in run.reward_fns.items()}
    if run.env is not None:
        weights = {"env": 1.0, **weights}
    batch = build_batch(cfg, drawn.rows, drawn.rollout, drawn.texts, drawn.rewards, drawn.per_fn, world,
                        world.rank * len(drawn.rows), st.history, drawn.failed, weights)
    episodes = None
    if drawn.episodes:
        keys = sorted(k for k in drawn.episodes if k != "env_seconds")
        sums = world.sum(torch.tensor([float(drawn.episodes[k]) for k in keys], dtype=torch.float64,
                                      device=world.device)).tolist()
        episodes = {**dict(zip(keys, sums)), "env_seconds": world.max(drawn.episodes["env_seconds"])}
    st.history.append(batch.scaled_rewards)         # the window baseline averages scaled rewards
    return replace(batch, draws=drawn.draws, short=drawn.short, episodes=episodes)


def reference(run: Run, batch: StepBatch, phases: Phases) -> StepBatch:
    """Step 4: log pi_ref of the sampled tokens where the KL term or ratio_vs=ref needs them, and
    the trainer's log pi_old where the rollout correction needs it before the update."""
    cfg, ref_logp, old_logp = run.cfg, None, None
    with phases.run("reference"):
        if run.ref is not None and (cfg.ratio_vs == "ref" or cfg.kl_estimator != "full"):
            ref_logp = reference_pass(run, batch.rollout)
    if needs_old_pass(cfg):
        with phases.run("old_policy"):
            old_logp = logprob_pass(run, batch.rollout, old_policy=True)
    return replace(batch, ref_logp=ref_logp, old_logp=old_logp)


def needs_old_pass(cfg) -> bool:
    """A pass of the actor before the update for its log pi_old: the rollout correction needs the
    trainer's pi_old, which the update's own forward gives only on a single update of the batch."""
    return cfg.rollout_correction != "none" and not single_update(cfg)


def reference_pass(run: Run, roll: Rollout) -> torch.Tensor:
    """(N, L) log pi_ref of the rollout's tokens, in micro-batches within `micro_batch_tokens`."""
    return logprob_pass(run, roll, old_policy=False)


def logprob_pass(run: Run, roll: Rollout, old_policy: bool) -> torch.Tensor:
    """(N, L) log-probs of the rollout's tokens under the reference, or (`old_policy`) under the
    actor as it is before the update, in micro-batches within `micro_batch_tokens`."""
    cfg = run.cfg

    def logp(sub: Rollout) -> torch.Tensor:
        if old_policy:
            with torch.no_grad():
                return token_stats(run.actor, sub, temperature=cfg.temperature, chunk=cfg.logprob_chunk,
                                   head=run.plugged.head).logp
        return reference_logprobs(run.ref, sub, temperature=cfg.temperature, chunk=cfg.logprob_chunk,
                                  head=run.plugged.head)

    seqs = torch.arange(roll.completion_ids.shape[0], device=roll.completion_ids.device)
    parts = microbatch.plan(seqs, roll.lengths, roll.prompt_ids.shape[1], cfg.micro_batch_tokens)
    if len(parts) == 1:
        return logp(roll)
    out = torch.zeros_like(roll.logprobs)
    for part in parts:
        sub, width = microbatch.trim(roll.select(part))
        out[part, :width] = logp(sub).to(out.dtype)
    return out


def train_step(run: Run, st) -> tuple[dict, StepBatch]:
    """One GRPO step, its stages in order; returns its metrics (for the whole batch, on every rank)."""
    t0 = time.time()
    phases = run.phases()
    drawn = sample_groups(run, st, phases)                  # 1-2. sample G completions per prompt, score them
    batch = advantages(run, st, drawn)                      # 3. group-relative advantages, the loss mask
    batch = reference(run, batch, phases)                   # 4. log pi_ref (and pi_old) where needed
    with phases.run("policy"):                              # 5. the policy update
        stats = update_policy(run, st.opt, st.sched, batch, st.beta_ctl.beta, st.shuffle_gen)
    st.skipped_total += stats.skipped
    if stats.nonfinite and run.cfg.nonfinite == "stop":
        raise NonFinite(f"update: a non-finite {stats.nonfinite} at step {st.step}")
    times = {**phases.times, "step": time.time() - t0}
    metrics = step_metrics(run.cfg, st.step, batch, stats, st.beta_ctl.beta, st.sched.get_last_lr()[0], times,
                           st.skipped_total)                # 6. the step's record
    st.beta_ctl.update(stats.kl)
    return metrics, batch
