"""The GRPO training loop, top to bottom: sample -> score -> advantage -> loss -> step -> log.

One step:
  1. take B prompts, sample G completions each with the actor (recording pi_old log-probs);
  2. score each completion (weighted reward functions, optional overlong penalty);
  3. advantages: reward scaling, baseline, token credit, token normalisation (advantages.py);
  4. reference log-probs, when the KL term or ratio_vs=ref needs them;
  5. `updates_per_batch` passes over the batch, each split into `minibatches` optimizer steps of
     `grad_accum` micro-batches: clipped (or REINFORCE) policy loss + beta * KL (losses.py);
  6. log one metrics dict.
Where each preset departs from DeepSeekMath is listed in docs/algorithm.md.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import advantages as adv_mod
from . import checkpoint
from . import distributed
from . import losses
from . import rewards as rewards_mod
from . import sharding
from . import sysmem
from .config import ConfigError, TrainConfig, save_yaml
from .distributed import World
from .evaluate import evaluate
from .metrics import ConsoleSink, JsonlSink
from .policy import (AdapterDisabled, add_lora, allow_prefix_under_checkpointing, frozen_copy, hf_model, load_model,
                     lora_merged, release_weights, token_stats)
from .prompts import encode_for_model
from .rollout import Generators, Rollout, decode, generate
from .tasks import build_task


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
    adv: adv_mod.Advantages          # this rank's rows
    loss_mask: torch.Tensor          # (n, L) valid tokens of groups kept in the loss
    ref_logp: torch.Tensor | None    # (n, L)
    lengths: torch.Tensor            # (N,) completion lengths, global
    truncated: torch.Tensor          # (N,) bool, global
    first_prompt: int = 0


def needs_reference(cfg: TrainConfig) -> bool:
    return cfg.beta > 0 or cfg.ratio_vs == "ref" or cfg.kl_target is not None


def make_output_dir(cfg: TrainConfig, resuming: bool = False) -> Path:
    if cfg.output_dir:
        out = Path(cfg.output_dir)
    else:
        out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.preset}"
    if (out / "metrics.jsonl").exists() and not resuming:
        raise ConfigError(f"output_dir: {out} already holds a run (metrics.jsonl); choose a new --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


def sample(cfg, actor, tokenizer, rows, generator: Generators) -> tuple[Rollout, list[str]]:
    """B prompts -> B*G completions, sequence index b*G + g."""
    device = next(actor.parameters()).device
    ids, mask = encode_for_model(tokenizer, [r["prompt"] for r in rows], device,
                                 system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)
    with lora_merged(actor):
        roll = generate(hf_model(actor), ids, mask, max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens,
                        eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                        num_samples=cfg.group_size, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        generator=generator)
    return roll, decode(tokenizer, roll)


def score(cfg, rows, texts, roll, reward_fns) -> tuple[torch.Tensor, dict]:
    G = cfg.group_size
    prompts = [r["prompt"] for r in rows for _ in range(G)]
    columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
    columns["completion_length"] = roll.lengths.tolist()       # for length-aware rewards (overlong)
    total, per_fn, _ = rewards_mod.score(reward_fns, prompts, texts, columns)
    return total.view(len(rows), G), per_fn


@dataclass
class TokenTerms:
    """One micro-batch's per-token loss terms, all (n, L)."""
    per_token: torch.Tensor          # policy + beta * KL, differentiable
    policy: torch.Tensor
    kl: torch.Tensor | None
    ratio: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    entropy: torch.Tensor


