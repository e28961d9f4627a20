"""Batched sampling with the model's KV cache.

B prompts x G completions are decoded together, one token per forward. Each sampled token's
log-prob under the sampling policy (softmax of logits / temperature, before top-k/top-p
truncation and before the min_new_tokens EOS ban, i.e. the same distribution the trainer's
log-probs use) is recorded. After a sequence's EOS, it receives padding that is masked out.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from . import lean_decode, native


@dataclass
class Rollout:
    prompt_ids: Tensor        # (N, P) left-padded
    prompt_mask: Tensor       # (N, P)
    completion_ids: Tensor    # (N, L) right-padded
    completion_mask: Tensor   # (N, L) bool: sampled tokens up to and including EOS
    logprobs: Tensor          # (N, L) sampling policy's log-probs, 0 where masked
    lengths: Tensor           # (N,) valid completion tokens (EOS included)
    truncated: Tensor         # (N,) bool: no EOS within max_new_tokens

    def select(self, idx: Tensor) -> "Rollout":
        return Rollout(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def encode_prompts(tokenizer, prompts: list[str], device, add_special_tokens: bool = False) -> tuple[Tensor, Tensor]:
    """Left-padded ids and mask, so every prompt ends at the same column.  Text rendered by a
    chat template already holds its special tokens; raw text may want the tokenizer's (BOS)."""
    enc = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
    return ids, mask


def positions(mask: Tensor) -> Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def reserve(cache, extra: int) -> None:
    """Give every plain dynamic layer of `cache` room for `extra` more positions, so each decoded
    token is written into place instead of re-concatenating the whole cache (O(L^2) copying over
    a completion). Other layer kinds (sliding window, ...) are left as they are."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            layer.__class__ = ReservedLayer
            layer.reserve(extra)


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into buffers with spare capacity."""

    def reserve(self, extra: int) -> None:
        n = self.keys.shape[-2]
        self._kbuf = self.keys.new_empty(*self.keys.shape[:-2], n + extra, self.keys.shape[-1])
        self._vbuf = self.values.new_empty(*self.values.shape[:-2], n + extra, self.values.shape[-1])
        self._kbuf[..., :n, :] = self.keys
        self._vbuf[..., :n, :] = self.values
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]

    def update(self, key_states, value_states, *args, **kwargs):
        n, q = self.keys.shape[-2], key_states.shape[-2]
        if n + q > self._kbuf.shape[-2]:                           # out of room: grow as DynamicLayer does
            self.__class__ = DynamicLayer
            return DynamicLayer.update(self, key_states, value_states)
        self._kbuf[..., n:n + q, :] = key_states
        self._vbuf[..., n:n + q, :] = value_states
        self.keys, self.values = self._kbuf[..., :n + q, :], self._vbuf[..., :n + q, :]
        return self.keys, self.values


FEW_ROWS = 128


def few_rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x W^T + b, computed as (W x^T)^T when x has at most FEW_ROWS rows on a CPU.

    Decoding multiplies a handful of rows (one token per sequence) by every weight matrix, so it
    streams the weights from memory once per token. MKL does that far better with the weight as
    the left operand: on the 2-core development machine, SmolLM2-135M's 210 layer matmuls at 16
    rows took 73-76 ms per token this way against 90-127 ms as x W^T, its LM head 24-25 against
    39-57 ms (two runs of bench/decode_matmul.py). From `native.MIN_ROWS` to `native.MAX_ROWS`
    rows the compiled kernel of `native` does it faster still (16 rows: 34 + 7.5 against 50 + 17
    ms). The same products up to rounding; the result is a transposed view, which the following
    ops accept."""
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if rows == 0 or rows > FEW_ROWS or x.device.type != "cpu" or x.dtype != weight.dtype:
        return torch.nn.functional.linear(x, weight, bias)
    out = left_product(weight, x.reshape(rows, x.shape[-1]))                     # (rows, out)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def left_product(weight: Tensor, x: Tensor) -> Tensor:
    """x W^T for a 2-D x on a CPU, as a transposed view of W x^T: the compiled few-row kernel
    where it applies (`native.left_product`), else MKL's product with the weight on the left."""
    out = native.left_product(weight, x)
    return out if out is not None else torch.mm(weight, x.t()).t()


@contextlib.contextmanager
def decoding_linears(model):
    """Inside: every plain nn.Linear of `model` (and any layer already given a fixed-weight forward)
    runs through `few_rows_linear`. For sampling only (no gradients are taken inside)."""
    patched = []
    for m in model.modules():
        if type(m) is torch.nn.Linear and "forward" not in vars(m):
            m.forward = functools.partial(few_rows_linear, weight=m.weight, bias=m.bias)
            patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward


Generators = torch.Generator | list[torch.Generator] | None     # one, or one per prompt


def uniforms(n: int, generator, device) -> Tensor:
    """(n, 1) float64 uniforms. With a list of k generators, rows are split into k equal blocks and
    block i draws from generator i (one generator per prompt: its samples then do not depend on
    which other prompts share the batch)."""
    if isinstance(generator, (list, tuple)):
        per = n // len(generator)
        return torch.cat([torch.rand(per, 1, generator=g, dtype=torch.float64, device=device) for g in generator])
    return torch.rand(n, 1, generator=generator, dtype=torch.float64, device=device)


