"""The plain decoding loop over a Hugging Face causal LM, with its KV cache.

B prompts x G completions are decoded together, one token per forward. Each prompt is prefilled
once and its keys/values copied to its G samples. After a sequence's EOS it receives padding
that is masked out. What runs each decoding step after the prefill is a *stepper*: by default the
model's own forward over the cache (`ForwardStepper`); an engine may bring a faster one
(grpo/fast's lean step) through `generate_with`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import compat
from ..data.prompts import positions
from .base import Capabilities, Generators, Rollout, SamplingSettings, Seeds, generators_of
from ..algo.losses import entropy_from_logits
from .sampling import next_token


class ForwardStepper:
    """Each decoding step through the model's forward, over its cache repeated to every sample
    and given room for the whole completion (compat.reserve)."""

    def __init__(self, model, cache, prompt_mask: Tensor, sampling: SamplingSettings):
        if sampling.num_samples > 1:
            cache.batch_repeat_interleave(sampling.num_samples)
        compat.reserve(cache, sampling.max_new_tokens)
        self.model, self.cache = model, cache
        self.mask = prompt_mask.repeat_interleave(sampling.num_samples, 0)

    def keep(self, rows: Tensor) -> None:
        """Hold only `rows` (indices into the rows held now) from here on."""
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def step(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Logits (rows, vocab) after feeding `tokens` (rows,) at `positions` (rows,)."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions[:, None],
                         cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1]


def _prefill(model, prompt_ids: Tensor, prompt_mask: Tensor):
    """(the last position's logits (B, V), the prompts' cache)."""
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.cache


@torch.no_grad()
def generate_with(model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
                  generator: Seeds | Generators = None, fast_stepper=None) -> Rollout:
    """The loop. `generator`: integer seeds or generators, one for all rows or one per prompt.
    `fast_stepper(model, cache, prompt_mask, sampling)` may return a stepper to use instead of
    `ForwardStepper` (None: it does not apply to this model)."""
    generator = generators_of(generator, prompt_ids.device)
    if isinstance(generator, (list, tuple)) and len(generator) != prompt_ids.shape[0]:
        raise ValueError(f"{len(generator)} generators for {prompt_ids.shape[0]} prompts")
    logits, cache = _prefill(model, prompt_ids, prompt_mask)
    stepper = fast_stepper(model, cache, prompt_mask, sampling) if fast_stepper is not None else None
    if stepper is None:
        stepper = ForwardStepper(model, cache, prompt_mask, sampling)
    del cache
    k = sampling.num_samples
    if k > 1:
        logits = logits.repeat_interleave(k, 0)
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
    return _decode(stepper, logits, prompt_ids, prompt_mask, sampling, generator)


# The decode batch sheds its finished rows once at most this share of the rows it holds is still
# running. Each shed copies the survivors' keys and values; since the rows held then shrink by a
# constant factor, the copies over a whole completion add up to a few copies of the batch's cache.
COMPACT_AT = 0.75
# ... and not before this many tokens: a batch of short completions is done before a copy pays.
SHED_AFTER = 16


def _decode(stepper, logits: Tensor, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
            generator) -> Rollout:
    """The token loop. A stepper with `keep(rows)` sheds the rows that have finished (EOS) when
    few enough are left running (COMPACT_AT, from SHED_AFTER tokens on): a step then costs what the
    running rows cost, not the whole batch. Every row draws its random numbers as in the whole batch (sampling.uniforms), so
    the samples are the same whether rows are shed or not, up to the float rounding of products
    over fewer rows (a draw that lands on a boundary may then go the other way)."""
    device = prompt_ids.device
    N = prompt_ids.shape[0]
    eos = torch.tensor(list(sampling.eos_ids), device=device)
    next_pos = positions(prompt_mask)[:, -1] + 1                             # (N,)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    held = None                      # the rows the stepper holds (None: all N, in order)
    can_shed = callable(getattr(stepper, "keep", None))
    tokens, logps, valid, entropies = [], [], [], []
    for t in range(sampling.max_new_tokens):
        tok, logp = next_token(logits, t, sampling, eos, generator, rows=held, total=N)
        if held is not None:                                                   # back to the whole batch's rows
            tok = torch.full((N,), sampling.pad_id, dtype=tok.dtype, device=device).index_copy_(0, held, tok)
            logp = torch.zeros(N, dtype=logp.dtype, device=device).index_copy_(0, held, logp)
        tokens.append(torch.where(finished, torch.full_like(tok, sampling.pad_id), tok))
        logps.append(torch.where(finished, 0.0, logp))
        if sampling.record_entropy:
            ent = entropy_from_logits(logits.float() / sampling.temperature)
            if held is not None:
                ent = torch.zeros(N, dtype=ent.dtype, device=device).index_copy_(0, held, ent)
            entropies.append(torch.where(finished, 0.0, ent))
        valid.append(~finished)
        finished = finished | torch.isin(tokens[-1], eos)
        if bool(finished.all()) or t == sampling.max_new_tokens - 1:
            break
        if can_shed and t + 1 >= SHED_AFTER:
            rows = torch.arange(N, device=device) if held is None else held
            running = ~finished[rows]
            if int(running.sum()) <= COMPACT_AT * rows.numel():
                stepper.keep(running.nonzero().squeeze(1))
                held = rows[running]
        if held is None:
            logits = stepper.step(tokens[-1], next_pos)
        else:
            logits = stepper.step(tokens[-1][held], next_pos[held])
        next_pos = next_pos + 1
    del stepper
    completion_mask = torch.stack(valid, 1)
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=torch.stack(tokens, 1),
                   completion_mask=completion_mask, logprobs=torch.stack(logps, 1),
                   lengths=completion_mask.sum(1), truncated=~finished,
                   entropy=torch.stack(entropies, 1) if sampling.record_entropy else None)


class HFEngine:
    """The plain engine: the loop above with the model's forward at every step. `scope(model)`,
    when given, is a context the whole generation runs in (grpo/fast's few-row products)."""
    capabilities = Capabilities(exact_logprobs=True, entropies=True)
    owns_weights = False          # the trainer hands it the model to sample with (LoRA merged)

    def __init__(self, scope=None):
        self.scope = scope

    def sync_weights(self, model, version=None) -> None:
        """Nothing to do: every call reads the model's weights."""

    def generate(self, model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
                 generator: Generators = None) -> Rollout:
        with self.scope(model) if self.scope is not None else contextlib.nullcontext():
            return generate_with(model, prompt_ids, prompt_mask, sampling, generator)
