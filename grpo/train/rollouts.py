"""A step's rollouts: its prompts sampled (G completions each, or G episodes in the run's
environment) and scored, one draw of prompts or, with dynamic sampling, as many as it takes to fill
the batch with groups whose rewards differ. The step (step.py) calls `draw_groups`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..algo import advantages as adv_mod
from ..data.prompts import encode_for_model
from ..envs import episode_limits, run_episodes
from ..errors import NonFinite
from ..models.loading import hf_model
from ..models.lora import lora_merged, sampling_copy
from ..parallel.world import prompt_seed
from ..rewards.scoring import score_rows
from ..rollout import Rollout, SamplingSettings, decode
from ..rollout.base import concat
from .phases import Phases
from .run import Run


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
    """An episode's messages as a Conversation: the opening is what comes before the model's first
    turn; a message the token budget kept from the model keeps its `unseen` mark (`role (unseen):`)."""
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
    total, per_fn, _, failed = score_rows(reward_fns, rows, cfg.group_size, texts, roll)
    return total.view(len(rows), cfg.group_size), per_fn, failed


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
