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

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..algo import advantages as adv_mod
from ..algo import losses
from ..data.prompts import encode_for_model
from ..envs import episode_limits, run_episodes
from ..models.logprobs import reference_logprobs, token_stats
from ..models.lora import lora_merged, sampling_copy
from ..models.loading import hf_model
from ..parallel.world import World, prompt_seed
from ..errors import NonFinite
from ..rewards import score as score_rewards
from ..rewards.scoring import IDS, completion_ids, wants_ids
from ..rollout import Rollout, SamplingSettings, decode
from ..rollout.base import concat
from . import microbatch
from .plug import Plugged
from .metrics import step_metrics
from .phases import Phases
from .update import single_update, update_policy


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


@dataclass(frozen=True)
class Drawn:
    """This rank's groups of one step, sampled and scored (one draw of prompts, or with dynamic
    sampling the groups kept from several). Shapes: b prompts of G completions, N = b * G."""
    rows: list[dict]
    rollout: Rollout                 # (N, L)
    texts: list[str]                 # N completions (an episode: its conversation)
    rewards: torch.Tensor            # (b, G) final rewards
    per_fn: dict                     # name -> (N,) each reward function's scores
    failed: dict                     # name -> (N,) bool: completions the function could not score
    episodes: dict | None = None     # --env: this rank's episode figures (turns, tool calls, ...)
    draws: int = 1                   # dynamic sampling: draws of prompts_per_step prompts
    short: int = 0                   # dynamic sampling: equal-reward groups that filled the batch, all ranks


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


def sampling_settings(cfg, tokenizer, **override) -> SamplingSettings:
    return SamplingSettings(**{**dict(
        max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens, eos_ids=(tokenizer.eos_token_id,),
        pad_id=tokenizer.pad_token_id, num_samples=cfg.group_size, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, record_entropy=cfg.top_entropy_quantile < 1.0), **override})


def sampling_seeds(cfg, step: int, first: int, count: int) -> list[int]:
    """One seed per prompt, from (seed, step, index in the global batch): a prompt's completions
    are the same whichever rank, or batch layout, samples them."""
    return [prompt_seed(cfg.seed, step, first + i) for i in range(count)]


@contextlib.contextmanager
def engine_model(run: Run):
    """The model the run's engine samples from, gradients off: the actor as it is for an engine
    that takes its weights from it itself (`owns_weights`: LoRA merged and cast inside the
    engine); else the actor, or its rollout_dtype copy, with LoRA's adapter merged into the
    weights while inside."""
    if getattr(run.plugged.engine, "owns_weights", False):
        with torch.no_grad():
            yield hf_model(run.actor)
        return
    model = sampler_model(run)
    with lora_merged(model, run.plugged.merged_product):
        yield hf_model(model)


def sample_completions(run: Run, rows: list[dict], seeds: list[int]) -> tuple[Rollout, list[str]]:
    """B prompts -> B*G completions, sequence index b*G + g, through the run's engine (one seed
    per prompt)."""
    cfg, tok = run.cfg, run.tokenizer
    ids, mask = encode_for_model(tok, [r["prompt"] for r in rows], run.device,
                                 system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)
    with engine_model(run) as model:
        roll = run.plugged.engine.generate(model, ids, mask, sampling_settings(cfg, tok), seeds)
    return roll, decode(tok, roll)