def token_terms(cfg, actor, ref, batch: StepBatch, micro: torch.Tensor, beta: float, reuse_logp_as_old: bool) -> TokenTerms:
    """Forward the actor on sequences `micro` and build the per-token loss (losses.py)."""
    roll = batch.rollout.select(micro)
    full_kl_ref = ref if cfg.kl_estimator == "full" else None
    st = token_stats(actor, roll, temperature=cfg.temperature, chunk=cfg.logprob_chunk, ref_model=full_kl_ref,
                     keep_bytes=cfg.head_keep_mb * 2 ** 20)
    if cfg.ratio_vs == "ref":
        base = batch.ref_logp[micro]
    else:                           # pi_old: equal to pi_theta in value on the first and only update
        base = st.logp.detach() if reuse_logp_as_old else roll.logprobs
    adv = batch.adv.normalized.to(st.logp.device)[micro]                     # (n, L)
    if cfg.policy_loss == "clip":
        eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
        policy, ratio, c_low, c_high = losses.clipped_policy_loss(st.logp, base, adv, cfg.epsilon, eps_high)
    else:
        policy = losses.reinforce_policy_loss(st.logp, adv)
        ratio = torch.exp(st.logp.detach() - base)
        c_low = c_high = torch.zeros_like(roll.completion_mask)
    kl = None
    if ref is not None:
        kl = st.full_kl if cfg.kl_estimator == "full" else losses.kl_estimate(st.logp, batch.ref_logp[micro], cfg.kl_estimator)
    per_token = policy + beta * kl if (kl is not None and beta > 0) else policy
    return TokenTerms(per_token, policy, kl, ratio.detach(), c_low, c_high, st.entropy)


class Tally:
    """Token-weighted sums of the health figures over every micro-batch of a step."""

    def __init__(self):
        self.loss, self.n_updates, self.skipped, self.grad_norm = 0.0, 0, 0, 0.0
        self.tokens = self.pg = self.kl = self.ent = self.ratio = self.clip_low = self.clip_high = 0.0
        self.ratio_min, self.ratio_max = math.inf, -math.inf

    SUMS = ("tokens", "pg", "kl", "ent", "ratio", "clip_low", "clip_high")

    def reduce(self, world: World) -> None:
        """Sum the token-weighted figures over ranks (the losses are summed as they are made)."""
        if world.active:
            sums = world.sum(torch.tensor([getattr(self, k) for k in self.SUMS], dtype=torch.float64,
                                          device=world.device))
            for k, v in zip(self.SUMS, sums.tolist()):
                setattr(self, k, v)
            self.ratio_min, self.ratio_max = world.min(self.ratio_min), world.max(self.ratio_max)

    def add(self, t: TokenTerms, mask: torch.Tensor) -> None:
        if not mask.any():               # every group here was filtered out: nothing to count
            return
        m = mask.float()
        self.tokens += m.sum().item()
        self.pg += (t.policy.detach() * m).sum().item()
        self.ent += (t.entropy * m).sum().item()
        self.ratio += (t.ratio * m).sum().item()
        self.clip_low += (t.clipped_low & mask).sum().item()
        self.clip_high += (t.clipped_high & mask).sum().item()
        self.ratio_min = min(self.ratio_min, t.ratio[mask].min().item())
        self.ratio_max = max(self.ratio_max, t.ratio[mask].max().item())
        if t.kl is not None:
            self.kl += (t.kl.detach() * m).sum().item()

    def __getitem__(self, key):          # dict-style access for callers and tests
        return getattr(self, key)


