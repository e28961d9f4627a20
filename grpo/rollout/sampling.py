"""Drawing the next token: the sampler every engine shares.

Each sampled token's log-prob under the sampling policy (softmax of logits / temperature, before
top-k/top-p truncation and before the min_new_tokens EOS ban, i.e. the same distribution the
trainer's log-probs use) is recorded beside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Generators, SamplingSettings


def uniforms(n: int, generator, device, rows: Tensor | None = None) -> Tensor:
    """(n, 1) float64 uniforms. With a list of k generators, rows are split into k equal blocks and
    block i draws from generator i (one generator per prompt: its samples then do not depend on
    which other prompts share the batch). `rows`: the draws of those rows only, of the n drawn
    (a decode batch that dropped its finished rows draws as the whole batch would)."""
    u = uniform_steps(n, 1, generator, device).view(n, 1)
    return u if rows is None else u[rows]


def uniform_steps(n: int, steps: int, generator, device) -> Tensor:
    """(steps, n) float64: the draws of `steps` successive calls of `uniforms` for n rows, taken
    at once (each generator's numbers in the same order; on a CPU the same values)."""
    if isinstance(generator, (list, tuple)):
        per = n // len(generator)
        return torch.cat([torch.rand(steps, per, generator=g, dtype=torch.float64, device=device)
                          for g in generator], 1)
    return torch.rand(steps, n, generator=generator, dtype=torch.float64, device=device)


def sample(weights: Tensor, generator: Generators = None, block: int = 512, rows: Tensor | None = None,
           total: int | None = None) -> Tensor:
    """One index per row, drawn with probability proportional to `weights` (N, V) >= 0, by
    inverting the row's cumulative sum at one uniform draw (`uniforms`; `rows` and `total`: these
    are those rows of a batch of `total`, whose draws they take). Zero-weight entries are never
    drawn. See `invert`."""
    N = weights.shape[0]
    return invert(weights, uniforms(N if rows is None else total, generator, weights.device, rows), block)


def invert(weights: Tensor, u: Tensor, block: int = 512) -> Tensor:
    """The index of each row of `weights` (N, V) >= 0 where its cumulative sum passes u (N, 1) in
    [0, 1) times the row's total. Fixed shapes and no host synchronisation (a captured decoding
    step runs it too).

    In two levels, so the cumulative sum never runs over the whole vocabulary: blocks of `block`
    entries are summed (float64), the draw picks a block on the cumulative block sums, then an
    entry on that block's own cumulative sum. Far cheaper than torch.multinomial over a large
    vocabulary, which draws V exponentials per row."""
    N, V = weights.shape
    pad = (-V) % block
    w = torch.nn.functional.pad(weights, (0, pad)) if pad else weights
    w = w.view(N, -1, block)                                                  # (N, nb, block)
    cdf = w.sum(-1, dtype=torch.float64).cumsum(-1)                           # (N, nb)
    target = u * cdf[:, -1:]                                                  # (N, 1) in [0, total)
    b = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)   # a block with mass
    rest = target - torch.where(b > 0, cdf.gather(1, (b - 1).clamp(min=0)), 0.0)  # mass left inside it
    inner = w[torch.arange(N, device=w.device), b.squeeze(1)]                 # (N, block)
    j = torch.searchsorted(inner.cumsum(-1, dtype=torch.float64), rest, right=True)
    # rounding may put `rest` at or past the block's own total: take its last positive entry
    last = block - 1 - (inner > 0).flip(-1).to(torch.uint8).argmax(-1, keepdim=True)
    # weights holding NaN have no entry with mass: a valid index still (its log-prob is NaN, which
    # the step then reports), never one past the vocabulary
    return (b * block + torch.minimum(j, last)).squeeze(-1).clamp_(max=V - 1)


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


def next_token(logits: Tensor, t: int, sampling: SamplingSettings, eos: Tensor, generator,
               rows: Tensor | None = None, total: int | None = None) -> tuple[Tensor, Tensor]:
    """The token drawn at step `t` for each row of `logits` (N, V) and its log-prob under
    softmax(logits / temperature): (N,), (N,). `rows`, `total`: the logits are those rows of a
    batch of `total` (the draws are the whole batch's, see `uniforms`)."""
    u = None
    if not sampling.greedy:
        u = uniforms(logits.shape[0] if rows is None else total, generator, logits.device, rows)
    return draw(logits, u, sampling, eos, ban_eos=t < sampling.min_new_tokens)


def draw(logits: Tensor, u: Tensor | None, sampling: SamplingSettings, eos: Tensor,
         ban_eos: bool | Tensor = False) -> tuple[Tensor, Tensor]:
    """The token each row of `logits` (N, V) takes at the uniform draw `u` (N, 1) (greedy: the
    argmax, no draw), and its log-prob under softmax(logits / temperature): (N,), (N,).
    `ban_eos`: EOS may not be drawn (min_new_tokens); a 0-dim bool tensor keeps the step free of
    host synchronisation, for a captured decoding step."""
    T = sampling.temperature
    scaled = logits.float().contiguous() if T == 1.0 else logits.float() / T    # (N, V)
    top = scaled.amax(-1, keepdim=True)
    weights = (scaled - top).exp_()                                 # unnormalised probabilities
    log_z = top + weights.sum(-1, keepdim=True).log()                # log of the softmax normaliser
    if isinstance(ban_eos, Tensor):
        banned = scaled.index_fill(-1, eos, float("-inf"))
        sample_from = torch.where(ban_eos, banned, scaled)
        if not (sampling.greedy or sampling.top_k or sampling.top_p < 1.0):
            weights = weights.index_copy(-1, eos, weights.index_select(-1, eos).masked_fill(ban_eos, 0.0))
    else:
        sample_from = scaled.index_fill(-1, eos, float("-inf")) if ban_eos else scaled
        if ban_eos and not (sampling.greedy or sampling.top_k or sampling.top_p < 1.0):
            weights = weights.index_fill(-1, eos, 0.0)
    if sampling.greedy:
        tok = sample_from.argmax(-1)
    elif sampling.top_k or sampling.top_p < 1.0:
        tok = invert(torch.softmax(filter_logits(sample_from, sampling.top_k, sampling.top_p), dim=-1), u)
    else:
        tok = invert(weights, u)
    logp = (scaled.gather(-1, tok[:, None]) - log_z).squeeze(-1)    # log softmax at the sampled token
    return tok, logp
