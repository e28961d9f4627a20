"""Per-token log-probs and entropy of completions under a model (the actor or the reference).

Log-probs are computed only at completion positions: the decoder runs over prompt+completion,
then the hidden states of valid completion tokens go through the LM head `logprob_chunk` rows at
a time. Under autograd each chunk is checkpointed, so neither the forward nor the backward ever
holds a (tokens x vocabulary) tensor for the whole batch. A faster head (grpo/fast's fused head)
may be passed in as `head`; the plain path here is its reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .. import compat
from ..algo import losses
from ..data.prompts import positions
from ..rollout.base import Rollout
from .loading import hf_model


@dataclass
class TokenStats:
    logp: Tensor              # (N, L) log pi(token), 0 where masked; differentiable under autograd
    entropy: Tensor           # (N, L) detached unless asked for (entropy_grad)
    full_kl: Tensor | None    # (N, L) KL(pi || pi_ref) over the vocabulary, when a reference was given


def _hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    decoder = hf_model(model).get_decoder()
    out = decoder(inputs_embeds=_embed(decoder, input_ids), attention_mask=attention_mask,
                  position_ids=positions(attention_mask), use_cache=False)
    return out.last_hidden_state                                            # (N, P+L, H)


def _embed(decoder, ids: Tensor) -> Tensor:
    """The decoder's input embeddings of `ids`. For a plain trainable nn.Embedding under autograd,
    the lookup's gradient is added into the weight's `.grad` row by row (index_add_) once the
    backward pass has finished, instead of autograd's dense (vocabulary x hidden) gradient: on a
    model whose embedding is tied to the LM head that dense tensor, and its sum with the head's
    gradient, are two (vocabulary x hidden) tensors at the peak of the step. Same gradient."""
    emb = decoder.get_input_embeddings()
    w = emb.weight
    plain = (type(emb) is torch.nn.Embedding and emb.max_norm is None and not emb.scale_grad_by_freq
             and not emb.sparse)
    if not (torch.is_grad_enabled() and w.requires_grad and plain):
        return emb(ids)
    with torch.no_grad():
        out = torch.nn.functional.embedding(ids, w)
    out.requires_grad_()
    keep = ids != emb.padding_idx if emb.padding_idx is not None else None

    def finish():
        g = out.grad.reshape(-1, out.shape[-1])
        rows = ids.reshape(-1)
        if keep is not None:
            g, rows = g[keep.reshape(-1)], rows[keep.reshape(-1)]
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.index_add_(0, rows, g.to(w.grad.dtype))
        out.grad = None

    def hook(grad):
        compat.after_backward(finish)

    out.register_hook(hook)
    return out


def can_share_prefix(net, decoder) -> bool:
    """Full-attention layers with the standard cache only (no sliding windows, no linear
    attention), and, when layers are checkpointed, layers that keep a read-only cache."""
    try:
        if not compat.full_attention_only(decoder.config):
            return False
    except (TypeError, ValueError, AttributeError):            # a config the standard cache cannot take
        return False
    if torch.is_grad_enabled() and compat.checkpoints_layers(net):
        return compat.keeps_cache_under_checkpointing(decoder.layers)
    return True


def allow_prefix_under_checkpointing(model) -> None:
    """Let checkpointed decoder layers keep the read-only prefix cache of `_predicting_hidden`
    (its states are the same on the backward replay). Only that function passes a cache to a
    layer while gradients are on."""
    compat.allow_cache_under_checkpointing(getattr(hf_model(model).get_decoder(), "layers", []))


def _deferred_backward(outputs: list[Tensor]) -> list[Tensor]:
    """Detached stand-ins for `outputs` whose gradients are pushed on through `outputs` once the
    backward pass that produced them has finished (same gradients, in two passes).

    Why: every weight is used by the prompt forward and again by the completion forward. In one
    pass autograd holds each weight's completion gradient until the prompt's arrives, at the end
    of the pass: a second full set of weight gradients alive at once (docs/performance.md).
    In two passes each contribution goes straight into `.grad`. Gradients must come from
    `.backward()` (leaf gradients), as the trainer takes them."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in outputs):
        return outputs
    stand_ins = [t.detach().requires_grad_(t.requires_grad) for t in outputs]
    # The hooks keep each stand-in's gradient themselves and hold no stand-in: a stand-in that
    # held its own hook's closure would be a reference cycle through autograd's C++ hooks, which
    # Python's collector cannot see, and a forward never backwarded (a micro-batch with no loss
    # token) would then keep the prompt forward's whole graph alive for the rest of the run.
    grads: list = [None] * len(outputs)
    queued = [False]

    def finish():
        queued[0] = False
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        grads[:] = [None] * len(grads)
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

    def taker(i):
        # after the stand-in's gradient is accumulated: take it (no copy) and leave the stand-in bare
        def take(s):
            grads[i] = s.grad if grads[i] is None else grads[i] + s.grad
            s.grad = None
            if not queued[0]:
                queued[0] = True
                compat.after_backward(finish)
        return take

    for i, s in enumerate(stand_ins):
        if s.requires_grad:
            s.register_post_accumulate_grad_hook(taker(i))
    return stand_ins


