"""The lean decoding step (grpo/lean_decode.py) against the model's own forward.

Tiny random models of each supported family, with grouped-query attention (fewer key/value heads
than query heads), Qwen2's projection biases and Qwen3's per-head query/key norms; prompts of
different lengths (left padding) and several samples per prompt.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from grpo.compat import FixedLinear, class_name, linear_weights
from grpo.data.prompts import positions
from grpo.fast import lean_decode
from grpo.fast.few_rows import FewRows
from grpo.rollout import HFEngine, generate

SIZES = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=0, bos_token_id=0)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES)),
    "llama-tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES, tie_word_embeddings=True)),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**SIZES, sliding_window=None)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SIZES)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**SIZES, head_dim=16)),
}


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    with torch.no_grad():                      # random biases and norm weights, so they matter
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def prompts(B: int = 3, P: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (B, P), generator=g)
    mask = torch.ones(B, P, dtype=torch.long)
    for b in range(B):
        mask[b, :b * 2] = 0                    # row b has 2b padding positions on the left
        ids[b, :b * 2] = 0
    return ids, mask


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lean_step_logits_equal_the_models_forward(family):
    model = build(family)
    assert lean_decode.unsupported(model) is None
    ids, mask = prompts()
    samples, steps = 2, 5
    g = torch.Generator().manual_seed(2)
    new = torch.randint(1, 40, (ids.shape[0] * samples, steps), generator=g)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
        lean = lean_decode.LeanDecoder(model, out.cache, mask, samples, steps)
        full_ids = torch.cat([ids.repeat_interleave(samples, 0), new], 1)
        full_mask = torch.cat([mask.repeat_interleave(samples, 0), torch.ones_like(new)], 1)
        expected = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask)).logits
        first = positions(mask).repeat_interleave(samples, 0)[:, -1] + 1
        P = ids.shape[1]
        for t in range(steps):
            got = lean.step(new[:, t], first + t)
            want = expected[:, P + t]
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="no room"):
            lean.step(new[:, 0], first + steps)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_lean_step_with_few_row_matmuls_equals_the_models_forward(family):
    """Inside `decoding_linears` (as LeanEngine runs it) the projections are few-row matmuls."""
    model = build(family)
    ids, mask = prompts()
    new = torch.randint(1, 40, (ids.shape[0], 1), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids=torch.cat([ids, new], 1), attention_mask=torch.cat([mask, torch.ones_like(new)], 1),
                         position_ids=positions(torch.cat([mask, torch.ones_like(new)], 1))).logits[:, -1]
        products = FewRows()
        with products.decoding_linears(model):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
            got = lean_decode.LeanDecoder(model, out.cache, mask, 1, 1, products).step(new[:, 0],
                                                                                     positions(mask)[:, -1] + 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(temperature=0.7), dict(top_k=5, top_p=0.9)])
def test_generate_takes_the_lean_step_and_matches_the_plain_path(monkeypatch, kw):
    model = build("llama")
    ids, mask = prompts()
    calls = []
    step = lean_decode.LeanDecoder.step
    monkeypatch.setattr(lean_decode.LeanDecoder, "step", lambda self, *a: calls.append(1) or step(self, *a))

    def run(engine):
        gen = [torch.Generator().manual_seed(i) for i in range(ids.shape[0])]
        return generate(model, ids, mask, max_new_tokens=6, eos_ids=[0], pad_id=0, num_samples=3, generator=gen,
                        min_new_tokens=2, engine=engine, **kw)

    lean = run(lean_decode.LeanEngine())
    assert len(calls) == lean.completion_ids.shape[1] - 1 > 0            # every token after the first
    plain = run(HFEngine(scope=FewRows().decoding_linears))
    assert len(calls) == lean.completion_ids.shape[1] - 1                 # the plain path did not call it
    assert torch.equal(lean.completion_ids, plain.completion_ids)
    assert torch.equal(lean.completion_mask, plain.completion_mask)
    torch.testing.assert_close(lean.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)


def test_unsupported_models_and_settings_say_why():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2))
    assert "decoder" in lean_decode.unsupported(gpt2)
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(**SIZES, sliding_window=8))
    assert "sliding" in lean_decode.unsupported(mistral)
    llama = build("llama")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in lean_decode.unsupported(llama)
    llama.config.attention_dropout = 0.1
    for layer in llama.model.layers:
        layer.self_attn.attention_dropout = 0.1
    assert lean_decode.unsupported(llama.eval()) is None                   # dropout is off outside training
    assert "dropout" in lean_decode.unsupported(llama.train())


def test_a_wrapper_subclass_from_torch_distributed_is_seen_through():
    base = transformers.models.llama.modeling_llama.LlamaDecoderLayer
    wrapped = type("FSDPLlamaDecoderLayer", (base,), {"__module__": "torch.distributed.fsdp._fully_shard"})
    user = type("MyLayer", (base,), {"__module__": "mycode"})
    assert class_name(wrapped.__new__(wrapped)) == "LlamaDecoderLayer"
    assert class_name(user.__new__(user)) == "MyLayer"               # a user's own subclass is not assumed


def test_projections_are_read_as_weights_where_their_forward_is_a_plain_linear_map():
    plain = torch.nn.Linear(4, 3)
    w, b = linear_weights(plain)
    assert w is plain.weight and b is plain.bias
    merged_w = torch.randn(3, 4)
    merged = torch.nn.Linear(4, 3, bias=False)
    merged.forward = FixedLinear(merged_w, None)                     # LoRA's merged weight (models.lora.lora_merged)
    assert linear_weights(merged)[0] is merged_w
    holder = torch.nn.Sequential(torch.nn.Linear(4, 3))
    products = FewRows()
    with products.decoding_linears(holder):                          # few-row matmuls bound to the weights
        assert linear_weights(holder[0])[0] is holder[0].weight
    other = torch.nn.Linear(4, 3)
    other.forward = lambda x: x[..., :3] * 2                         # anything else: the module is called
    assert linear_weights(other) is None
    assert lean_decode._projection(other, True, torch.float32, products) is other
    x = torch.randn(5, 4)
    for left in (True, False):
        torch.testing.assert_close(lean_decode._projection(plain, left, torch.float32, products)(x), plain(x))