def sample_episodes(run: Run, rows: list[dict], step: int, first: int
                    ) -> tuple[Rollout, list[str], torch.Tensor, list[str], dict]:
    """B rows -> B*G episodes in the run's environment (index b*G + g), each with its own
    generator seeded by (seed, step, prompt index, g). (trajectories, conversation texts,
    episode rewards (B, G), each episode's last model turn, the episodes' figures)."""
    cfg, tok, G = run.cfg, run.tokenizer, run.cfg.group_size
    envs = [run.env() for _ in rows for _ in range(G)]
    ep_rows = [r for r in rows for _ in range(G)]
    gens = [torch.Generator(device=run.device).manual_seed((prompt_seed(cfg.seed, step, first + i) + g) % (1 << 63))
            for i in range(len(rows)) for g in range(G)]
    with engine_model(run) as model:
        roll, eps, times = run_episodes(run.plugged.engine, model, tok, envs, ep_rows,
                                        sampling_settings(cfg, tok, num_samples=1), gens,
                                        episode_limits(cfg),
                                        system_prompt=cfg.system_prompt, chat_template=cfg.chat_template,
                                        tools=getattr(run.env, "tools", None) or None, device=run.device)
    stats = dict(episodes=len(eps), turns=sum(e.turns for e in eps), tool_calls=sum(e.tool_calls for e in eps),
                 tool_errors=sum(e.tool_errors for e in eps),
                 env_tokens=int((roll.completion_mask & ~roll.loss_tokens).sum()),
                 ended_by_env=sum(not e.truncated for e in eps), env_seconds=times["environment"])
    texts = [conversation_text(e.messages) for e in eps]
    rewards = torch.tensor([0.0 if e.reward is None else e.reward for e in eps]).view(len(rows), G)
    finals = [next((m["content"] for m in reversed(e.messages) if m["role"] == "assistant"), "") for e in eps]
    return roll, texts, rewards, finals, stats


class Conversation(str):
    """An episode's turns after the opening as `role: content` lines (the completion text of
    completions.jsonl and the trackers), carrying the turns themselves in `messages` (the report's
    conversation view) and the messages the episode opened with in `opening` (what the environment's
    reset returned, after the system prompt)."""
    messages: list[dict]
    opening: list[dict]


def conversation_text(messages: list[dict]) -> Conversation:
    """A message the token budget kept from the model keeps its `unseen` mark (`role (unseen):`)."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    turns = [{"role": m["role"], "content": m["content"], **({"unseen": True} if m.get("unseen") else {})}
             for m in messages[first:]]
    text = Conversation("\n".join(f"{m['role']}{' (unseen)' if m.get('unseen') else ''}: {m['content']}"
                                   for m in turns))
    text.messages = turns
    text.opening = [{"role": m["role"], "content": m["content"]} for m in messages[:first]]
    return text


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sampler_model(run: Run):
    """The model that samples: the actor, or (rollout_dtype other than fp32) a copy of it in that
    dtype, made afresh at every call (models.lora.sampling_copy) and dropped after sampling, so
    that it holds no memory through the update, where a step's peak is."""
    dtype = DTYPES[run.cfg.rollout_dtype]
    return run.actor if dtype == torch.float32 else sampling_copy(run.actor, dtype)


def score(cfg, rows, texts, roll, reward_fns) -> tuple[torch.Tensor, dict, dict]:
    """(rewards (B, G), per-function scores (N,) each, per-function failures (N,) each) of this
    rank's completions."""
    G = cfg.group_size
    prompts = [r["prompt"] for r in rows for _ in range(G)]
    columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
    columns["completion_length"] = roll.lengths.tolist()       # for length-aware rewards (overlong)
    if wants_ids(reward_fns):
        columns[IDS] = completion_ids(roll)
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
    tokens = roll.loss_tokens
    # a trajectory with environment tokens: the advantages are those of its sampled tokens alone
    # (counts, positions and normalisations over the policy's tokens), then put at their places
    counted = lengths if roll.sampled is None else world.gather(tokens.sum(1).to(world.device)).cpu()
    width = L if roll.sampled is None else int(tokens.sum(1).max()) if tokens.numel() else 0
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


def _draw(run: Run, st, phases: Phases, b: int, first: int, k: int) -> Drawn:
    """Draw k of the step: the next prompts_per_step prompts (the same on every rank), this
    rank's b of them sampled and scored."""
    cfg = run.cfg
    every = run.task.sample_train(st.data_rng, cfg.prompts_per_step)
    rows = every[first:first + b]
    run.actor.eval()
    if run.env is not None:
        with phases.run("generate"):
            roll, texts, rewards, finals, stats = sample_episodes(run, rows, st.step,
                                                                  first + k * cfg.prompts_per_step)
        run.actor.train()
        check_sampled(roll, st.step)
        if not run.reward_fns:
            return Drawn(rows, roll, texts, rewards, {"env": rewards.flatten()}, {}, stats)
        with phases.run("score"):         # --reward / --reward-model also judge each episode's last turn
            extra, per_fn, failed = score(cfg, rows, finals, roll, run.reward_fns)
        return Drawn(rows, roll, texts, rewards + extra, {"env": rewards.flatten(), **per_fn}, failed, stats)
    with phases.run("generate"):
        # generators seeded by the prompt's index among the step's draws: draw 0 is the batch of a
        # run without dynamic sampling
        roll, texts = sample_completions(run, rows, sampling_seeds(cfg, st.step, first + k * cfg.prompts_per_step, b))
    run.actor.train()
    check_sampled(roll, st.step)
    with phases.run("score"):
        rewards, per_fn, failed = score(cfg, rows, texts, roll, run.reward_fns)
    return Drawn(rows, roll, texts, rewards, per_fn, failed)