def update_policy(cfg, actor, ref, opt, sched, batch: StepBatch, beta: float, shuffle: torch.Generator,
                  world: World = World()) -> Tally:
    """`updates_per_batch` passes over one sampled batch; each pass is `minibatches` optimizer
    steps over whole groups, each step summed over `grad_accum` micro-batches (and over ranks)."""
    B, G = batch.rewards.shape                                         # the global batch
    device = batch.rollout.completion_ids.device
    lo, hi = batch.first_prompt, batch.first_prompt + batch.rollout.completion_ids.shape[0] // G
    reuse_logp_as_old = cfg.updates_per_batch == 1 and cfg.minibatches == 1
    params = trainable(actor)
    shard = sharded(cfg, world)
    tally = Tally()
    for _ in range(cfg.updates_per_batch):
        order = torch.randperm(B, generator=shuffle) if cfg.minibatches > 1 else torch.arange(B)
        for groups in torch.tensor_split(order, cfg.minibatches):
            mine = groups[(groups >= lo) & (groups < hi)] - lo             # this rank's groups, local index
            seqs = (mine[:, None] * G + torch.arange(G)[None, :]).flatten().to(device)
            mb_mask = batch.loss_mask[seqs]
            # the minibatch's own counts (over all ranks) normalise every micro-batch, so their sum
            # over micro-batches and ranks is the minibatch loss
            counts = world.sum(torch.stack([losses.sequence_count(mb_mask), mb_mask.sum()]).double().to(world.device))
            num_seqs, num_tokens = counts[0].item(), counts[1].item()
            if num_tokens == 0:
                continue
            opt.zero_grad(set_to_none=True)
            mb_loss, finite = 0.0, True
            for micro in torch.tensor_split(seqs, cfg.grad_accum):
                stand_in = len(micro) == 0
                if stand_in and not shard:
                    continue
                if stand_in:        # sharded layers reduce in every backward: each process runs each one
                    micro = torch.zeros(1, dtype=torch.long, device=device)
                terms = token_terms(cfg, actor, ref, batch, micro, beta, reuse_logp_as_old)
                mask = batch.loss_mask[micro]
                loss = losses.aggregate(terms.per_token, mask, cfg.loss_aggregation, cfg.max_new_tokens,
                                        num_seqs, num_tokens)
                if stand_in:
                    loss = loss * 0.0                                # zero gradients, same collectives
                if not torch.isfinite(loss):
                    finite = False
                    if not shard:
                        break
                loss.backward()
                if not stand_in:
                    mb_loss += loss.item()
                    tally.add(terms, mask)
            finite = world.all(finite)
            if finite:
                world.sum_grads(params)
                mb_loss = world.sum(torch.tensor([mb_loss], dtype=torch.float64, device=world.device)).item()
            if shard:
                grad_norm = sharding.clip_grad_norm(params, cfg.max_grad_norm, world)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            if not finite or not torch.isfinite(grad_norm):
                opt.zero_grad(set_to_none=True)     # weights untouched
                tally.skipped += 1
                continue
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)         # free the gradients before the next rollout
            tally.loss += mb_loss
            tally.grad_norm += grad_norm.item()
            tally.n_updates += 1
    tally.reduce(world)
    return tally


def step_metrics(cfg, step, batch: StepBatch, acc: Tally, beta: float, lr: float, times: dict, skipped_total: int) -> dict:
    n_up, tok = max(acc.n_updates, 1), max(acc.tokens, 1.0)
    r, lengths = batch.rewards.flatten(), batch.lengths.float()
    m = {
        "step": step,
        "loss": acc.loss / n_up if acc.n_updates else None,
        "policy_loss": acc.pg / tok,
        "kl": acc.kl / tok if needs_reference(cfg) else None,
        "beta": beta,
        "reward/mean": r.mean().item(),
        "reward/std": r.std(unbiased=False).item(),
    }
    for name, v in batch.per_fn.items():
        m[f"reward/{name}/mean"] = v.mean().item()
        m[f"reward/{name}/std"] = v.std(unbiased=False).item()
    m.update({
        "groups/zero_variance_frac": adv_mod.zero_variance_groups(batch.rewards).float().mean().item(),
        "clip/low_frac": acc.clip_low / tok,
        "clip/high_frac": acc.clip_high / tok,
        "ratio/mean": acc.ratio / tok,
        "ratio/min": acc.ratio_min if math.isfinite(acc.ratio_min) else None,
        "ratio/max": acc.ratio_max if math.isfinite(acc.ratio_max) else None,
        "entropy": acc.ent / tok,
        "length/mean": lengths.mean().item(),
        "length/min": int(lengths.min().item()),
        "length/max": int(lengths.max().item()),
        "length/truncated_frac": batch.truncated.float().mean().item(),
        "grad_norm": acc.grad_norm / n_up if acc.n_updates else None,
        "lr": lr,
        "updates/skipped_nonfinite": skipped_total,
    })
    m.update({f"time/{k}": round(v, 4) for k, v in times.items()})
    m["time/tokens_per_sec"] = round(batch.lengths.sum().item() / max(times["step"], 1e-9), 1)
    return m


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


def new_run_state(cfg: TrainConfig, actor, device, shard: bool = False) -> RunState:
    params = trainable(actor)
    # fused: one kernel per step, without the foreach path's parameter-sized temporaries
    opt = torch.optim.AdamW(sharding.param_groups(params) if shard else params, lr=cfg.lr,
                            betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
                            fused=torch.device(device).type in ("cpu", "cuda"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))
    return RunState(opt, sched, random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1), BetaController(cfg),
                    deque(maxlen=cfg.baseline_window - 1))


def sharded(cfg: TrainConfig, world: World) -> bool:
    """The actor's decoder layers are sharded over the processes (sharding.py)."""
    return cfg.fsdp and world.active


