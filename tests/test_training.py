"""A few real training steps of a tiny random Hugging Face model through `grpo.train`.

A random model almost never solves the arithmetic task, so every reward would be 0, every
advantage 0 and nothing would move. These tests register a task `dense` with the same prompts and
a dense, random-but-deterministic reward (a CRC of the completion text), so groups have reward
variance and every preset has a real policy gradient.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpo.algo import advantages as adv_registry
from grpo.algo import losses
from grpo.config import PRESETS, ConfigError, load_yaml, resolve
from grpo.data import tasks as tasks_mod
from grpo.models import loading
from grpo.models.logprobs import token_stats
from grpo.models.reference import Reference
from grpo.parallel.world import World
from grpo.rewards import RewardError, score
from grpo.train import build_run, collect_batch, needs_reference, train, update_policy
from grpo.train import setup as setup_mod
from grpo.train.state import new_run_state

REQUIRED_KEYS = [
    "step", "loss", "kl", "beta", "reward/mean", "reward/std", "time/step",
    "groups/zero_variance_frac", "clip/low_frac", "clip/high_frac", "ratio/mean", "ratio/min", "ratio/max",
    "entropy", "length/mean", "length/min", "length/max", "length/truncated_frac", "grad_norm", "lr",
    "time/generate", "time/score", "time/policy", "time/tokens_per_sec", "updates/skipped_nonfinite",
]


def crc_reward(prompts, completions, **_):
    """Dense and deterministic: different completions almost surely get different rewards."""
    return [zlib.crc32(f"{p}|{c}".encode()) % 1000 / 1000 for p, c in zip(prompts, completions)]


def dense_task(**rewards) -> tasks_mod.Task:
    base = tasks_mod.arithmetic()
    return tasks_mod.Task(name="dense", train_size=base.train_size, heldout_size=base.heldout_size,
                          row=base.row, rewards=rewards or {"crc": crc_reward})


@pytest.fixture(autouse=True)
def _dense_task(monkeypatch):
    monkeypatch.setitem(tasks_mod.TASKS, "dense", dense_task)


def state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def cfg_out(cfg) -> Path:
    return Path(cfg.output_dir)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------- every preset, real steps
@pytest.fixture(scope="module", params=list(PRESETS))
def preset_run(request, tiny_config, tiny_model_dir):
    """Two steps of one preset; the actor and reference are captured as train() creates them."""
    cfg = tiny_config(preset=request.param, task="dense", lr=1e-2)
    seen = {}

    def load_spy(path, device, gguf_file=None, **kw):
        actor, tok = loading.load_model(path, device, gguf_file, **kw)
        seen["actor"], seen["initial"] = actor, state(actor)
        return actor, tok

    real_copy = Reference.frozen_copy

    def ref_spy(model, spill=None):
        ref = real_copy(model, spill)
        seen["ref"] = ref.model
        return ref

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tasks_mod.TASKS, "dense", dense_task)
        mp.setattr(setup_mod, "load_model", load_spy)
        mp.setattr(Reference, "frozen_copy", staticmethod(ref_spy))
        summary = train(cfg, log=lambda *a: None)
    return cfg, summary, seen


def test_metrics_rows_are_finite_and_complete(preset_run):
    cfg, summary, _ = preset_run
    rows = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        assert not missing, missing
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert r["reward/std"] > 0 and r["groups/zero_variance_frac"] < 1
        assert r["updates/skipped_nonfinite"] == 0
        assert 1 <= r["length/min"] <= r["length/mean"] <= r["length/max"] <= cfg.max_new_tokens
        assert 0 <= r["length/truncated_frac"] <= 1 and r["entropy"] > 0
        assert r["ratio/min"] <= r["ratio/mean"] <= r["ratio/max"]
        assert r["beta"] == cfg.beta and r["lr"] == pytest.approx(cfg.lr)
        if needs_reference(cfg):
            assert math.isfinite(r["kl"])
        else:
            assert r["kl"] is None
        if not cfg.overlong_penalty:
            assert r["reward/crc/mean"] == pytest.approx(r["reward/mean"], abs=1e-6)
    assert summary["skipped_updates"] == 0 and summary["steps"] == 2


def test_summary_and_completions(preset_run):
    cfg, summary, _ = preset_run
    saved = json.loads((cfg_out(cfg) / "summary.json").read_text())
    for key in ("eval_before", "eval_after"):
        assert saved[key]["n"] == cfg.eval_size
        assert 0.0 <= saved[key]["pass/crc"] <= 1.0 and math.isfinite(saved[key]["mean_reward"])
        assert "accuracy" not in saved[key]                 # the test task defines none
    assert saved["preset"] == cfg.preset
    lines = read_jsonl(cfg_out(cfg) / "completions.jsonl")
    assert len(lines) == cfg.max_steps * cfg.log_completions * cfg.group_size       # whole groups
    assert {"step", "prompt", "group", "completion", "reward", "rewards", "advantage", "length",
            "truncated"} <= set(lines[0])
    metrics = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    for step in (1, 2):
        group = [x for x in lines if x["step"] == step and x["group"] == 0]
        assert len(group) == cfg.group_size and len({x["prompt"] for x in group}) == 1
        assert 1 <= min(x["length"] for x in group) and max(x["length"] for x in group) <= cfg.max_new_tokens
        for x in group:      # the total is the sum of the functions' scores (each of weight 1 here), overlong's included
            assert x["reward"] == pytest.approx(sum(x["rewards"].values()), abs=1e-6)
            assert ("overlong" in x["rewards"]) == bool(cfg.overlong_penalty)
        if cfg.reward_scaling == "none":      # A_i = r_i - the group's mean reward
            mean = sum(x["reward"] for x in group) / len(group)
            for x in group:
                assert x["advantage"] == pytest.approx(x["reward"] - mean, abs=1e-5)
        assert metrics[step - 1]["length/max"] >= max(x["length"] for x in group)


def test_config_yaml_round_trips(preset_run):
    cfg, _, _ = preset_run
    path = str(cfg_out(cfg) / "config.yaml")
    assert resolve(load_yaml(path), yaml_path=path) == cfg


def test_every_trained_parameter_moved_and_reference_frozen(preset_run):
    cfg, _, seen = preset_run
    actor, initial = seen["actor"], seen["initial"]
    unmoved = [n for n, p in actor.named_parameters() if torch.equal(p.detach(), initial[n])]
    assert not unmoved, f"{cfg.preset}: parameters that did not move: {unmoved}"
    if needs_reference(cfg):
        ref = seen["ref"]
        for n, p in ref.named_parameters():
            assert torch.equal(p, initial[n]), n
            assert not p.requires_grad
    else:
        assert "ref" not in seen          # no second copy when nothing needs pi_ref


def test_saved_model_loads_and_equals_the_trained_actor(preset_run):
    cfg, summary, seen = preset_run
    loaded = AutoModelForCausalLM.from_pretrained(summary["model_dir"], dtype=torch.float32)
    trained = dict(seen["actor"].named_parameters())
    for n, p in loaded.named_parameters():
        assert torch.equal(p, trained[n].detach()), n


def test_same_seed_same_metrics(preset_run, tiny_config):
    cfg, _, _ = preset_run
    again = tiny_config(**{**vars(cfg), "output_dir": None, "save_model": False})
    train(again, log=lambda *a: None)

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    first, second = (read_jsonl(cfg_out(c) / "metrics.jsonl") for c in (cfg, again))
    assert strip(first) == strip(second)
    assert ((cfg_out(cfg) / "completions.jsonl").read_text()
            == (cfg_out(again) / "completions.jsonl").read_text())


# ------------------------------------------------------------------- one batch, as the trainer builds it
def setup_batch(cfg, tmp_path=None):
    """The trainer's own Run (actor, reference, rewards, ...) and the StepBatch its first step
    builds (grpo.train.collect_batch: sampling, scoring, advantages, loss mask, reference log-probs)."""
    run, _ = build_run(cfg, World(), torch.device("cpu"), Path(cfg.output_dir), log=lambda *a: None)
    st = new_run_state(cfg, run.actor, run.device)
    st.step = 1
    return run, collect_batch(run, st, run.phases())


def run_update(run, batch, lr=0.1):
    """update_policy with plain SGD, so equal gradients give equal weights to float precision."""
    actor = run.actor
    opt = torch.optim.SGD([p for p in actor.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    grads = {}
    real_step = opt.step

    def step_and_record(*a, **k):      # the trainer frees gradients after each step: look first
        grads.update({n: p.grad.clone() for n, p in actor.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    opt.step = step_and_record
    stats = update_policy(run, opt, sched, batch, run.cfg.beta, torch.Generator().manual_seed(1))
    return SimpleNamespace(**{f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}, last_grads=grads)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("preset", ["seed", "deepseekmath"])
def test_grad_accum_and_minibatches_are_invariant(tiny_config, preset, aggregation):
    """Splitting a minibatch into micro-batches changes nothing: the normalisers are the minibatch's."""
    base = dict(preset=preset, task="dense", loss_aggregation=aggregation, prompts_per_step=4,
                max_new_tokens=8, max_grad_norm=0.0)
    for minibatches, accums in ((1, (1, 4, 16)), (2, (1, 8))):      # 16 sequences; 8 per minibatch
        results = []
        for grad_accum in accums:
            cfg = tiny_config(**base, minibatches=minibatches, grad_accum=grad_accum)
            run, batch = setup_batch(cfg)
            initial = state(run.actor)
            acc = run_update(run, batch)
            assert acc.updates == minibatches and acc.skipped == 0
            results.append((state(run.actor), acc.last_grads, acc.loss))
        w0, g0, loss0 = results[0]
        assert all(not torch.equal(w0[n], initial[n]) for n in w0), "the update should move every weight"
        for grad_accum, (w, g, loss) in zip(accums[1:], results[1:]):
            where = f"{preset}/{aggregation}: minibatches={minibatches} grad_accum={grad_accum}"
            assert loss == pytest.approx(loss0, abs=1e-5), where
            for n in w0:
                torch.testing.assert_close(g[n], g0[n], atol=1e-5, rtol=1e-4, msg=f"{where}: grad {n}")
                torch.testing.assert_close(w[n], w0[n], atol=1e-5, rtol=0, msg=f"{where}: weight {n}")


