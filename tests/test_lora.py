"""LoRA, the adapter-disabled reference, and the memory switches, on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

import zlib
from pathlib import Path

from grpo.data import tasks as tasks_mod
from grpo.data.prompts import encode_prompts
from grpo.models.loading import load_model
from grpo.models.logprobs import reference_logprobs, token_stats
from grpo.models.lora import add_lora
from grpo.models.reference import Reference
from grpo.rollout import generate
from grpo.train import loop as train_mod
from grpo.train import train


@pytest.fixture(autouse=True)
def _dense_task(monkeypatch):
    """The arithmetic prompts with a dense reward, so a tiny random model gets non-zero advantages."""
    base = tasks_mod.arithmetic()

    def crc(prompts, completions, **_):
        return [(zlib.crc32(c.encode()) % 97) / 96 for c in completions]

    monkeypatch.setitem(tasks_mod.TASKS, "dense", lambda: tasks_mod.Task(
        name="dense", train_size=base.train_size, heldout_size=base.heldout_size, row=base.row, rewards={"crc": crc}))


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_adapter_disabled_reference_is_the_base_model(tiny_model_dir, tiny_config):
    base, tok = load_model(tiny_model_dir, torch.device("cpu"))
    actor, _ = load_model(tiny_model_dir, torch.device("cpu"))
    actor = add_lora(actor, tiny_config(lora_rank=4))
    with torch.no_grad():                      # move the adapter away from its zero init
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids, mask = encode_prompts(tok, ["12+3=", "7+80="], "cpu")
    roll = generate(base, ids, mask, max_new_tokens=4, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
                    generator=torch.Generator().manual_seed(0))
    kw = dict(temperature=1.0, chunk=16)
    reference = Reference.adapter_disabled(actor)
    with torch.no_grad():
        ref = reference_logprobs(reference, roll, **kw)
        plain = token_stats(base, roll, **kw).logp
        adapted = token_stats(actor, roll, **kw).logp
    assert torch.allclose(ref, plain, atol=1e-6)          # adapter off == the base weights
    assert not torch.allclose(adapted, plain, atol=1e-3)  # adapter on changes the policy
    # and the reference holds no weights of its own: its model is the actor
    assert reference.model is actor and reference.shares_actor


def test_lora_trains_only_the_adapter_and_saves_it(tiny_config, tmp_path, monkeypatch):
    seen = {}
    real = train_mod.build_models

    def spy(cfg, device, log=print, **kw):
        out = real(cfg, device, log, **kw)
        seen["actor"] = out[0]
        seen["before"] = {n: p.detach().clone() for n, p in out[0].named_parameters()}
        return out

    real_save = train_mod.save_final

    def save_spy(cfg, actor, *a):
        # --save-merged merges the adapter into the actor in place: look before it does
        seen["after"] = {n: p.detach().clone() for n, p in actor.named_parameters()}
        return real_save(cfg, actor, *a)

    monkeypatch.setattr(train_mod, "build_models", spy)
    monkeypatch.setattr(train_mod, "save_final", save_spy)
    cfg = tiny_config(preset="deepseekmath", task="dense", lora_rank=4, lr=5e-2, max_steps=3, eval_size=0, save_merged=True,
                      output_dir=str(tmp_path / "run"))
    train(cfg, log=lambda *a: None)
    after = seen["after"]
    moved = {n for n, p in after.items() if not torch.equal(p, seen["before"][n])}
    assert moved and all("lora_" in n for n in moved)             # the base never changes
    assert any("lora_B" in n for n in moved)
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged")
    assert not hasattr(merged, "peft_config")
    assert all(r["kl"] is not None for r in rows(tmp_path / "run"))


@pytest.mark.slow
def test_lora_resume_is_exact(tiny_config, tmp_path):
    common = dict(preset="deepseekmath", task="dense", lora_rank=4, lr=5e-2, max_steps=4, save_every=2, eval_size=0)
    train(tiny_config(**common, output_dir=str(tmp_path / "whole")), log=lambda *a: None)
    train(tiny_config(**{**common, "max_steps": 2}, output_dir=str(tmp_path / "part")), log=lambda *a: None)
    train(tiny_config(**common, output_dir=str(tmp_path / "part"), resume="latest"), log=lambda *a: None)

    def strip(rs):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]
    assert strip(rows(tmp_path / "part")) == strip(rows(tmp_path / "whole"))


@pytest.mark.parametrize("switches", [dict(gradient_checkpointing=True), dict(bf16=True), dict(grad_accum=2)])
def test_memory_switches_train(tiny_config, tmp_path, switches):
    cfg = tiny_config(preset="deepseekmath", task="dense", max_steps=2, eval_size=0, output_dir=str(tmp_path / "run"),
                      **switches)
    train(cfg, log=lambda *a: None)
    for r in rows(tmp_path / "run"):
        assert r["loss"] is not None and r["grad_norm"] is not None


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tmp_path):
    out = {}
    for gc in (False, True):
        cfg = tiny_config(preset="deepseekmath", task="dense", max_steps=2, eval_size=0, gradient_checkpointing=gc,
                          output_dir=str(tmp_path / f"gc{gc}"))
        train(cfg, log=lambda *a: None)
        out[gc] = [(r["loss"], r["grad_norm"]) for r in rows(tmp_path / f"gc{gc}")]
    for (l0, g0), (l1, g1) in zip(out[False], out[True]):
        assert l0 == pytest.approx(l1, abs=1e-6) and g0 == pytest.approx(g1, rel=1e-4)


def test_merged_lora_sampling_equals_the_adapter_path_and_leaves_the_base_alone(tiny_model_dir, tiny_config):
    from grpo.models.loading import hf_model
    from grpo.models.lora import lora_merged
    actor, tok = load_model(tiny_model_dir, torch.device("cpu"))
    actor = add_lora(actor, tiny_config(lora_rank=4, lora_dropout=0.0))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    actor.eval()
    base = {n: p.clone() for n, p in actor.named_parameters() if "base_layer" in n}
    from grpo.models.lora import plain_lora_layers
    before = [(m, vars(m).get("forward")) for m in plain_lora_layers(actor)]
    assert before
    ids, mask = encode_prompts(tok, ["12+3=", "7+80="], "cpu")
    kw = dict(max_new_tokens=6, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, num_samples=3)
    with torch.no_grad():
        plain_logits = hf_model(actor)(input_ids=ids, attention_mask=mask).logits
    plain = generate(hf_model(actor), ids, mask, generator=torch.Generator().manual_seed(5), **kw)
    with lora_merged(actor) as m:
        merged_logits = hf_model(m)(input_ids=ids, attention_mask=mask).logits
        merged = generate(hf_model(m), ids, mask, generator=torch.Generator().manual_seed(5), **kw)
    with torch.no_grad(), actor.disable_adapter():
        base_logits = hf_model(actor)(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(plain_logits, base_logits, atol=1e-3)       # the adapter matters here
    torch.testing.assert_close(merged_logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(merged.completion_ids, plain.completion_ids)
    torch.testing.assert_close(merged.logprobs, plain.logprobs, atol=1e-5, rtol=0)
    for n, p in actor.named_parameters():                  # base weights untouched, layers restored
        if n in base:
            assert torch.equal(p, base[n])
    assert all(vars(m).get("forward") is f for m, f in before)           # the layers' own forwards are back


def test_lean_lora_forward_equals_peft_values_and_gradients(tiny_model_dir, tiny_config):
    """add_lora installs the fused forward; removing it gives peft's own: same outputs and the
    same adapter gradients."""
    from grpo.models.loading import hf_model
    from grpo.models.lora import plain_lora_layers
    actor, tok = load_model(tiny_model_dir, torch.device("cpu"))
    actor = add_lora(actor, tiny_config(lora_rank=4))
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    layers = list(plain_lora_layers(actor))
    assert layers and all("forward" in vars(m) for m in layers)
    ids, mask = encode_prompts(tok, ["12+3=", "7+80=", "5+5="], "cpu")
    w = torch.randn(3, ids.shape[1], generator=torch.Generator().manual_seed(0))

    def run():
        actor.zero_grad(set_to_none=True)
        logits = hf_model(actor)(input_ids=ids, attention_mask=mask).logits
        (torch.log_softmax(logits, -1)[..., 1] * w).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in actor.named_parameters() if p.requires_grad}

    lean_out, lean_grads = run()
    for m in layers:
        del m.forward                                   # back to peft's forward
    peft_out, peft_grads = run()
    torch.testing.assert_close(lean_out, peft_out, atol=1e-5, rtol=1e-5)
    assert lean_grads.keys() == peft_grads.keys() and all(g.abs().sum() > 0 for g in peft_grads.values())
    for n in peft_grads:
        torch.testing.assert_close(lean_grads[n], peft_grads[n], atol=1e-6, rtol=1e-4, msg=n)


def test_bf16_base_products_run_from_a_bf16_copy_and_keep_the_adapter_in_fp32(tiny_model_dir, tiny_config):
    """lora_base_dtype=bf16: each plain LoRA layer's base product is linear(x.bf16, W.bf16) cast
    back, the adapter's product stays fp32, the adapter-disabled reference takes the same base
    product, and a base weight changed in place is copied again."""
    from grpo.models.lora import plain_lora_layers
    actor, _ = load_model(tiny_model_dir, torch.device("cpu"))
    actor = add_lora(actor, tiny_config(lora_rank=4, lora_base_dtype="bf16"))
    m = next(plain_lora_layers(actor))
    name = m.active_adapters[0]
    with torch.no_grad():
        m.lora_B[name].weight.normal_(0, 0.5)
    x = torch.randn(5, m.base_layer.in_features, generator=torch.Generator().manual_seed(1), requires_grad=True)
    W, b = m.base_layer.weight, m.base_layer.bias

    def base16(x):
        return torch.nn.functional.linear(x.to(torch.bfloat16), W.to(torch.bfloat16),
                                          None if b is None else b.to(torch.bfloat16)).float()

    adapter = m.scaling[name] * torch.nn.functional.linear(torch.nn.functional.linear(x, m.lora_A[name].weight),
                                                            m.lora_B[name].weight)
    out = m(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, base16(x) + adapter, atol=1e-5, rtol=1e-5)
    fp32 = torch.nn.functional.linear(x, W, b) + adapter
    assert not torch.allclose(out, fp32, atol=1e-6)            # the base product did run in bf16 ...
    torch.testing.assert_close(out, fp32, atol=0.05, rtol=0.02)  # ... and is close to fp32
    # the adapter's gradient: through the fp32 adapter path, the same as with an fp32 base
    out.sum().backward()
    g16 = m.lora_A[name].weight.grad.clone()
    m.lora_A[name].weight.grad = None
    adapter.sum().backward()
    torch.testing.assert_close(g16, m.lora_A[name].weight.grad)
    assert W.grad is None and not W.requires_grad
    with torch.no_grad(), actor.disable_adapter():              # the reference: the same base product
        torch.testing.assert_close(m(x), base16(x), atol=0, rtol=0)
        W.mul_(2.0)                                             # changed in place: copied again
        torch.testing.assert_close(m(x), base16(x), atol=0, rtol=0)


def test_bf16_base_trains_close_to_fp32_and_needs_lora(tiny_config, tmp_path):
    """A LoRA run with bf16 base products trains on the same first samples as the fp32 run, with
    a zero KL on step 1 (the adapter starts at zero and the reference takes the same bf16 base
    products as the policy); the setting without LoRA, or with --fsdp, is refused."""
    from grpo.config import ConfigError
    runs = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        train(tiny_config(task="dense", lora_rank=4, lora_base_dtype=dtype, beta=0.04, max_steps=2,
                           output_dir=str(out)))
        runs[dtype] = rows(out)
    assert len(runs["bf16"]) == 2 and all(math.isfinite(r["loss"]) for r in runs["bf16"])
    a, b = runs["fp32"][0], runs["bf16"][0]
    assert a["reward/mean"] == b["reward/mean"]                         # the same samples on step 1
    assert a["kl"] == 0 and b["kl"] == 0
    assert runs["bf16"][1]["kl"] != 0                                    # the adapter moved the policy
    with pytest.raises(ConfigError, match="lora_base_dtype.*lora_rank"):
        tiny_config(lora_base_dtype="bf16")
    with pytest.raises(ConfigError, match="lora_base_dtype.*fsdp"):
        tiny_config(lora_rank=4, lora_base_dtype="bf16", fsdp=True)


def test_bf16_base_gradients_follow_the_fp32_ones_through_the_whole_model(tiny_model_dir, tiny_config):
    """Through every layer (the projections that read one input share its bf16 cast), the adapter
    gradients with bf16 base products point where the fp32 ones do, and with and without
    gradient checkpointing they are the same."""
    from grpo.models.loading import hf_model
    ids = torch.randint(3, 17, (3, 12), generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 12, generator=torch.Generator().manual_seed(1))
    grads = {}
    for dtype, ckpt in (("fp32", False), ("bf16", False), ("bf16", True)):
        actor, _ = load_model(tiny_model_dir, torch.device("cpu"))
        torch.manual_seed(0)                                # the same adapter init each time
        actor = add_lora(actor, tiny_config(lora_rank=4, lora_base_dtype=dtype))
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            for name, p in actor.named_parameters():
                if "lora_B" in name:
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
        if ckpt:
            hf_model(actor).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            actor.train()
        logits = hf_model(actor)(input_ids=ids).logits
        (torch.log_softmax(logits, -1)[..., 1] * w).sum().backward()
        grads[dtype, ckpt] = torch.cat([p.grad.flatten() for p in actor.parameters() if p.requires_grad])
    a, b = grads["fp32", False], grads["bf16", False]
    assert not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
    assert (b - a).norm() < 0.02 * a.norm()
    torch.testing.assert_close(grads["bf16", True], b)


def test_memory_estimate_counts_the_bf16_base_copies(tiny_model_dir, tiny_config):
    """The estimate's weights grow by 2 bytes per base weight of each plain LoRA layer."""
    from grpo.models.lora import plain_lora_layers
    from grpo.train.peak_estimate import estimate
    actor, _ = load_model(tiny_model_dir, torch.device("cpu"))
    actor = add_lora(actor, tiny_config(lora_rank=4))
    fp32, bf16 = (estimate(tiny_config(lora_rank=4, lora_base_dtype=d), actor, prompt_width=8) for d in ("fp32", "bf16"))
    copies = sum(m.base_layer.weight.numel() * 2 for m in plain_lora_layers(actor))
    assert copies > 0
    assert bf16.update - fp32.update == copies and bf16.sampling - fp32.sampling == copies


