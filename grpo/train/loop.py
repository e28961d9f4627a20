"""The training loop: set up, evaluate, step `max_steps` times (step.py), log, checkpoint, save.

Under torchrun (WORLD_SIZE > 1) this runs on every rank, data-parallel or sharded
(grpo/parallel); rank 0 logs, evaluates and writes. Where each preset departs from DeepSeekMath
is listed in docs/algorithm.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..files import json_line
from ..config import ConfigError, Levers, TrainConfig, check_split, save_yaml, to_dict
from ..errors import CheckpointError, NonFinite
from ..data.tasks import build_task
from ..demo import model_for
from ..models.loading import hf_model
from ..parallel import fsdp
from ..parallel.world import World, close, init
from ..rewards import RewardFns, build_reward_fns
from ..sinks import CompletionsSink, ConsoleSink, EvalSink, JsonlSink, Sinks, open_trackers
from . import checkpoint, peak_estimate
from .evaluate import evaluate, evaluate_episodes, headline
from .plug import plug
from .phases import autocast
from .hardware import resolve_memory
from .setup import build_models, checkpoint_activations, make_output_dir, save_final
from .signals import Stopped, stop_on_signals
from .state import RunState, new_run_state, whole_state
from ..envs import episode_limits
from ..envs.load import load_env
from .inputs import Callbacks, Inputs
from .step import Run, train_step
from .update import trainable


def train(cfg: TrainConfig, log=print, watch=None, inputs: Inputs | None = None) -> dict:
    """Train as `cfg` says; the run's summary (also written to summary.json). `watch(phase)`: a
    context wrapped around each phase of each step (for measurements). `inputs`: Python objects
    that take the place of settings, and callbacks (train/inputs.py; grpo.fit builds them)."""
    world, device = init(cfg.device, bucket_bytes=int(cfg.grad_bucket_mb * 2 ** 20))
    try:
        return _train(cfg, world, device, log if world.main else (lambda *a, **k: None), watch, inputs or Inputs())
    finally:
        close(world)


def _train(cfg: TrainConfig, world: World, device, log, watch, inputs: Inputs) -> dict:
    t_start = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    check_split(cfg, world.size)
    resume_from = checkpoint.find(cfg.resume, cfg.output_dir, log) if cfg.resume else None
    if resume_from is not None:
        checkpoint.check_compatible(resume_from, cfg, log)
    at = checkpoint.step_of(resume_from) if resume_from is not None else None
    if at is not None and at >= cfg.max_steps:
        raise ConfigError(f"resume: {resume_from} is at step {at} and max_steps is {cfg.max_steps}: "
                          "nothing left to do; raise --max-steps to train further")
    out, lock = _output_dir(cfg, world, resuming=resume_from is not None)
    try:
        run, model_path = build_run(cfg, world, device, out, log, inputs)
        run.callbacks = Callbacks(inputs.callbacks if world.main else ())
        try:
            return _train_run(cfg, world, run, model_path, resume_from, out, log, watch, t_start)
        finally:
            run.reward_fns.close()                  # the reward workers
    finally:
        if lock is not None:
            lock.release()


def _train_run(cfg: TrainConfig, world: World, run: Run, model_path, resume_from, out: Path, log, watch,
               t_start: float) -> dict:
    run.watch = watch
    _memory_plan(run, log)
    st = _run_state(run, resume_from, out, log)
    if world.main:              # the settings as this run resolved them, once every check has passed
        save_yaml(cfg, out / "config.yaml")
    log(f"grpo: preset {cfg.preset}, model {model_path}, task {run.task.name}, B={cfg.prompts_per_step} x "
        f"G={cfg.group_size}, {cfg.max_steps} steps -> {out}")
    summary: dict = {"output_dir": str(out), "preset": cfg.preset, "model": str(model_path)}
    sinks = _open_sinks(cfg, out, world, st.step, resume_from is not None, log)
    run.callbacks.train_begin({"output_dir": str(out), "max_steps": cfg.max_steps, "step": st.step, "model": run.actor,
                               "tokenizer": run.tokenizer})
    try:
        if cfg.eval_size and st.eval_before is None:
            st.eval_before = _evaluate(run, sinks, log, "before", 0)
            st.eval_before = world.broadcast_object(st.eval_before)     # every rank takes the same branches below
        _steps(run, st, sinks, out, log)
        if st.eval_before is not None:
            summary["eval_before"] = st.eval_before
            after = _evaluate(run, sinks, log, "after", cfg.max_steps, before=st.eval_before)
            if after is not None:
                summary["eval_after"] = after
        summary.update(steps=cfg.max_steps, skipped_updates=st.skipped_total, seconds=round(time.time() - t_start, 1),
                       processes=world.size, sharded=run.shard)
        _write_results(run, out, summary, model_path)
        run.callbacks.train_end(summary)
    except BaseException:
        with contextlib.suppress(Exception):       # the trackers mark the run as stopped, not finished
            sinks.close(None)
        raise
    sinks.close(summary)
    return summary


def _open_sinks(cfg: TrainConfig, out: Path, world: World, step: int, resuming: bool, log) -> Sinks:
    """Rank 0's sinks: the run folder's files, the console, and the trackers of --report-to."""
    if not world.main:
        return Sinks([])
    sinks = Sinks([JsonlSink(out / "metrics.jsonl"), CompletionsSink(out / "completions.jsonl"),
                   EvalSink(out / "eval.jsonl"), ConsoleSink(cfg.max_steps)])
    try:
        sinks.sinks += open_trackers(cfg.report_to, out, cfg.project, cfg.run_name or out.name, resuming, log)
        sinks.start(to_dict(cfg), step)
    except BaseException:
        with contextlib.suppress(Exception):
            sinks.close(None)
        raise
    return sinks


def _output_dir(cfg: TrainConfig, world: World, resuming: bool):
    """(the run folder, its lock on rank 0 or None elsewhere)."""
    out, lock = None, None
    if world.main:
        out, lock = make_output_dir(cfg, resuming=resuming)
    return Path(world.broadcast_object(str(out))), lock


def build_run(cfg: TrainConfig, world: World, device, out: Path, log, inputs: Inputs | None = None) -> tuple[Run, str]:
    """Task and rewards first (their errors come before the minutes a model load takes), then the
    models, the same weights on every rank, sharded where asked. `inputs`: objects in place of
    the settings that name them (train/inputs.py)."""
    inputs = inputs or Inputs()
    task = inputs.task if inputs.task is not None else build_task(cfg)
    env = inputs.env if inputs.env is not None else load_env(cfg.env, task, cfg) if cfg.env else None
    # an episode's reward is its environment's; --reward / --reward-model add to it when given
    reward_fns = (build_reward_fns(cfg, task, device, extra=inputs.rewards)
                  if env is None or cfg.reward or cfg.reward_model or inputs.rewards else RewardFns())
    if not cfg.model and inputs.model is None and world.active:         # the demo model is built once, by rank 0, if not cached
        if world.main:
            model_for(cfg, log=log)
        world.barrier()
    shard = cfg.fsdp and world.active
    if cfg.fsdp and not shard:
        log("fsdp: one process, nothing to shard; training unsharded")
    spill = plug(Levers.of(cfg), device).spill
    try:
        actor, ref, tokenizer, model_path = build_models(cfg, device, log, spill=spill(out) if spill and not shard
                                                         else None, shard=shard,   # resolves the `auto` precisions
                                                         model=inputs.model, tokenizer=inputs.tokenizer)
    except BaseException:
        reward_fns.close()
        raise
    plugged = plug(Levers.of(cfg), device, cfg.engine, dtype=torch.bfloat16 if cfg.rollout_dtype == "bf16" else None)
    world.broadcast_params(actor)
    return Run(cfg, actor, ref, tokenizer, task, reward_fns, device, world, plugged, shard, env=env), model_path


LENGTH_CHECK_ALL = 20_000      # training sets up to this many rows have every prompt's length checked
LENGTH_CHECK_SAMPLE = 256      # larger (or generated) ones, a sample of this many


def _prompt_lengths(run: Run, log) -> int:
    """The longest training prompt in tokens, after refusing prompts that leave the model's context
    (max_position_embeddings) no room for max_new_tokens: a position past it is garbage or an error,
    and a prompt that long is seldom what the run meant."""
    cfg, task = run.cfg, run.task
    context = getattr(hf_model(run.actor).config, "max_position_embeddings", None)
    if context and cfg.max_new_tokens >= context:
        raise ConfigError(f"max_new_tokens: {cfg.max_new_tokens} leaves no room for a prompt in the model's context "
                          f"of {context} positions; lower --max-new-tokens")
    if task.train_size <= LENGTH_CHECK_ALL and "source" in task.info:      # a dataset: every row
        index = list(range(task.train_size))
    else:
        rng = random.Random(cfg.seed)
        index = sorted({rng.randrange(task.train_size) for _ in range(LENGTH_CHECK_SAMPLE)})
    from ..data.prompts import prompt_ids
    lengths = [len(x) for x in prompt_ids(run.tokenizer, [task.row(i, False)["prompt"] for i in index],
                                          system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)]
    if context:
        room = context - cfg.max_new_tokens
        over = [(n, i) for n, i in zip(lengths, index) if n > room]
        if over:
            n, i = max(over)
            checked = f"{len(index)} checked" if len(index) < task.train_size else f"{len(index)}"
            raise ConfigError(f"prompts: {len(over)} of the {checked} training prompts are longer than the model's "
                              f"context ({context} positions) less max_new_tokens ({cfg.max_new_tokens}): the longest "
                              f"has {n} tokens (training row {i + 1}); shorten them, lower --max-new-tokens, or use a "
                              "model with a longer context")
        if cfg.env and cfg.env_max_tokens + max(lengths) > context:
            log(f"env: an episode's prompt and env_max_tokens ({cfg.env_max_tokens}) can pass the model's context of "
                f"{context} positions; lower --env-max-tokens to {max(8, context - max(lengths))} or less")
    return max(lengths)


def _memory_plan(run: Run, log) -> None:
    """The step's estimated peak and micro-batch plan (peak_estimate.py), for the longest training prompt."""
    cfg = run.cfg
    width = _prompt_lengths(run, log)
    in_memory = run.ref is not None and not run.ref.shares_actor and run.ref.spilled is None and not run.shard

    def estimate_with(**settings):
        return peak_estimate.estimate(dataclasses.replace(cfg, **settings), run.actor, width, run.world.size, in_memory)
    checkpointing = cfg.gradient_checkpointing
    resolve_memory(cfg, run.device, estimate_with, log)
    if cfg.gradient_checkpointing and not checkpointing:
        checkpoint_activations(run.actor)
    peak_estimate.check(cfg, run.actor, width, run.world.size, in_memory, log, device=run.device)