def test_micro_batch_loss_sum_equals_plain_full_batch_loss(tiny_config):
    """The accumulated loss equals the aggregation of the whole batch computed in one piece."""
    cfg = tiny_config(preset="deepseekmath", task="dense", prompts_per_step=4, grad_accum=16)
    run, batch = setup_batch(cfg)
    with torch.no_grad():
        st = token_stats(run.actor, batch.rollout, temperature=1.0, chunk=1024)
        pg, *_ = losses.clipped_policy_loss(st.logp, st.logp, batch.adv.normalized, 0.2, 0.2)
        kl = losses.kl_estimate(st.logp, batch.ref_logp, "k3")
        expected = losses.aggregate(pg + cfg.beta * kl, batch.loss_mask, cfg.loss_aggregation, cfg.max_new_tokens)
    acc = run_update(run, batch)
    assert acc.loss == pytest.approx(expected.item(), abs=1e-6)


# ---------------------------------------------------------------------- non-finite losses
def nan_on_call(monkeypatch, which: int):
    calls = {"n": 0}
    real = losses.aggregate

    def aggregate(*args, **kw):
        calls["n"] += 1
        out = real(*args, **kw)
        return out * float("nan") if calls["n"] == which else out

    monkeypatch.setattr(losses, "aggregate", aggregate)
    return calls