def sample(weights: Tensor, generator: Generators = None, block: int = 512) -> Tensor:
    """One index per row, drawn with probability proportional to `weights` (N, V) >= 0, by
    inverting the row's cumulative sum at one uniform draw. Zero-weight entries are never drawn.

    In two levels, so the cumulative sum never runs over the whole vocabulary: blocks of `block`
    entries are summed (float64), the draw picks a block on the cumulative block sums, then an
    entry on that block's own cumulative sum. Far cheaper than torch.multinomial over a large
    vocabulary, which draws V exponentials per row."""
    N, V = weights.shape
    pad = (-V) % block
    w = torch.nn.functional.pad(weights, (0, pad)) if pad else weights
    w = w.view(N, -1, block)                                                  # (N, nb, block)
    cdf = w.sum(-1, dtype=torch.float64).cumsum(-1)                           # (N, nb)
    target = uniforms(N, generator, weights.device) * cdf[:, -1:]             # (N, 1) in [0, total)
    b = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)   # a block with mass
    rest = target - torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), 0.0)  # mass left inside it
    inner = w[torch.arange(N, device=w.device), b.squeeze(1)]                 # (N, block)
    j = torch.searchsorted(inner.cumsum(-1, dtype=torch.float64), rest, right=True)
    # rounding may put `rest` at or past the block's own total: take its last positive entry
    last = block - 1 - (inner > 0).flip(-1).to(torch.uint8).argmax(-1, keepdim=True)
    return (b * block + torch.minimum(j, last)).squeeze(-1)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k / nucleus to -inf.  (N, V) -> (N, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int, eos_ids: list[int],
             pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_new_tokens: int = 0, greedy: bool = False, generator: Generators = None,
             num_samples: int = 1) -> Rollout:
    """Sample `num_samples` completions for each row of `prompt_ids`; completion i*num_samples + g
    belongs to prompt i. Each prompt is prefilled once and its KV cache copied to its samples.
    `generator` may be one generator per row of `prompt_ids` (see `uniforms`)."""
    if isinstance(generator, (list, tuple)) and len(generator) != prompt_ids.shape[0]:
        raise ValueError(f"{len(generator)} generators for {prompt_ids.shape[0]} prompts")
    with decoding_linears(model):
        return _generate(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                         temperature=temperature, top_k=top_k, top_p=top_p, min_new_tokens=min_new_tokens,
                         greedy=greedy, generator=generator, num_samples=num_samples)


def _generate(model, prompt_ids, prompt_mask, *, max_new_tokens, eos_ids, pad_id, temperature, top_k, top_p,
              min_new_tokens, greedy, generator, num_samples) -> Rollout:
    device = prompt_ids.device
    eos = torch.tensor(eos_ids, device=device)
    pos = positions(prompt_mask)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)                                     # only the last position's logits
    cache, logits = out.cache, out.logits[:, -1]
    lean = None if lean_decode.unsupported(model) else lean_decode.LeanDecoder(model, cache, prompt_mask, num_samples,
                                                                               max_new_tokens)
    if lean is not None:
        out = cache = None                                              # the buffers hold the keys/values now
    elif num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
    if num_samples > 1:
        logits, pos = logits.repeat_interleave(num_samples, 0), pos.repeat_interleave(num_samples, 0)
        prompt_ids = prompt_ids.repeat_interleave(num_samples, 0)
        prompt_mask = prompt_mask.repeat_interleave(num_samples, 0)
    if lean is None:
        reserve(cache, max_new_tokens)
    N = prompt_ids.shape[0]
    mask = prompt_mask.clone()
    next_pos = pos[:, -1:] + 1
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    tokens, logps, valid = [], [], []
    for t in range(max_new_tokens):
        scaled = logits.float().contiguous() if temperature == 1.0 else logits.float() / temperature   # (N, V)
        top = scaled.amax(-1, keepdim=True)
        weights = (scaled - top).exp_()                                 # unnormalised probabilities
        log_z = top + weights.sum(-1, keepdim=True).log()                # log of the softmax normaliser
        if greedy:
            sample_from = scaled if t >= min_new_tokens else scaled.index_fill(-1, eos, float("-inf"))
            tok = sample_from.argmax(-1)
        elif top_k or top_p < 1.0:
            sample_from = scaled if t >= min_new_tokens else scaled.index_fill(-1, eos, float("-inf"))
            tok = sample(torch.softmax(filter_logits(sample_from, top_k, top_p), dim=-1), generator)
        else:
            tok = sample(weights if t >= min_new_tokens else weights.index_fill_(-1, eos, 0.0), generator)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        valid.append(~finished)
        tokens.append(tok)
        logp = (scaled.gather(-1, tok[:, None]) - log_z).squeeze(-1)    # log softmax at the sampled token
        logps.append(torch.where(finished, 0.0, logp))
        finished = finished | torch.isin(tok, eos)
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        if lean is not None:
            logits = lean.step(tok, next_pos[:, 0])
        else:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]
        next_pos = next_pos + 1
    del cache, lean
    completion_mask = torch.stack(valid, 1)
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=torch.stack(tokens, 1),
                   completion_mask=completion_mask, logprobs=torch.stack(logps, 1),
                   lengths=completion_mask.sum(1), truncated=~finished)


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts, EOS and padding removed."""
    out = []
    for ids, n in zip(rollout.completion_ids.tolist(), rollout.lengths.tolist()):
        out.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return out