def gathered_if(on: bool, model):
    return sharding.gathered(model) if on else contextlib.nullcontext()


def autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


def sampling_generators(cfg, step: int, first: int, count: int, device) -> list[torch.Generator]:
    """One generator per prompt, seeded by (seed, step, index in the global batch): a prompt's
    completions are the same whichever rank, or batch layout, samples them."""
    return [torch.Generator(device=device).manual_seed(distributed.prompt_seed(cfg.seed, step, first + i))
            for i in range(count)]


def train_step(cfg, st: RunState, actor, ref, tokenizer, task, reward_fns, device,
               world: World = World()) -> tuple[dict, StepBatch]:
    """One GRPO step; returns its metrics (for the whole batch, on every rank)."""
    times, t0 = {}, time.time()
    G = cfg.group_size
    every = task.sample_train(st.data_rng, cfg.prompts_per_step)        # the same global batch on every rank
    b = cfg.prompts_per_step // world.size
    first = world.rank * b
    rows = every[first:first + b]
    actor.eval()
    with autocast(cfg, device), sysmem.reuse_freed_memory(), gathered_if(sharded(cfg, world), actor):
        roll, texts = sample(cfg, actor, tokenizer, rows, sampling_generators(cfg, st.step, first, b, device))
    actor.train()
    times["generate"] = time.time() - t0

    t = time.time()
    local_rewards, local_per_fn = score(cfg, rows, texts, roll, reward_fns)
    times["score"] = time.time() - t

    # the advantage pipeline runs on the global batch (gathered), then each rank keeps its rows
    rewards = world.gather(local_rewards.to(world.device)).cpu()
    per_fn = {k: world.gather(v.to(world.device)).cpu() for k, v in local_per_fn.items()}
    lengths = world.gather(roll.lengths.to(world.device)).cpu()
    truncated = world.gather(roll.truncated.to(world.device, torch.uint8)).cpu().bool()
    L = roll.completion_ids.shape[1]
    full = adv_mod.compute_advantages(
        rewards, lengths, int(world.max(float(L))), reward_scaling=cfg.reward_scaling,
        baseline=cfg.baseline, token_credit=cfg.token_credit, gamma=cfg.gamma, token_norm=cfg.token_norm,
        history=list(st.history))
    st.history.append(full.scaled_rewards)     # the window baseline averages scaled rewards
    adv = full.rows(first, b, G, L)
    keep = (~adv_mod.zero_variance_groups(rewards) if cfg.filter_zero_variance_groups
            else torch.ones(cfg.prompts_per_step, dtype=torch.bool))[first:first + b]
    loss_mask = roll.completion_mask & keep.repeat_interleave(G).to(device)[:, None]

    t = time.time()
    ref_logp = None
    if ref is not None and (cfg.ratio_vs == "ref" or cfg.kl_estimator != "full"):
        with torch.no_grad(), autocast(cfg, device), sysmem.reuse_freed_memory():
            ref_logp = token_stats(ref, roll, temperature=cfg.temperature, chunk=cfg.logprob_chunk).logp
        release_weights(ref)           # the reference's pages leave memory until the next step
    times["reference"] = time.time() - t

    batch = StepBatch(rows, roll, texts, rewards, per_fn, adv, loss_mask, ref_logp, lengths, truncated, first)
    t = time.time()
    # the step's memory peak: the heap is reused but trimmed every half second (sysmem.py)
    update_memory = (sysmem.reuse_freed_memory(trim_every=sysmem.UPDATE_TRIM_EVERY) if sysmem.UPDATE_TRIM_EVERY
                     else contextlib.nullcontext())
    with autocast(cfg, device), update_memory:
        acc = update_policy(cfg, actor, ref, st.opt, st.sched, batch, st.beta_ctl.beta, st.shuffle_gen, world)
    times["policy"] = time.time() - t
    if cfg.kl_estimator == "full":
        release_weights(ref)       # read again inside the update for the full-vocabulary KL
    st.skipped_total += acc.skipped
    times["step"] = time.time() - t0
    metrics = step_metrics(cfg, st.step, batch, acc, st.beta_ctl.beta, st.sched.get_last_lr()[0], times,
                           st.skipped_total)
    st.beta_ctl.update(metrics["kl"])
    return metrics, batch