@pytest.mark.parametrize("which", [1, 2])        # the first micro-batch, or the second after a backward
def test_non_finite_loss_skips_the_update(tiny_config, monkeypatch, which):
    cfg = tiny_config(preset="deepseekmath", task="dense", grad_accum=2)
    run, batch = setup_batch(cfg)
    actor = run.actor
    initial = state(actor)
    nan_on_call(monkeypatch, which)
    opt = torch.optim.AdamW(actor.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    acc = update_policy(run, opt, sched, batch, cfg.beta, torch.Generator())
    assert acc.skipped == 1 and acc.updates == 0
    for n, p in actor.named_parameters():
        assert torch.equal(p.detach(), initial[n]), n
        assert p.grad is None, n                              # no half-accumulated gradient left over
    assert not opt.state and sched.last_epoch == 0


def test_non_finite_gradient_skips_the_update(tiny_config):
    cfg = tiny_config(preset="dr_grpo", task="dense")
    run, batch = setup_batch(cfg)
    actor = run.actor
    initial = state(actor)
    actor.model.norm.weight.register_hook(lambda g: g * float("inf"))
    acc = run_update(run, batch)
    assert acc.skipped == 1 and acc.updates == 0
    assert all(torch.equal(p.detach(), initial[n]) for n, p in actor.named_parameters())


def test_non_finite_loss_stops_the_run_and_the_last_checkpoint_resumes(tiny_config, monkeypatch):
    from grpo.errors import NonFinite
    cfg = tiny_config(preset="dr_grpo", task="dense", eval_size=0, save_model=False, max_steps=3, save_every=1)
    calls = nan_on_call(monkeypatch, 2)                   # the loss of step 2
    with pytest.raises(NonFinite) as e:
        train(cfg, log=lambda *a: None)
    assert str(e.value).startswith("update: a non-finite loss at step 2; that update was not applied and the run "
                                   "stops here; the last checkpoint, step-000001, resumes with --resume latest")
    assert [r["step"] for r in read_jsonl(cfg_out(cfg) / "metrics.jsonl")] == [1]
    calls["n"] = -100                                     # healthy again
    train(dataclasses.replace(cfg, resume="latest"), log=lambda *a: None)
    assert [r["step"] for r in read_jsonl(cfg_out(cfg) / "metrics.jsonl")] == [1, 2, 3]


def test_a_nan_weight_is_refused_when_the_model_loads(tiny_model_dir, tiny_config, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_model_dir, bad)
    weights = load_file(bad / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"model: .*bad-model has non-finite values in weight "
                                          r"model.layers.1.mlp.up_proj.weight \(1 of 2048: NaN or infinite\)"):
        train(tiny_config(model=str(bad), eval_size=0), log=lambda *a: None)


def test_logits_gone_non_finite_stop_the_run_at_sampling(tiny_model_dir, tiny_config):
    """Weights that turn NaN mid-run (here poisoned after step 1) stop the next step at sampling in
    one line naming the phase, with the last checkpoint to resume from; no skip is offered."""
    from grpo.errors import NonFinite
    from grpo.train.inputs import Inputs
    model, _ = loading.load_model(tiny_model_dir, torch.device("cpu"))

    class Poison:
        def on_step_end(self, step, metrics):
            with torch.no_grad():
                model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))

    cfg = tiny_config(eval_size=0, save_model=False, max_steps=3, save_every=1, nonfinite="skip")
    with pytest.raises(NonFinite) as e:
        train(cfg, log=lambda *a: None, inputs=Inputs(model=model, callbacks=[Poison()]))
    assert str(e.value).startswith("sampling: non-finite log-probs at step 2 (")
    assert str(e.value).endswith("the model's logits hold NaN or infinite values); the run stops here; the last "
                                 "checkpoint, step-000001, resumes with --resume latest; try a lower --lr, "
                                 "--max-grad-norm 1.0, --rollout-dtype fp32")
    assert [r["step"] for r in read_jsonl(cfg_out(cfg) / "metrics.jsonl")] == [1]