def _run_state(run: Run, resume_from: Path | None, out: Path, log) -> RunState:
    """A fresh run state, or the checkpoint's (weights included); sharding happens in between."""
    cfg, actor = run.cfg, run.actor
    if resume_from is not None:
        checkpoint.load_weights(actor, resume_from)
    if run.shard:
        fsdp.shard(actor, run.device, run.world.size)
        if run.ref is not None and not run.ref.shares_actor:
            fsdp.shard(run.ref.model, run.device, run.world.size)
    st = new_run_state(cfg, actor, run.device, run.shard)
    if resume_from is not None:
        state = checkpoint.load_state(resume_from)
        if run.shard:          # checkpoints hold one group of whole tensors (as unsharded runs write them)
            state["opt"] = fsdp.shard_optimizer_state(st.opt, trainable(actor), state["opt"])
        state["sched"] = fsdp.fit_scheduler_state(state["sched"], len(st.opt.param_groups))
        st.load(state)
        if cfg.ref_sync_every:
            if "reference" not in state:
                raise CheckpointError(f"resume: {resume_from} holds no refreshed reference (it was written without "
                                      "ref_sync_every); resume with ref_sync_every 0, or start afresh")
            run.ref.load_weights(state["reference"])
        if run.world.main:                     # rank 0 alone writes (and rewrites) the run's files
            for name in ("metrics.jsonl", "completions.jsonl", "eval.jsonl"):
                checkpoint.truncate_jsonl(out / name, st.step)
        log(f"resuming from {resume_from} (step {st.step})")
    return st