def _predicting_hidden(model, rollout: Rollout) -> Tensor:
    """(N, L, H): the hidden state that predicts each completion token (position P-1+t for token t).

    Rows that share a prompt share its forward: each distinct prompt runs once, its per-layer
    keys/values are gathered to the rows that use it, and the completions run on top of them. The
    same function as running every row's prompt+completion, with (G-1)/G of the prompt work
    removed; under autograd the gradients of all rows flow back into the one prompt forward."""
    net = hf_model(model)
    decoder = net.get_decoder()
    P, L = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    attn = torch.cat([rollout.prompt_mask, rollout.completion_mask.long()], 1)
    if not can_share_prefix(net, decoder):
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
        return _hidden(model, ids, attn)[:, P - 1:P + L - 1]
    key = torch.cat([rollout.prompt_ids, rollout.prompt_mask.to(rollout.prompt_ids.dtype)], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    u_ids, u_mask = uniq[:, :P], uniq[:, P:]
    record = compat.recording_cache()
    out = decoder(inputs_embeds=_embed(decoder, u_ids), attention_mask=u_mask, position_ids=positions(u_mask),
                  cache=record,
                  use_cache=False)
    last, *kv = _deferred_backward([out.last_hidden_state[:, -1]] + [t for layer in record.layers
                                                                      for t in (layer.keys, layer.values)])
    compat.forget_recorded(record)
    last = last[inverse]                                                    # (N, H) predicts token 0
    if L == 1:
        return last[:, None]
    start = positions(rollout.prompt_mask)[:, -1:] + 1
    lengths = rollout.completion_mask.sum(1)
    # sharded weights: every process must run as many forwards, whatever its rows' lengths
    buckets = [torch.arange(len(lengths), device=lengths.device)] if compat.sharded(net) else length_buckets(lengths)
    parts = []
    for rows in buckets:
        width = max(1, int(lengths[rows].max()) - 1)         # the inputs: every token but the last
        prefix = compat.prefix_cache([(k[inverse[rows]], v[inverse[rows]]) for k, v in zip(kv[0::2], kv[1::2])])
        pos = start[rows] + torch.arange(width, device=start.device)[None]
        out = decoder(inputs_embeds=_embed(decoder, rollout.completion_ids[rows, :width]),
                      attention_mask=attn[rows, :P + width],
                      position_ids=pos, cache=prefix, use_cache=False).last_hidden_state     # (rows, width, H)
        parts.append(torch.nn.functional.pad(out, (0, 0, 0, L - 1 - width)))
    order = torch.cat(buckets)
    rest = torch.cat(parts)[torch.argsort(order)]                            # (N, L-1, H), rows in order
    return torch.cat([last[:, None], rest], 1)


# A completion forward runs in buckets of rows of similar length, each cut to its own longest
# row: a bucket takes rows (longest first) while its padded tokens stay within this factor of its
# real ones, so the forward's work follows the sum of the lengths, not rows x the longest.
BUCKET_SLACK = 1.25


def length_buckets(lengths: Tensor, slack: float | None = None) -> list[Tensor]:
    """Row indices grouped into buckets: sorted by length, longest first, a bucket of r rows whose
    longest is m holding r * m <= slack * (the sum of its lengths)."""
    slack = BUCKET_SLACK if slack is None else slack
    order = torch.argsort(lengths, descending=True, stable=True)
    ls = lengths[order].tolist()
    buckets, first, total = [], 0, 0
    for i, n in enumerate(ls):
        if i > first and (i - first + 1) * ls[first] > slack * (total + n):
            buckets.append(order[first:i])
            first, total = i, 0
        total += n
    buckets.append(order[first:])
    return buckets


def _head_logits(model, hidden: Tensor, temperature: float) -> Tensor:
    model = hf_model(model)
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits if temperature == 1.0 else logits / temperature


def _plain_chunks(model, h: Tensor, targets: Tensor, temperature: float, chunk: int, ref=None, ref_h=None,
                  entropy_grad: bool = False):
    """(logp, entropy, full KL or None) of each row of `h` (M, H), `chunk` rows through the LM
    head at a time, each chunk checkpointed under autograd."""

    def piece(h_c, tok_c, ref_c):
        logits = _head_logits(model, h_c, temperature)                         # (m, V)
        logp, ent = losses.logprobs_and_entropy(logits, tok_c, entropy_grad)
        if ref_c is None:
            return logp, ent, torch.zeros_like(logp)
        with ref.scope() as ref_net:
            ref_logits = _head_logits(ref_net, ref_c, temperature)
        return logp, ent, losses.full_kl_from_logits(logits, ref_logits)

    parts = []
    for s in range(0, h.shape[0], chunk):
        args = (h[s:s + chunk], targets[s:s + chunk], None if ref_h is None else ref_h[s:s + chunk])
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(piece, *args, use_reentrant=False))
        else:
            parts.append(piece(*args))
    if not parts:
        return (h.new_zeros(0),) * 3
    logp, ent, kl = (torch.cat(x) for x in zip(*parts))
    return logp, ent, kl if ref is not None else None