def test_non_finite_loss_is_counted_in_metrics(tiny_config, monkeypatch):
    cfg = tiny_config(preset="dr_grpo", task="dense", eval_size=0, save_model=False, nonfinite="skip")
    nan_on_call(monkeypatch, 1)
    summary = train(cfg, log=lambda *a: None)
    rows = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    assert [r["updates/skipped_nonfinite"] for r in rows] == [1, 1]
    assert rows[0]["loss"] is None and math.isfinite(rows[1]["loss"])
    assert summary["skipped_updates"] == 1


# ------------------------------------------------------------------------ reward errors
PROMPTS, COMPLETIONS = ["1+1=", "2+2=", "3+3="], ["2", "oops", "6"]
COLUMNS = {"answer": ["2", "4", "6"]}


def test_raising_reward_names_function_sample_and_prompt():
    def picky(prompts, completions, **_):
        return [float(int(c)) for c in completions]

    with pytest.raises(RewardError) as e:
        score({"picky": (picky, 1.0)}, PROMPTS, COMPLETIONS, COLUMNS)
    msg = str(e.value)
    assert "'picky'" in msg and "sample 1" in msg and "'2+2='" in msg and "ValueError" in msg, msg


@pytest.mark.parametrize("result, expected", [
    (lambda n: [1.0] * (n - 1), "returned 2 values for 3 completions"),
    (lambda n: "0.5", "returned"),
    (lambda n: ["1"] * n, "returned '1' (expected a finite number or None) on sample 0"),
    (lambda n: [1.0, float("nan"), 0.0], "returned nan (expected a finite number or None) on sample 1"),
])
def test_malformed_reward_names_function(result, expected):
    def bad(prompts, completions, **_):
        return result(len(completions))

    with pytest.raises(RewardError) as e:
        score({"good": (crc_reward, 1.0), "bad_fn": (bad, 0.5)}, PROMPTS, COMPLETIONS, COLUMNS)
    msg = str(e.value)
    assert "'bad_fn'" in msg and expected in msg, msg


