"""A decoding step for Llama-family decoders as a short run of plain tensor ops.

Sampling runs one forward per new token. Through transformers' model classes that forward is
a few hundred module calls, mask and cache objects rebuilt every token, and attention through a
general kernel that expands the grouped keys/values; on a small model most of a token's time is
spent outside the matrix products (docs/performance.md). `LeanDecoder` runs the same function
over the same weights: the projections as plain matmuls with their weights (read through
`compat.linear_weights`, which sees the few-row and LoRA-merged forwards; any other projection
module is called as it is), fused RMS norms, the rotary embedding applied to queries
and keys together, and grouped-query attention as two batched products over a key/value buffer
sized for the whole completion. Supported: the decoder-layer classes of `rollout.decoder.LAYERS`
(Llama, Mistral without a sliding window, Qwen2, Qwen3) on a CPU, outside autocast; anything else
decodes through the model's forward. Tested equal to the model's forward (logits, every step) in
tests/test_lean_decode.py. `LeanEngine` is the rollout engine that decodes with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import compat
from ..rollout import decoder
from ..rollout.base import Capabilities, Generators, Rollout, SamplingSettings, Seeds
from ..rollout.hf_loop import generate_with
from .few_rows import FewRows


def unsupported(model) -> str | None:
    """Why `model` (a transformers causal LM) cannot take the lean step, or None if it can: the
    conditions on the architecture of rollout.decoder.unsupported, on a CPU, outside autocast."""
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        return "not on a CPU"
    if p is not None and torch.is_autocast_enabled(p.device.type):
        return "autocast is on"
    return decoder.unsupported(model)


def _projection(linear, left: bool, dtype, products: FewRows):
    """A function of x computing `linear`(x): straight from its weights where compat.linear_weights
    finds them (as W x^T with `left`, else x W^T), the module's own call otherwise."""
    wb = compat.linear_weights(linear)
    if wb is None or wb[0].dtype != dtype:
        return linear
    weight, bias = wb
    if left:
        def project(x):
            out = products.left_product(weight, x)
            return out if bias is None else out + bias
    else:
        def project(x):
            return torch.nn.functional.linear(x, weight, bias)
    return project


def _rms(x: Tensor, norm) -> Tensor:
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