def test_cpu_bf16_flags_are_read_from_cpuinfo(tmp_path):
    from grpo.device import cpu_has_bf16
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    assert cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")


def test_auto_precision_follows_the_hardware_and_the_models_size(tiny_config):
    """rollout/reference/LoRA-base dtypes at auto: bf16 where the hardware multiplies bf16 natively
    (a CPU with the flags, for a model of at least 50M parameters), with TIS switched on where the
    preset corrects nothing; fp32 elsewhere; a value set by hand is kept."""
    from grpo.train.hardware import BF16_MIN_PARAMS, resolve_precision
    yes, no = (lambda: True), (lambda: False)
    big, small = BF16_MIN_PARAMS, BF16_MIN_PARAMS - 1
    cfg = tiny_config(lora_rank=4, beta=0.04)
    line = resolve_precision(cfg, "cpu", big, has_bf16=yes)
    assert (cfg.rollout_dtype, cfg.reference_dtype, cfg.lora_base_dtype, cfg.bf16) == ("bf16", "bf16", "bf16", False)
    assert cfg.rollout_correction == "tis" and "CPU multiplies bf16 natively" in line
    for size, flags in ((small, yes), (big, no)):
        cfg = tiny_config(lora_rank=4, beta=0.04)
        line = resolve_precision(cfg, "cpu", size, has_bf16=flags)
        assert (cfg.rollout_dtype, cfg.reference_dtype, cfg.lora_base_dtype, cfg.rollout_correction) == \
            ("fp32", "fp32", "fp32", "none"), line
    cfg = tiny_config(preset="dr_grpo")                       # no LoRA, no reference: sampling alone
    resolve_precision(cfg, "cpu", big, has_bf16=yes)
    assert (cfg.rollout_dtype, cfg.reference_dtype, cfg.lora_base_dtype) == ("bf16", "fp32", "fp32")
    cfg = tiny_config(lora_rank=4, rollout_correction="icepop", reference_dtype="fp32")   # set by hand: kept
    resolve_precision(cfg, "cpu", big, has_bf16=yes)
    assert (cfg.rollout_correction, cfg.reference_dtype) == ("icepop", "fp32")
    cfg = tiny_config(lora_rank=4, rollout_dtype="bf16")      # bf16 by hand: no correction added
    resolve_precision(cfg, "cpu", big, has_bf16=yes)
    assert cfg.rollout_correction == "none"
    cfg = tiny_config(lora_rank=4, fsdp=True)                 # --fsdp refuses the copies: auto gives fp32
    resolve_precision(cfg, "cpu", big, has_bf16=yes, sharded=True)
    assert (cfg.rollout_dtype, cfg.lora_base_dtype) == ("fp32", "fp32")


