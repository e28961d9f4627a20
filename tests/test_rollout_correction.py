"""The sampler/trainer mismatch correction, bf16 sampling, top-entropy tokens, the entropy bonus,
the reference refresh and DAPO's dynamic sampling: the pure functions by hand, then real steps
of the tiny model through the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from grpo.algo import losses
from grpo.config import ConfigError, rollout_is_bounds
from grpo.data import tasks as tasks_mod
from grpo.rollout.base import Rollout, concat
from grpo.train import train
from grpo.train.update import token_terms

from test_training import cfg_out, crc_reward, dense_task, read_jsonl, setup_batch


@pytest.fixture(autouse=True)
def _dense_task(monkeypatch):
    monkeypatch.setitem(tasks_mod.TASKS, "dense", dense_task)


def _logs(*probs):
    return torch.tensor(probs, dtype=torch.float64).log()


# ---------------------------------------------------------------------------- by hand
# Two sequences: the first of 3 tokens with pi_train / pi_sampler = 0.5/0.25, 0.2/0.4, 0.9/0.1
# = 2, 0.5, 9; the second of 2 tokens (and a pad) with 0.6/0.4, 0.3/0.3 = 1.5, 1.
TRAIN = torch.stack([_logs(0.5, 0.2, 0.9), _logs(0.6, 0.3, 1.0)])
SAMPLER = torch.stack([_logs(0.25, 0.4, 0.1), _logs(0.4, 0.3, 1.0)])
MASK = torch.tensor([[True, True, True], [True, True, False]])


@pytest.mark.parametrize("mode, low, high, weight, masked", [
    # tis: min(w, 2): [2, 0.5, 2], [1.5, 1]; nothing masked
    ("tis", None, 2.0, [[2.0, 0.5, 2.0], [1.5, 1.0, 1.0]], [[0, 0, 0], [0, 0, 0]]),
    # icepop [0.5, 5]: 0.5 is inside (not < 0.5), 9 > 5 is zeroed
    ("icepop", 0.5, 5.0, [[2.0, 0.5, 0.0], [1.5, 1.0, 1.0]], [[0, 0, 1], [0, 0, 0]]),
    # seq_tis: sequence ratios 2 * 0.5 * 9 = 9 -> 2; 1.5 * 1 = 1.5 stays
    ("seq_tis", None, 2.0, [[2.0, 2.0, 2.0], [1.5, 1.5, 1.0]], [[0, 0, 0], [0, 0, 0]]),
    # mis at 3: the first sequence (9 > 3) is masked whole, the second keeps 1.5
    ("mis", None, 3.0, [[0.0, 0.0, 0.0], [1.5, 1.5, 1.0]], [[1, 1, 1], [0, 0, 0]]),
    ("none", None, None, [[1.0] * 3, [1.0] * 3], [[0, 0, 0], [0, 0, 0]]),
])
def test_rollout_weights_by_hand(mode, low, high, weight, masked):
    w = losses.rollout_weights(TRAIN, SAMPLER, MASK, mode, low, high)
    assert torch.allclose(w.weight, torch.tensor(weight, dtype=torch.float64))
    assert torch.equal(w.masked, torch.tensor(masked, dtype=torch.bool))
    assert torch.allclose(w.log_ratio, torch.where(MASK, TRAIN - SAMPLER, 0.0))


def test_each_modes_default_bounds():
    def cfg(mode, lo=None, hi=None):
        return type("C", (), dict(rollout_correction=mode, rollout_is_min=lo, rollout_is_max=hi))()
    assert rollout_is_bounds(cfg("tis")) == (None, 2.0)
    assert rollout_is_bounds(cfg("icepop")) == (0.5, 5.0)
    assert rollout_is_bounds(cfg("mis")) == (None, 3.0)
    assert rollout_is_bounds(cfg("icepop", 0.8, 1.25)) == (0.8, 1.25)


def test_mismatch_kl_is_k3():
    # d = log 2: e^d - 1 - d = 2 - 1 - 0.693147 = 0.306853; d = 0: 0
    d = torch.tensor([math.log(2.0), 0.0], dtype=torch.float64)
    assert torch.allclose(losses.mismatch_kl(d), torch.tensor([1.0 - math.log(2.0), 0.0], dtype=torch.float64))


def test_high_entropy_mask_by_hand():
    # valid entropies sorted 0.1 0.3 0.5 0.7 0.9; rho 0.4: the 0.6 quantile is at 0.6 * 4 = 2.4,
    # 0.5 + 0.4 * (0.7 - 0.5) = 0.58, so 0.7 and 0.9 stay; the padded 5.0 never does
    ent = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.7, 5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    kept = losses.high_entropy_mask(ent, mask, 0.4)
    assert torch.equal(kept, torch.tensor([[False, False, True], [False, True, False]]))
    assert torch.equal(losses.high_entropy_mask(ent, mask, 1.0), mask)
    x = torch.rand(997, dtype=torch.float64)
    for q in (0.0, 0.13, 0.5, 0.8, 1.0):
        assert torch.isclose(losses.quantile(x, q), torch.quantile(x, q))


def test_concat_pads_prompts_left_and_completions_right():
    def roll(P, L, fill):
        n = 2
        return Rollout(torch.full((n, P), fill), torch.ones(n, P, dtype=torch.long), torch.full((n, L), fill),
                       torch.ones(n, L, dtype=torch.bool), torch.full((n, L), -0.5), torch.full((n,), L),
                       torch.zeros(n, dtype=torch.bool), torch.full((n, L), 0.25))
    r = concat([roll(3, 2, 7), roll(1, 4, 8)], pad_id=0)
    assert r.prompt_ids.shape == (4, 3) and r.completion_ids.shape == (4, 4)
    assert r.prompt_ids[2].tolist() == [0, 0, 8] and r.prompt_mask[2].tolist() == [0, 0, 1]
    assert r.completion_ids[0].tolist() == [7, 7, 0, 0] and r.completion_mask[0].tolist() == [True, True, False, False]
    assert r.logprobs[0].tolist() == [-0.5, -0.5, 0.0, 0.0] and r.entropy[1].tolist() == [0.25, 0.25, 0.0, 0.0]
    assert r.lengths.tolist() == [2, 2, 4, 4]


# ------------------------------------------------------------------ through the trainer
def test_the_weight_multiplies_each_tokens_policy_loss(tiny_config):
    """A slow reference: the trainer's per-token policy term under `tis` equals the plain loss
    times min(pi_train / pi_sampler, cap), with the sampler's log-probs perturbed so it matters."""
    cfg = tiny_config(preset="deepseekmath", task="dense", beta=0.0, rollout_correction="tis", rollout_is_max=1.2)
    run, batch = setup_batch(cfg)
    mask = batch.rollout.completion_mask
    noise = torch.randn(batch.rollout.logprobs.shape, generator=torch.Generator().manual_seed(0)) * 0.3
    batch.rollout.logprobs = torch.where(mask, batch.rollout.logprobs + noise, 0.0)
    seqs = torch.arange(mask.shape[0])
    _, terms = token_terms(run, batch, seqs, 0.0, reuse_logp_as_old=True)
    W = terms.policy.shape[1]
    # the plain clip term at pi_theta = pi_old is -A; the weight is exp(logp - sampler) capped at 1.2
    from grpo.models.logprobs import token_stats
    st = token_stats(run.actor, batch.rollout, temperature=cfg.temperature, chunk=cfg.logprob_chunk)
    logp = st.logp.detach()[:, :W]
    adv = batch.adv.normalized[:, :W]
    m = mask[:, :W]
    expected = torch.where(m, -adv * (logp - batch.rollout.logprobs[:, :W]).exp().clamp(max=1.2), 0.0)
    assert torch.allclose(terms.policy.detach().where(m, 0.0), expected.float(), atol=1e-5)
    assert terms.mismatch.weight[m].max() <= 1.2 + 1e-6 and terms.mismatch.weight[m].min() < 1.0