def _evaluate(run: Run, sinks: Sinks, log, when: str, step: int, before: dict | None = None) -> dict | None:
    """Held-out evaluation on rank 0 (the others hold the gathered layers meanwhile), logged to the
    sinks (a row of eval.jsonl); its result there, None elsewhere."""
    cfg, world = run.cfg, run.world
    result = None
    with fsdp.gathered(run.actor) if run.shard else contextlib.nullcontext():
        if world.main:
            with autocast(cfg, run.device):
                if run.env is not None:
                    result = evaluate_episodes(hf_model(run.actor), run.tokenizer, run.task, run.env, n=cfg.eval_size,
                                               batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                                               limits=episode_limits(cfg),
                                               system_prompt=cfg.system_prompt, chat_template=cfg.chat_template,
                                               engine=run.plugged.engine)
                else:
                    result = evaluate(hf_model(run.actor), run.tokenizer, run.task, n=cfg.eval_size,
                                      batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                                      reward_fns=run.reward_fns, system_prompt=cfg.system_prompt,
                                      chat_template=cfg.chat_template, engine=run.plugged.engine)
            sinks.log_eval(step, when, result)
            run.callbacks.evaluate(step, when, result)
            since = "" if before is None else f" (before: {headline(before)})"
            log(f"held-out {when}: {headline(result)}{since}")
        world.barrier()
    return result