def test_weighted_rewards_and_unscorable():
    def half(prompts, completions, **_):
        return [0.5, None, 1.0]

    total, per_fn, unscorable, _ = score({"crc": (crc_reward, 2.0), "half": (half, -1.0)}, PROMPTS, COMPLETIONS,
                                         COLUMNS)
    crc = torch.tensor(crc_reward(PROMPTS, COMPLETIONS))
    torch.testing.assert_close(total, 2.0 * crc - torch.tensor([0.5, 0.0, 1.0]))
    assert unscorable["half"].tolist() == [False, True, False] and set(per_fn) == {"crc", "half"}


def test_reward_error_stops_training(tiny_config, monkeypatch):
    def broken(prompts, completions, **_):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(tasks_mod.TASKS, "broken", lambda: dense_task(broken=broken))
    cfg = tiny_config(task="broken", eval_size=0, save_model=False)
    with pytest.raises(RewardError, match=r"'broken' raised ZeroDivisionError: boom on sample 0"):
        train(cfg, log=lambda *a: None)


# ------------------------------------------------------------------ every policy loss trains
@pytest.mark.parametrize("loss", sorted(losses.POLICY_LOSSES.names()))
def test_every_policy_loss_trains(tiny_config, loss):
    """Two real steps with two passes over each batch (so pi_theta leaves pi_old and the ratios
    matter): finite losses, the weights move."""
    cfg = tiny_config(preset="deepseekmath", task="dense", policy_loss=loss, updates_per_batch=2, lr=1e-2,
                      eval_size=0, save_model=False)
    summary = train(cfg, log=lambda *a: None)
    rows = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and summary["skipped_updates"] == 0
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    assert any(r["ratio/max"] != 1.0 or r["ratio/min"] != 1.0 for r in rows)


@pytest.mark.parametrize("estimator", sorted(adv_registry.ADVANTAGE_ESTIMATORS.names()))
def test_every_advantage_estimator_trains(tiny_config, estimator, monkeypatch):
    """Two real steps with two reward functions (GDPO normalises each on its own)."""
    def half(prompts, completions, **_):
        return [0.5 * (len(c) % 2) for c in completions]

    monkeypatch.setitem(tasks_mod.TASKS, "dense2", lambda: dense_task(crc=crc_reward, half=half))
    cfg = tiny_config(preset="deepseekmath", task="dense2", advantage_estimator=estimator, eval_size=0,
                      save_model=False)
    train(cfg, log=lambda *a: None)
    rows = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    assert {"reward/crc/mean", "reward/half/mean"} <= set(rows[0])


def test_mask_truncated_completions_drops_cut_completions_from_the_loss(tiny_config):
    cfg = tiny_config(preset="deepseekmath", task="dense", prompts_per_step=4, max_new_tokens=3,
                      mask_truncated_completions=True)
    run, batch = setup_batch(cfg)
    cut = batch.rollout.truncated
    assert cut.any() and (~cut).any(), "the tiny model should cut some completions at 3 tokens and end others"
    assert not batch.loss_mask[cut].any()                                   # no token of a cut completion
    assert torch.equal(batch.loss_mask[~cut], batch.rollout.completion_mask[~cut])
    _, plain = setup_batch(tiny_config(preset="deepseekmath", task="dense", prompts_per_step=4, max_new_tokens=3))
    assert plain.loss_mask[cut].any()                                       # the default keeps them


def test_kl_clamp_bounds_each_tokens_kl(tiny_config):
    """Two passes at a high learning rate move the policy off the reference; the clamp caps every
    token's k3, so the logged mean KL (over the steps' tokens) stays within it."""
    common = dict(preset="deepseekmath", task="dense", updates_per_batch=2, lr=5e-2, max_steps=2, eval_size=0,
                  save_model=False)
    free, capped = tiny_config(**common), tiny_config(**common, kl_clamp=1e-7)
    train(free, log=lambda *a: None)
    train(capped, log=lambda *a: None)
    kl_free = [r["kl"] for r in read_jsonl(cfg_out(free) / "metrics.jsonl")]
    kl_capped = [r["kl"] for r in read_jsonl(cfg_out(capped) / "metrics.jsonl")]
    assert max(kl_free) > 1e-5
    assert all(0 <= k <= 1e-7 + 1e-12 for k in kl_capped)