def test_fp32_sampling_matches_the_trainer_and_bf16_does_not(tiny_config):
    """The mismatch metrics: fp32 sampling gives the trainer's own log-probs to float rounding;
    bf16 sampling differs measurably, and icepop with a tight band masks tokens."""
    common = dict(preset="deepseekmath", task="dense", eval_size=0, save_model=False, max_steps=1)
    fp32 = tiny_config(**common, rollout_correction="tis")
    bf16 = tiny_config(**common, rollout_dtype="bf16", rollout_correction="icepop", rollout_is_min=0.999,
                       rollout_is_max=1.001)
    train(fp32, log=lambda *a: None)
    train(bf16, log=lambda *a: None)
    a = read_jsonl(cfg_out(fp32) / "metrics.jsonl")[0]
    b = read_jsonl(cfg_out(bf16) / "metrics.jsonl")[0]
    assert a["mismatch/logp_diff_max"] < 1e-4 and a["mismatch/kl"] < 1e-8 and a["mismatch/masked_frac"] == 0
    assert b["mismatch/logp_diff_max"] > 1e-3 and b["mismatch/kl"] > a["mismatch/kl"]
    assert 0 < b["mismatch/masked_frac"] < 1 and b["mismatch/weight_mean"] < 1


def test_multiple_updates_take_the_trainers_old_policy_from_a_pass(tiny_config):
    cfg = tiny_config(preset="deepseekmath", task="dense", updates_per_batch=2, rollout_correction="tis",
                      eval_size=0, save_model=False, max_steps=1)
    run, batch = setup_batch(cfg)
    assert batch.old_logp is not None
    m = batch.rollout.completion_mask
    assert torch.allclose(batch.old_logp[m], batch.rollout.logprobs[m], atol=1e-4)   # fp32: the same policy
    train(cfg, log=lambda *a: None)
    row = read_jsonl(cfg_out(cfg) / "metrics.jsonl")[0]
    assert "time/old_policy" in row and row["mismatch/logp_diff_max"] < 1e-4
    _, plain = setup_batch(tiny_config(preset="deepseekmath", task="dense", updates_per_batch=2))
    assert plain.old_logp is None                                   # no correction: no extra pass