def test_a_tiny_model_trains_in_fp32_whatever_the_cpu(tiny_config):
    """The demo and the tests' models are far below the size where bf16 pays: auto keeps them exact."""
    from grpo.train import train
    cfg = tiny_config(lora_rank=4, beta=0.04, max_steps=1, eval_size=0, save_model=False)
    lines = []
    train(cfg, log=lines.append)
    assert (cfg.rollout_dtype, cfg.reference_dtype, cfg.lora_base_dtype, cfg.bf16) == ("fp32", "fp32", "fp32", False)
    assert cfg.micro_batch_tokens == 4096 and cfg.gradient_checkpointing is False
    assert any(x.startswith("precision (auto;") for x in lines) and any(x.startswith("memory (auto):") for x in lines)


def test_the_sampling_copy_is_cast_straight_and_shares_the_bf16_base_copies(tiny_model_dir, tiny_config):
    """rollout_dtype bf16's sampler: every parameter a frozen bf16 cast of the actor's, the actor
    untouched, the lean LoRA layers' bf16 base weights shared rather than copied again."""
    from grpo.compat import own_forward
    from grpo.models.lora import sampling_copy
    actor, _ = load_model(tiny_model_dir, torch.device("cpu"))
    actor = add_lora(actor, tiny_config(lora_rank=4, lora_base_dtype="bf16"))
    ids = torch.tensor([[5, 6, 7]])
    actor(input_ids=ids).logits.sum().backward()         # the lean layers make their bf16 base copies
    lean = [own_forward(m) for m in actor.modules() if getattr(own_forward(m), "_copy", None) is not None]
    assert lean
    copy = sampling_copy(actor, torch.bfloat16)
    mine = dict(copy.named_parameters())
    for name, p in actor.named_parameters():
        assert p.dtype == torch.float32
        assert mine[name].dtype == torch.bfloat16 and not mine[name].requires_grad
        assert torch.equal(mine[name], p.detach().to(torch.bfloat16)), name
    assert not copy.training
    shared = {t.data_ptr() for f in lean for t in f._copy if t is not None}
    copied = {t.data_ptr() for m in copy.modules() for t in (getattr(own_forward(m), "_copy", None) or ())
              if t is not None}
    assert copied and copied <= shared