def _steps(run: Run, st: RunState, sinks: Sinks, out: Path, log) -> None:
    """Steps st.step + 1 .. max_steps, each logged to the sinks and checkpointed as asked. On
    SIGINT or SIGTERM the step in progress finishes, a checkpoint is written when checkpointing is
    on, and `Stopped` says where the run stands."""
    cfg, world = run.cfg, run.world
    run.actor.train()
    with stop_on_signals() as stop:
        for step in tqdm(range(st.step + 1, cfg.max_steps + 1), desc="grpo", dynamic_ncols=True,
                         initial=st.step, total=cfg.max_steps, disable=not world.main):
            st.step = step
            run.callbacks.step_begin(step)
            try:
                metrics, batch = train_step(run, st)
            except NonFinite as e:
                last = checkpoint.latest(out)
                raise NonFinite(f"{e}; " + ("that update was not applied and " if e.phase == "update" else "")
                                + "the run stops here; "
                                + (f"the last checkpoint, {last.name}, resumes with --resume latest; " if last else
                                   "no checkpoint was written (--save-every N); ")
                                + "try a lower --lr, --max-grad-norm 1.0, --rollout-dtype fp32"
                                + (", or --nonfinite skip to skip such updates" if e.phase == "update" else ""),
                                e.phase) from None
            if cfg.ref_sync_every and step % cfg.ref_sync_every == 0:
                run.ref.refresh(run.actor, cfg.ref_sync_alpha)            # TR-DPO's soft update
                metrics["reference/refreshed"] = 1
            sinks.log(metrics, _samples(cfg, batch) if sinks else [])
            asked = run.callbacks.step_end(step, metrics)         # a callback asks to stop: as a signal would
            stopping = world.max(float(stop.signum or (STOP_ASKED if asked else 0)))
            if cfg.eval_size and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                _evaluate(run, sinks, tqdm.write if world.main else log, "during", step, before=st.eval_before)
            if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.max_steps or stopping):
                _checkpoint(run, st, out)
            if stopping == STOP_ASKED:
                log(_stopped_line(cfg, step, out, by="a callback"))
                cfg.max_steps = step                 # the run ends here, as if it had been asked for this many
                return
            if stopping:
                raise Stopped(_stopped_line(cfg, step, out), int(stopping))


def _samples(cfg, batch) -> list[dict]:
    """Every completion of the first `log_completions` prompts of this rank: the total reward, each
    function's score, the sequence advantage A_i, the length and whether it was cut."""
    G, out = cfg.group_size, []
    rewards, first = batch.rewards.flatten(), batch.first_prompt * G      # global (N,), this rank's offset
    advantages = batch.adv.sequence.flatten()                              # this rank's (n,)
    for i in range(min(cfg.log_completions * G, len(batch.texts))):
        out.append(dict(prompt=batch.rows[i // G]["prompt"], group=batch.first_prompt + i // G, completion=batch.texts[i],
                        reward=rewards[first + i].item(),
                        rewards={k: v[first + i].item() for k, v in batch.per_fn.items()},
                        advantage=advantages[i].item(), length=int(batch.lengths[first + i]),
                        truncated=bool(batch.truncated[first + i])))
        if getattr(batch.texts[i], "messages", None) is not None:     # an episode: its turns, for the report
            out[-1]["messages"] = batch.texts[i].messages
            out[-1]["opening"] = batch.texts[i].opening                # and what it opened with (reset)
    return out


def _checkpoint(run: Run, st: RunState, out: Path) -> None:
    weights, state = whole_state(run.actor, st, run.shard)
    if run.cfg.ref_sync_every:                       # the refreshed reference is part of the run's state
        state["reference"] = run.ref.weights()
    if run.world.main:
        try:
            path = checkpoint.save(out, st.step, run.actor, run.tokenizer, state, run.cfg.keep_checkpoints, weights,
                                   config=to_dict(run.cfg))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            last = checkpoint.latest(out)
            raise CheckpointError(
                f"checkpoint: no space left on the device for step {st.step} in {out / 'checkpoints'} "
                f"({e.strerror}); " + (f"the last complete checkpoint is {last.name}: free some space, then continue "
                                       f"with --resume latest" if last else "no checkpoint was completed")) from None
        run.callbacks.save(st.step, path)
    run.world.barrier()


STOP_ASKED = 0.5        # `stopping` when a callback asked the run to stop (a signal's number wins over it)


def _stopped_line(cfg, step: int, out: Path, by: str = "") -> str:
    latest = checkpoint.latest(out)
    step = f"{step} (asked by {by})" if by else step
    if latest is None:
        return (f"stopped after step {step} of {cfg.max_steps}; no checkpoint (checkpointing is off: "
                f"--save-every N); outputs so far in {out}")
    return (f"stopped after step {step} of {cfg.max_steps}; last checkpoint {latest}; continue with: "
            f"grpo train --config {out / 'config.yaml'} --resume latest")


def _write_results(run: Run, out: Path, summary: dict, model_path) -> None:
    cfg, world = run.cfg, run.world
    weights = fsdp.full_state_dict(run.actor) if run.shard and cfg.save_model else None
    if world.main:
        if cfg.save_model:
            save_final(cfg, run.actor, run.tokenizer, out, summary, weights, model_path)
        (out / "summary.json").write_text(json_line(**summary, indent=2))
    world.barrier()