def test_top_entropy_tokens_only(tiny_config):
    """rho = 0.2: about a fifth of the loss tokens stay (ties may keep a few more); the sampler's
    recorded entropies are the trainer's own (fp32)."""
    cfg = tiny_config(preset="deepseekmath", task="dense", top_entropy_quantile=0.2)
    run, batch = setup_batch(cfg)
    m = batch.loss_mask
    kept = batch.entropy_mask.sum().item() / m.sum().item()
    assert 0.19 <= kept <= 0.3
    ent = batch.rollout.entropy
    assert ent[m & batch.entropy_mask].min() >= ent[m & ~batch.entropy_mask].max()
    from grpo.models.logprobs import token_stats
    st = token_stats(run.actor, batch.rollout, temperature=cfg.temperature, chunk=cfg.logprob_chunk)
    assert torch.allclose(st.entropy[m], ent[m], atol=1e-4)
    _, terms = token_terms(run, batch, torch.arange(m.shape[0]), 0.0, reuse_logp_as_old=True)
    W = terms.policy.shape[1]
    assert (terms.policy.detach()[~batch.entropy_mask[:, :W]] == 0).all()


def test_entropy_bonus_moves_the_weights_without_advantages(tiny_config, monkeypatch):
    """Equal rewards: every advantage is 0, so only the bonus has a gradient; one update with it
    raises the entropy of the same tokens, and none moves nothing without it."""
    from grpo.models.logprobs import token_stats
    from test_training import run_update
    monkeypatch.setitem(tasks_mod.TASKS, "flat", lambda: dense_task(one=lambda p, c, **_: [1.0] * len(c)))

    def mean_entropy(run, batch):
        m = batch.rollout.completion_mask
        with torch.no_grad():
            return token_stats(run.actor, batch.rollout, temperature=1.0, chunk=64).entropy[m].mean().item()

    for coef in (0.0, 0.5):
        run, batch = setup_batch(tiny_config(preset="deepseekmath", task="flat", beta=0.0, entropy_coef=coef))
        before = mean_entropy(run, batch)
        acc = run_update(run, batch, lr=0.5)
        after = mean_entropy(run, batch)
        if coef == 0:
            assert acc.grad_norm == 0 and after == before
        else:
            assert acc.grad_norm > 0 and after > before + 1e-3