def test_bf16_sampling_copies_a_lora_actor_with_bf16_base_at_every_step(tiny_config):
    """The sampler is made afresh each step from an actor whose lean layers hold the last
    update's state; three steps run and the adapter moves."""
    cfg = tiny_config(task="dense", lora_rank=4, lora_base_dtype="bf16", rollout_dtype="bf16",
                      rollout_correction="tis", beta=0.04, max_steps=3, eval_size=0, save_model=False, lr=5e-2)
    train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in rows)


def test_auto_micro_batches_grow_on_a_cpu_only_where_they_cost_little_memory(tiny_config, monkeypatch):
    """micro_batch_tokens auto: on a GPU the largest budget that fits; on a CPU the largest whose
    update peak stays within 10% of the 1024-token one's (peak_estimate.estimate decides both)."""
    import dataclasses
    from types import SimpleNamespace

    from grpo.train import hardware, peak_estimate
    monkeypatch.setattr(peak_estimate, "available", lambda device=None: 100e9)
    gb = 2 ** 30

    def estimate_with(acts_per_token):      # a fixed part plus activations proportional to the budget
        def est(**s):
            update = 2 * gb + acts_per_token * s["micro_batch_tokens"]
            return SimpleNamespace(update=update, peak=update)
        return est
    for device, acts, expect in [("cpu", 10_000, 4096),          # 4096 tokens: +0.03 GB, within 10%
                                 ("cpu", 300_000, 1024),         # 2048 tokens: +13%, too much
                                 ("cpu", 120_000, 2048),         # 2048 within 10%, 4096 not
                                 ("cuda", 300_000, 4096)]:       # a GPU takes the largest that fits
        cfg = dataclasses.replace(tiny_config(), micro_batch_tokens=None, gradient_checkpointing=False)
        hardware.resolve_memory(cfg, device, estimate_with(acts), lambda *a: None)
        assert cfg.micro_batch_tokens == expect, (device, acts)