def build_models(cfg: TrainConfig, device, log=print, spill_dir: Path | None = None, shard: bool = False):
    """Actor, reference (or None), tokenizer and the model path, as the config asks. A full
    fine-tune's reference is kept in a file in `spill_dir` when `reference_in_file` is on.
    `shard`: the models will be sharded (weights read into memory, not mapped: see load_model)."""
    if cfg.model:
        model_path = cfg.model
    else:
        from .demo import DEMO_NOTE, ensure_demo_model
        model_path = ensure_demo_model(log=log)
        log(DEMO_NOTE.format(preset=cfg.preset))
    actor, tokenizer = load_model(model_path, device, cfg.gguf_file, mmap=not shard)
    if cfg.lora_rank:
        actor = add_lora(actor, cfg)
        ref = AdapterDisabled(actor) if needs_reference(cfg) else None      # no second copy of the weights
    else:
        ref = frozen_copy(actor, spill_dir if cfg.reference_in_file else None) if needs_reference(cfg) else None
    if cfg.gradient_checkpointing:
        hf_model(actor).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        allow_prefix_under_checkpointing(actor)
    return actor, ref, tokenizer, model_path


def train(cfg: TrainConfig, log=print) -> dict:
    """Train as `cfg` says. Under torchrun (WORLD_SIZE > 1) this runs on every rank, data-parallel
    (distributed.py); rank 0 logs, evaluates and writes."""
    world, device = distributed.init(cfg.device)
    try:
        return _train(cfg, world, device, log if world.main else (lambda *a, **k: None))
    finally:
        distributed.close(world)


