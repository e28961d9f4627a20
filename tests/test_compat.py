"""Every private or unstable library interface the package uses (grpo/compat.py), exercised on the
installed versions. A failure here names the function a new transformers / torch / peft release
broke; the callers would otherwise lose a fast path on a supported model."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
import transformers

from grpo import compat
from grpo.data.prompts import positions

SIZES = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=0, bos_token_id=0)


@pytest.fixture
def llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES)).eval()


def test_the_versions_checked_against_are_recorded():
    for name in ("torch", "transformers", "peft"):
        installed = importlib.metadata.version(name)
        assert compat.CHECKED_AGAINST[name], name
        print(f"{name}: installed {installed}, checked against {compat.CHECKED_AGAINST[name]}")


def test_after_backward_runs_once_the_backward_pass_has_finished():
    order = []
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: compat.after_backward(lambda: order.append(("after", x.grad is not None))) or g)
    y.sum().backward()
    assert order == [("after", True)]                  # ran, and after x's gradient was written


def test_recording_and_prefix_caches_give_the_models_own_forward(llama):
    assert compat.full_attention_only(llama.config)
    ids = torch.randint(1, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        whole = llama.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state
        record = compat.recording_cache()
        llama.model(input_ids=ids[:, :4], attention_mask=mask[:, :4], position_ids=positions(mask[:, :4]),
                    cache=record, use_cache=False)
        assert len(record.layers) == SIZES["num_hidden_layers"]
        assert all(layer.keys.shape == (2, 2, 4, 8) for layer in record.layers)    # (B, kv heads, P, head dim)
        prefix = compat.prefix_cache([(layer.keys, layer.values) for layer in record.layers])
        rest = llama.model(input_ids=ids[:, 4:], attention_mask=mask, position_ids=positions(mask)[:, 4:],
                           cache=prefix, use_cache=False).last_hidden_state
        again = llama.model(input_ids=ids[:, 4:], attention_mask=mask, position_ids=positions(mask)[:, 4:],
                            cache=prefix, use_cache=False).last_hidden_state
    torch.testing.assert_close(rest, whole[:, 4:], atol=1e-5, rtol=1e-5)
    assert torch.equal(rest, again)                                   # read-only: a replay sees the same prefix


def test_sliding_window_models_are_not_full_attention():
    mistral = transformers.MistralConfig(**SIZES, sliding_window=4)
    assert not compat.full_attention_only(mistral)


def test_reserved_layers_take_over_and_fall_back_when_full(llama):
    ids = torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = llama(input_ids=ids, use_cache=True).cache
        compat.reserve(cache, 1)
        assert all(type(layer) is compat.ReservedLayer for layer in cache.layers)
        for _ in range(2):                                              # the second runs past the room
            cache = llama(input_ids=ids[:, :1], cache=cache, use_cache=True).cache
    assert all(type(layer) is transformers.cache_utils.DynamicLayer for layer in cache.layers)
    assert cache.layers[0].keys.shape[-2] == 7


def test_checkpointed_layers_may_keep_a_read_only_cache(llama):
    llama.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert compat.checkpoints_layers(llama)
    assert not compat.keeps_cache_under_checkpointing(llama.model.layers)
    compat.allow_cache_under_checkpointing(llama.model.layers)
    assert compat.keeps_cache_under_checkpointing(llama.model.layers)


def test_instance_forwards_and_their_weights():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    assert compat.own_forward(lin) is None and compat.linear_weights(lin) == (lin.weight, lin.bias)
    w = torch.randn(3, 4)
    compat.set_forward(lin, compat.FixedLinear(w, None))
    torch.testing.assert_close(lin(x), x @ w.t())
    assert compat.linear_weights(lin)[0] is w
    other = lambda x: x                                               # noqa: E731 - any other forward
    compat.set_forward(lin, other)
    assert compat.linear_weights(lin) is None and compat.own_forward(lin) is other
    compat.restore_forward(lin)
    assert compat.own_forward(lin) is None
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))


def test_model_attributes(llama):
    assert compat.no_split_modules(llama) == {"LlamaDecoderLayer"}
    llama.hf_quantizer = object()
    llama.config.quantization_config = {"quant_method": "gguf"}
    compat.drop_quantizer(llama)
    assert llama.hf_quantizer is None and not hasattr(llama.config, "quantization_config")


def test_supported_models_take_the_fast_paths(llama):
    """The callers' fast paths apply to a plain Llama: nothing falls back silently."""
    from grpo.fast.lean_decode import unsupported
    from grpo.models.logprobs import can_share_prefix
    assert unsupported(llama) is None
    with torch.enable_grad():
        assert can_share_prefix(llama, llama.get_decoder())


def test_lora_parts_read_peft_layers_as_base_plus_merged_adapters():
    import peft
    model = torch.nn.Sequential(torch.nn.Linear(8, 6))
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    weight, bias, parts = compat.lora_parts(layer)
    assert weight is layer.base_layer.weight and bias is layer.base_layer.bias and len(parts) == 1
    a, b, scale = parts[0]
    torch.testing.assert_close(scale * b @ a, layer.get_delta_weight("default"))
    with model.disable_adapter():
        assert compat.lora_parts(layer)[2] == []
    assert compat.lora_parts(torch.nn.Linear(3, 3)) is None