class LeanDecoder:
    """Decodes one token per row, rows = B prompts x `samples` each, from the prompts' KV cache.

    `cache` is the transformers cache of a forward over the B prompts (one row per prompt);
    `prompt_mask` (B, P) their padding. Keys/values of the prompt are copied once into buffers
    with room for `max_new_tokens` more positions per row."""

    def __init__(self, model, cache, prompt_mask: Tensor, samples: int, max_new_tokens: int,
                 products: FewRows | None = None):
        self.model, self.dec = model, model.model
        cfg = model.config
        a0 = self.dec.layers[0].self_attn
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = a0.head_dim
        self.scaling = a0.scaling
        B, P = prompt_mask.shape
        self.rows, self.length = B * samples, P
        self.keys, self.values = [], []
        for i in range(len(self.dec.layers)):
            k, v = cache.layers[i].keys, cache.layers[i].values            # (B, kv_heads, P, head_dim)
            kb = k.new_empty(B, samples, self.kv_heads, P + max_new_tokens, self.head_dim)
            vb = torch.empty_like(kb)
            kb[:, :, :, :P] = k[:, None]
            vb[:, :, :, :P] = v[:, None]
            self.keys.append(kb.view(self.rows, self.kv_heads, -1, self.head_dim))
            self.values.append(vb.view(self.rows, self.kv_heads, -1, self.head_dim))
        products = products or FewRows(max_rows=0)
        left = products.applies(self.rows)                        # weight-on-the-left matmuls (few_rows.py)
        dtype = self.dec.embed_tokens.weight.dtype
        self.proj = [[_projection(m, left, dtype, products) for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)] for layer in self.dec.layers]
        self.head = _projection(model.lm_head, left, dtype, products)
        # additive mask over the buffer: -inf at the prompts' padding, 0 elsewhere
        self.mask = torch.zeros(self.rows, 1, 1, P + max_new_tokens, dtype=self.keys[0].dtype,
                                device=prompt_mask.device)
        self.mask[..., :P].masked_fill_(~prompt_mask.bool().repeat_interleave(samples, 0)[:, None, None], float("-inf"))

    def keep(self, rows: Tensor) -> None:
        """Hold only `rows` (indices into the rows held now) from here on: their keys and values
        (the positions written so far) and mask move into buffers of that many rows."""
        n = self.length
        for i in range(len(self.keys)):
            for bufs in (self.keys, self.values):
                old = bufs[i]
                new = old.new_empty(rows.numel(), *old.shape[1:])
                new[:, :, :n] = old[rows, :, :n]
                bufs[i] = new
        self.mask = self.mask[rows]
        self.rows = rows.numel()

    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Logits (rows, vocab) after feeding `tokens` (rows,) at `positions` (rows,)."""
        N, H, Hk, D = self.rows, self.heads, self.kv_heads, self.head_dim
        n = self.length
        if n >= self.keys[0].shape[2]:
            raise RuntimeError("LeanDecoder: no room left in the key/value buffer")
        x = self.dec.embed_tokens(tokens)                                      # (N, hidden)
        cos, sin = self.dec.rotary_emb(x, positions[:, None])                   # (N, 1, D)
        half = D // 2
        cos = cos.view(N, 1, 2, half)
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1).view(N, 1, 2, half)   # rotate_half's signs
        mask = self.mask[..., :n + 1]
        for i, layer in enumerate(self.dec.layers):
            attn = layer.self_attn
            q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj = self.proj[i]
            h = _rms(x, layer.input_layernorm)
            q = q_proj(h).view(N, H, D)
            k = k_proj(h).view(N, Hk, D)
            if hasattr(attn, "q_norm"):
                q, k = _rms(q, attn.q_norm), _rms(k, attn.k_norm)
            qk = torch.cat([q, k], 1).view(N, H + Hk, 2, half)
            qk = (qk * cos + qk.flip(-2) * sin).view(N, H + Hk, D)               # rotary on queries and keys
            self.keys[i][:, :, n] = qk[:, H:]
            self.values[i][:, :, n] = v_proj(h).view(N, Hk, D)
            q = qk[:, :H].reshape(N, Hk, H // Hk, D)                             # query heads grouped by kv head
            scores = torch.matmul(q, self.keys[i][:, :, :n + 1].transpose(-1, -2))   # (N, Hk, group, n+1)
            scores.mul_(self.scaling).add_(mask)
            o = torch.matmul(torch.softmax(scores, -1), self.values[i][:, :, :n + 1])   # (N, Hk, group, D)
            x = x + o_proj(o.reshape(N, H * D))
            h = _rms(x, layer.post_attention_layernorm)
            x = x + down_proj(layer.mlp.act_fn(gate_proj(h)) * up_proj(h))
        self.length = n + 1
        return self.head(_rms(x, self.dec.norm))


class LeanEngine:
    """The CPU rollout engine: the plain decoding loop (rollout.hf_loop) inside the few-row
    products, with `LeanDecoder` as its step wherever `unsupported` finds nothing against it."""

    capabilities = Capabilities(exact_logprobs=True, entropies=True)
    owns_weights = False

    def __init__(self, products: FewRows | None = None):
        self.products = products or FewRows()

    def sync_weights(self, model, version=None) -> None:
        """Nothing to do: every call reads the model's weights."""

    def _stepper(self, model, cache, prompt_mask: Tensor, sampling: SamplingSettings):
        if unsupported(model) is not None:
            return None
        return LeanDecoder(model, cache, prompt_mask, sampling.num_samples, sampling.max_new_tokens, self.products)

    def generate(self, model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
                 generator: Seeds | Generators = None) -> Rollout:
        if prompt_ids.device.type != "cpu":                # a CPU engine: elsewhere, the plain loop as it is
            return generate_with(model, prompt_ids, prompt_mask, sampling, generator)
        with self.products.decoding_linears(model):
            return generate_with(model, prompt_ids, prompt_mask, sampling, generator, fast_stepper=self._stepper)