def test_reference_refresh_mixes_and_resumes(tiny_config):
    """Every 2 steps ref <- 0.5 actor + 0.5 ref; a checkpoint holds it and a resume restores it."""
    from grpo.train.checkpoint import load_state
    common = dict(preset="deepseekmath", task="dense", eval_size=0, save_model=False, ref_sync_every=2,
                  ref_sync_alpha=0.5, lr=1e-2, save_every=2)
    cfg = tiny_config(**common, max_steps=2)
    train(cfg, log=lambda *a: None)
    rows = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    assert "reference/refreshed" not in rows[0] and rows[1]["reference/refreshed"] == 1
    state = load_state(cfg_out(cfg) / "checkpoints" / "step-000002")
    from safetensors.torch import load_file
    actor = load_file(next((cfg_out(cfg) / "checkpoints" / "step-000002" / "model").glob("*.safetensors")))
    run, _ = setup_batch(tiny_config(**common, max_steps=2))
    start = dict(run.ref.model.named_parameters())
    for name, ref in state["reference"].items():   # 0.5 * actor_2 + 0.5 * ref_0 (the initial weights)
        if name in actor:
            assert torch.allclose(ref, 0.5 * actor[name] + 0.5 * start[name].detach(), atol=1e-6), name
    resumed = tiny_config(**{**common, "max_steps": 3, "output_dir": str(cfg_out(cfg))}, resume="latest")
    train(resumed, log=lambda *a: None)
    again = tiny_config(**common, max_steps=3)
    train(again, log=lambda *a: None)
    r1 = read_jsonl(cfg_out(cfg) / "metrics.jsonl")
    r2 = read_jsonl(cfg_out(again) / "metrics.jsonl")
    assert [r["kl"] for r in r1] == [r["kl"] for r in r2]             # the resumed run's KL used the refreshed reference


def test_reference_refresh_refuses_lora_and_a_run_without_reference(tiny_config):
    with pytest.raises(ConfigError, match="under LoRA"):
        tiny_config(preset="deepseekmath", lora_rank=4, ref_sync_every=2)
    with pytest.raises(ConfigError, match="no reference to refresh"):
        tiny_config(preset="dr_grpo", ref_sync_every=2)


def test_dynamic_sampling_fills_the_batch_with_groups_that_differ(tiny_config, monkeypatch):
    """A reward that is dense on half the prompts and constant on the rest: one draw holds
    equal-reward groups; dynamic sampling draws again until none is left (or the cap)."""
    def half(prompts, completions, **_):
        return [crc_reward([p], [c])[0] if sum(map(ord, p)) % 2 else 0.0 for p, c in zip(prompts, completions)]

    monkeypatch.setitem(tasks_mod.TASKS, "half", lambda: dense_task(half=half))
    common = dict(preset="dapo", task="half", eval_size=0, save_model=False, max_steps=2, prompts_per_step=4)
    one = tiny_config(**common, dynamic_sampling=False)
    many = tiny_config(**common)
    capped = tiny_config(**common, dynamic_sampling_max_draws=1)
    for cfg in (one, many, capped):
        train(cfg, log=lambda *a: None)
    r1, r2, r3 = (read_jsonl(cfg_out(c) / "metrics.jsonl") for c in (one, many, capped))
    assert any(r["groups/zero_variance_frac"] > 0 for r in r1)
    assert all(r["groups/zero_variance_frac"] == 0 and r["dynamic/short_groups"] == 0 for r in r2)
    assert any(r["dynamic/draws"] > 1 for r in r2)
    assert [r["dynamic/draws"] for r in r3] == [1, 1]
    # one draw of dynamic sampling is the plain run's batch
    assert [r["reward/mean"] for r in r3] == [r["reward/mean"] for r in r1]