def token_stats(model, rollout: Rollout, *, temperature: float, chunk: int, ref=None, head=None,
                entropy_grad: bool = False) -> TokenStats:
    """Log-prob, entropy (and, with `ref` a Reference, the full-vocabulary KL to it) of every valid
    completion token. `head`: a faster LM-head computation (`head.module_for(model)` says whether
    it applies; then `head(h, module, targets, temperature, chunk)` gives log-probs and entropy).
    With `entropy_grad` the entropy is differentiable (an entropy bonus), through the plain path."""
    sel = rollout.completion_mask                                              # (N, L)
    targets = rollout.completion_ids[sel]                                      # (M,)
    h = _predicting_hidden(model, rollout)[sel]                                # (M, H)
    use_head = head is not None and ref is None and not entropy_grad
    module = head.module_for(model) if use_head else None
    if module is not None:
        logp, ent = head(h, module, targets, temperature, chunk)
        kl = None
    else:
        ref_h = None
        if ref is not None:
            with ref.scope() as ref_net:
                ref_h = _predicting_hidden(ref_net, rollout)[sel]              # (M, H)
        logp, ent, kl = _plain_chunks(model, h, targets, temperature, chunk, ref, ref_h, entropy_grad)

    def scatter(v):
        return torch.zeros(sel.shape, dtype=v.dtype, device=v.device).masked_scatter(sel, v)

    return TokenStats(scatter(logp), scatter(ent if entropy_grad else ent.detach()),
                      scatter(kl) if kl is not None else None)


def reference_logprobs(ref, rollout: Rollout, *, temperature: float, chunk: int, head=None) -> Tensor:
    """(N, L) log pi_ref of every valid completion token (0 elsewhere)."""
    with ref.scope() as net:
        return token_stats(net, rollout, temperature=temperature, chunk=chunk, head=head).logp