def check_sampled(roll: Rollout, step: int) -> None:
    """A NonFinite (phase "sampling") when a sampled token's log-prob is NaN or infinite: the
    model's logits are, and no setting makes such a step worth training on."""
    bad = roll.loss_tokens & ~torch.isfinite(roll.logprobs)
    if bool(bad.any()):
        raise NonFinite(f"sampling: non-finite log-probs at step {step} ({int(bad.sum())} of "
                        f"{int(roll.loss_tokens.sum())} sampled tokens: the model's logits hold NaN or infinite "
                        "values)", phase="sampling")


def draw_groups(run: Run, st, phases: Phases, b: int, first: int) -> Drawn:
    """This rank's b groups: one draw, or with dynamic_sampling (DAPO) draws until b groups whose
    rewards differ are in hand, at most dynamic_sampling_max_draws. Every rank draws as long as
    any still needs groups (the data order stays the same on all); each fills its own share from
    its slice of each draw. A share still short takes the latest equal-reward groups."""
    cfg, world = run.cfg, run.world
    drawn = [_draw(run, st, phases, b, first, 0)]
    if not cfg.dynamic_sampling:
        return drawn[0]
    kept: list[tuple[int, int]] = []          # (draw, group) with differing rewards, in order
    spare: list[tuple[int, int]] = []         # equal-reward groups, in order
    while True:
        k = len(drawn) - 1
        if drawn[k] is not None:
            same = adv_mod.zero_variance_groups(drawn[k].rewards)
            for g in range(b):
                (spare if same[g] else kept).append((k, g))
        if not world.any(len(kept) < b) or len(drawn) >= cfg.dynamic_sampling_max_draws:
            break
        if len(kept) < b:
            drawn.append(_draw(run, st, phases, b, first, len(drawn)))
        else:                                 # this rank is full; the others draw (the data order moves on)
            run.task.sample_train(st.data_rng, cfg.prompts_per_step)
            drawn.append(None)
    short = max(0, b - len(kept))
    chosen = sorted(kept[:b] + spare[::-1][:short])      # in draw order
    short_all = int(world.sum(torch.tensor([float(short)], dtype=torch.float64, device=world.device)).item())
    return _combine(drawn, chosen, cfg.group_size, run.tokenizer.pad_token_id, short_all)


def _combine(drawn: list[Drawn | None], chosen: list[tuple[int, int]], G: int, pad: int, short: int) -> Drawn:
    """The groups `chosen` ((draw, group) pairs) of the draws, as one Drawn; the episodes' figures
    are those of every draw."""
    rows, texts, rolls, rewards, failed, per_fn = [], [], [], [], {}, {}
    for k, g in chosen:
        d = drawn[k]
        rows.append(d.rows[g])
        texts.extend(d.texts[g * G:(g + 1) * G])
        rolls.append(d.rollout.select(torch.arange(g * G, (g + 1) * G).to(d.rollout.lengths.device)))
        rewards.append(d.rewards[g])
        for name, v in d.per_fn.items():
            per_fn.setdefault(name, []).append(v[g * G:(g + 1) * G])
        for name, v in d.failed.items():
            failed.setdefault(name, []).append(v[g * G:(g + 1) * G])
    episodes = None
    for d in drawn:
        if d is not None and d.episodes:
            episodes = {k: (episodes or {}).get(k, 0) + v for k, v in d.episodes.items()}
    return Drawn(rows, concat(rolls, pad), texts, torch.stack(rewards), {k: torch.cat(v) for k, v in per_fn.items()},
                 {k: torch.cat(v) for k, v in failed.items()}, episodes, draws=len(drawn), short=short)


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
