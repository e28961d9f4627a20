"""The static engine (grpo/rollout/static.py) on the CPU, where its units run eagerly: against the
plain decoding loop token for token, greedy and sampled with the same seeds (top-k, top-p,
min_new_tokens, entropies), with rows shed and attention in windows, with LoRA merged by the
engine, in bf16; its buffers kept from call to call; each prompt prefilled once; a model it
does not take decoded by the plain loop, said once. tests/test_cuda_engine.py runs the same
units captured in CUDA graphs on a GPU."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers

from test_lean_decode import FAMILIES, build, prompts

from grpo.models.lora import lora_merged
from grpo.rollout import ENGINES, HFEngine, SamplingSettings, StaticEngine
from grpo.rollout.decoder import unsupported


def seeds(n: int = 3, base: int = 10) -> list[int]:
    return [base + i for i in range(n)]


def settings(**kw) -> SamplingSettings:
    base = dict(max_new_tokens=20, eos_ids=(3,), pad_id=0, num_samples=4, temperature=0.9, record_entropy=True)
    return SamplingSettings(**{**base, **kw})


def assert_same(a, b, logp_tol: float = 1e-5):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.truncated, b.truncated)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=logp_tol, rtol=0)
    if a.entropy is not None:
        torch.testing.assert_close(a.entropy, b.entropy, atol=logp_tol, rtol=0)
    torch.testing.assert_close(a.prompt_ids, b.prompt_ids)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kw", [dict(greedy=True), dict(), dict(top_k=5), dict(top_p=0.8), dict(min_new_tokens=6)],
                         ids=["greedy", "sampled", "top_k", "top_p", "min_new"])
def test_static_engine_decodes_what_the_plain_loop_decodes(family, kw):
    model = build(family)
    ids, mask = prompts()
    s = settings(**kw)
    assert unsupported(model) is None
    plain = HFEngine().generate(model, ids, mask, s, seeds())
    static = StaticEngine().generate(model, ids, mask, s, seeds())
    assert_same(plain, static)
    if kw.get("min_new_tokens"):
        assert (static.lengths >= 6).all()


@pytest.mark.parametrize("window, buckets", [(None, False), (4, False), (16, True), (None, True)])
def test_rows_shed_attention_windows_and_padded_buckets_change_nothing(window, buckets):
    """Many EOS tokens: rows finish early, and the running ones move into smaller buckets; with
    `buckets` the 24 rows start in a bucket of 32, the 8 padding rows finished from the start."""
    model = build("qwen2")
    ids, mask = prompts()
    s = settings(max_new_tokens=40, eos_ids=tuple(range(3, 12)), num_samples=8, pad_id=5)   # padding != 0
    plain = HFEngine().generate(model, ids, mask, s, seeds())
    engine = StaticEngine(check_every=2, window=window, buckets=buckets)
    engine.generate(model, ids, mask, settings(pad_id=7), seeds(base=50))      # what a former call left behind
    sheds = []
    shed = engine._shed
    engine._shed = lambda rows, finished: sheds.append(shed(rows, finished)) or sheds[-1]
    static = engine.generate(model, ids, mask, s, seeds())
    assert_same(plain, static)
    assert min(sheds) < 24 and len(set(plain.lengths.tolist())) > 3      # rows were shed along the way


def lora_model(seed: int = 0):
    model = peft.get_peft_model(build("llama", seed), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)                  # an adapter that changes the samples
    return model.eval()


def test_lora_is_merged_by_the_engine_and_refreshed_when_the_adapter_changes():
    peft_model = lora_model()
    net = peft_model.base_model.model
    base = {n: p.detach().clone() for n, p in net.named_parameters() if "lora_" not in n}
    ids, mask = prompts()
    s = settings(eos_ids=(3, 4))
    engine = StaticEngine()
    for round_ in range(2):
        with lora_merged(peft_model):
            plain = HFEngine().generate(net, ids, mask, s, seeds())
        static = engine.generate(net, ids, mask, s, seeds())
        assert_same(plain, static)
        with torch.no_grad():                       # an optimizer step: the adapter changes in place
            for name, p in net.named_parameters():
                if "lora_A" in name:
                    p.mul_(1.5)
    for n, p in net.named_parameters():            # the base weights are read, never written
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    with peft_model.disable_adapter():             # and the adapter matters to the samples
        without = HFEngine().generate(net, ids, mask, s, seeds())
    assert not torch.equal(engine.generate(net, ids, mask, s, seeds()).completion_ids, without.completion_ids)


def test_bf16_decoding_stays_within_bf16_of_the_plain_loop_under_autocast():
    model = build("llama")
    ids, mask = prompts()
    s = settings(greedy=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = HFEngine().generate(model, ids, mask, s)
        engine = StaticEngine()
        static = engine.generate(model, ids, mask, s)
    assert engine.weights.dtype == torch.bfloat16
    assert (plain.completion_ids == static.completion_ids).float().mean() > 0.9
    same = plain.completion_mask & static.completion_mask & (plain.completion_ids == static.completion_ids).cumprod(1).bool()
    assert (plain.logprobs - static.logprobs)[same].abs().max() < 0.05


def test_weights_of_the_decoding_dtype_are_used_in_place():
    model = build("llama")
    engine = StaticEngine()
    engine.sync_weights(model)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert engine.weights.layers[0]["q_proj"][0].value.data_ptr() == q.data_ptr()
    engine = StaticEngine(dtype=torch.bfloat16)
    engine.sync_weights(model)
    copy = engine.weights.layers[0]["q_proj"][0]
    assert copy.value.dtype == torch.bfloat16 and copy.value.data_ptr() != q.data_ptr()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, fused=True)   # leaves no trace on version counters
    model(torch.ones(1, 3, dtype=torch.long)).logits.sum().backward()
    opt.step()
    ids, mask = prompts()
    engine.generate(model, ids, mask, settings(greedy=True))
    assert copy.value.data_ptr() == engine.weights.layers[0]["q_proj"][0].value.data_ptr()   # rewritten in place
    torch.testing.assert_close(copy.value.float(), q.detach(), atol=0.05, rtol=0.01)


def test_buffers_are_kept_while_the_shape_fits_and_grow_when_it_does_not():
    model = build("llama")
    engine = StaticEngine()
    ids, mask = prompts(B=3, P=6)
    engine.generate(model, ids, mask, settings(), seeds())
    first = engine.state
    small_ids, small_mask = prompts(B=2, P=4)
    out = engine.generate(model, small_ids, small_mask, settings(max_new_tokens=10), seeds(2))
    assert engine.state is first                      # the same buffers
    assert_same(HFEngine().generate(model, small_ids, small_mask, settings(max_new_tokens=10), seeds(2)), out)
    big_ids, big_mask = prompts(B=3, P=9)
    engine.generate(model, big_ids, big_mask, settings(max_new_tokens=30), seeds())
    assert engine.state is not first and engine.state.shape.length >= 39 and engine.state.shape.steps >= 30


def test_each_prompt_is_prefilled_once():
    model = build("llama")
    ids, mask = prompts()
    widths = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)),
                                                 with_kwargs=True)
    try:
        StaticEngine().generate(model, ids, mask, settings(num_samples=8))
    finally:
        hook.remove()
    assert widths == [tuple(ids.shape)]              # one forward, one row per prompt, not per sample


def test_integer_seeds_and_generators_give_the_same_samples():
    model = build("llama")
    ids, mask = prompts()
    gens = [torch.Generator().manual_seed(s) for s in seeds()]
    assert_same(StaticEngine().generate(model, ids, mask, settings(), seeds()),
                StaticEngine().generate(model, ids, mask, settings(), gens))


def test_a_model_it_does_not_take_decodes_through_the_plain_loop_said_once():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4,
                                                                 n_positions=64)).eval()
    ids, mask = prompts()
    lines = []
    engine = StaticEngine(log=lines.append)
    for _ in range(2):
        out = engine.generate(model, ids, mask, settings(), seeds())
    assert_same(HFEngine().generate(model, ids, mask, settings(), seeds()), out)
    assert len(lines) == 1 and "not a decoder with layers" in lines[0]


def test_the_engine_setting_names_registered_engines():
    import typing
    from grpo.config import TrainConfig
    names = set(typing.get_args(typing.get_type_hints(TrainConfig)["engine"]))
    assert names == {"auto", *ENGINES.names()}
    assert ENGINES["static"]().capabilities.exact_logprobs and ENGINES["hf"]().owns_weights is False