def _train(cfg: TrainConfig, world: World, device, log) -> dict:
    t_start = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.prompts_per_step % world.size:
        raise ConfigError(f"prompts_per_step: {cfg.prompts_per_step} prompts do not split evenly over "
                          f"{world.size} processes (each process takes whole groups); use a multiple of {world.size}")
    resume_from = checkpoint.find(cfg.resume, cfg.output_dir) if cfg.resume else None
    out = None
    if world.main:
        out = make_output_dir(cfg, resuming=resume_from is not None)
        save_yaml(cfg, out / "config.yaml")
    out = Path(world.broadcast_object(str(out)))
    task = build_task(cfg)                                   # data and rewards first: their errors come
    reward_fns = rewards_mod.build_reward_fns(cfg, task, device)     # before the minutes a model load takes
    if not cfg.model and world.active:         # the demo model is built once, by rank 0, if not cached
        if world.main:
            from .demo import ensure_demo_model
            ensure_demo_model(log=log)
        world.barrier()
    shard = sharded(cfg, world)
    if cfg.fsdp and not shard:
        log("fsdp: one process, nothing to shard; training unsharded")
    actor, ref, tokenizer, model_path = build_models(cfg, device, log, spill_dir=None if shard else out, shard=shard)
    world.broadcast_params(actor)
    if resume_from is not None:
        checkpoint.load_weights(actor, resume_from)
    if shard:
        sharding.shard(actor, device, world.size)
        if ref is not None and not isinstance(ref, AdapterDisabled):
            sharding.shard(ref, device, world.size)
    st = new_run_state(cfg, actor, device, shard)
    if resume_from is not None:
        state = checkpoint.load_state(resume_from)
        if shard:          # checkpoints hold one group of whole tensors (as unsharded runs write them)
            state["opt"] = sharding.shard_optimizer_state(st.opt, trainable(actor), state["opt"])
        state["sched"] = sharding.fit_scheduler_state(state["sched"], len(st.opt.param_groups))
        st.load(state)
        for name in ("metrics.jsonl", "completions.jsonl"):
            checkpoint.truncate_jsonl(out / name, st.step)
        log(f"resuming from {resume_from} (step {st.step})")
    log(f"grpo: preset {cfg.preset}, model {model_path}, task {task.name}, B={cfg.prompts_per_step} x G={cfg.group_size}, "
        f"{cfg.max_steps} steps -> {out}")

    summary: dict = {"output_dir": str(out), "preset": cfg.preset, "model": str(model_path)}
    eval_kw = dict(n=cfg.eval_size, batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                   reward_fns=reward_fns, system_prompt=cfg.system_prompt, chat_template=cfg.chat_template)
    if cfg.eval_size and st.eval_before is None:
        with gathered_if(shard, actor):             # rank 0 evaluates; the others hold the gathered layers
            if world.main:
                with autocast(cfg, device):
                    st.eval_before = evaluate(hf_model(actor), tokenizer, task, **eval_kw)
                log(f"held-out accuracy before: {st.eval_before['accuracy']:.3f} (n={cfg.eval_size})")
            world.barrier()
        st.eval_before = world.broadcast_object(st.eval_before)     # every rank takes the same branches below

    sinks = [JsonlSink(out / "metrics.jsonl"), ConsoleSink(cfg.max_steps)] if world.main else []
    samples_fh = open(out / "completions.jsonl", "a") if world.main else None
    actor.train()
    try:
        for step in tqdm(range(st.step + 1, cfg.max_steps + 1), desc="grpo", dynamic_ncols=True,
                         initial=st.step, total=cfg.max_steps, disable=not world.main):
            st.step = step
            metrics, batch = train_step(cfg, st, actor, ref, tokenizer, task, reward_fns, device, world)
            for s in sinks:
                s.log(metrics)
            if samples_fh:
                for i in range(min(cfg.log_completions, len(batch.texts))):
                    samples_fh.write(_json_line(step=step, prompt=batch.rows[i // cfg.group_size]["prompt"],
                                                completion=batch.texts[i], reward=batch.rewards.flatten()[i].item()))
                samples_fh.flush()
            if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.max_steps):
                weights, state = whole_state(actor, st, shard)
                if world.main:
                    checkpoint.save(out, step, actor, tokenizer, state, cfg.keep_checkpoints, weights)
                world.barrier()
    finally:
        for s in sinks:
            s.close()
        if samples_fh:
            samples_fh.close()

    if st.eval_before is not None:
        with gathered_if(shard, actor):
            if world.main:
                summary["eval_before"] = st.eval_before
                with autocast(cfg, device):
                    summary["eval_after"] = evaluate(hf_model(actor), tokenizer, task, **eval_kw)
                log(f"held-out accuracy after:  {summary['eval_after']['accuracy']:.3f} "
                    f"(before {st.eval_before['accuracy']:.3f}, n={cfg.eval_size})")
            world.barrier()
    summary.update(steps=cfg.max_steps, skipped_updates=st.skipped_total, seconds=round(time.time() - t_start, 1),
                   processes=world.size, sharded=shard)
    weights = sharding.full_state_dict(actor) if shard and cfg.save_model else None
    if world.main:
        if cfg.save_model:
            save_final(cfg, actor, tokenizer, out, summary, weights, model_path)
        (out / "summary.json").write_text(_json_line(**summary, indent=2))
    world.barrier()
    return summary


def whole_state(actor, st: RunState, shard: bool) -> tuple[dict | None, dict]:
    """(the actor's whole weights, or None to take them from the actor; the run state) for a
    checkpoint. Sharded, every process must call: the pieces are gathered."""
    state = st.to_dict()
    if not shard:
        return None, state
    state["opt"] = sharding.full_optimizer_state(st.opt, trainable(actor))
    state["sched"] = sharding.fit_scheduler_state(state["sched"], 1)
    return sharding.full_state_dict(actor), state


def trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def save_final(cfg, actor, tokenizer, out: Path, summary: dict, weights: dict | None = None,
               model_path=None) -> None:
    """The trained model (with LoRA: the adapter, peft format) in <out>/model, and with
    `save_merged` the merged model in <out>/merged. `weights`: the whole state dict of a sharded
    actor."""
    actor.save_pretrained(out / "model", state_dict=weights)
    tokenizer.save_pretrained(out / "model")
    summary["model_dir"] = str(out / "model")
    if cfg.lora_rank and cfg.save_merged:
        if weights is None:
            merged = actor.merge_and_unload()
        else:                     # the sharded actor cannot merge in place: base + saved adapter, afresh
            from peft import PeftModel
            base, _ = load_model(model_path, torch.device("cpu"), cfg.gguf_file)
            merged = PeftModel.from_pretrained(base, out / "model").merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        summary["merged_dir"] = str(out / "merged")


def _json_line(indent=None, **kw) -> str:
    import json
    return json.dumps(kw, indent=indent) + ("\n" if indent is None else "")
