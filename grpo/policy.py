"""Models and their per-token log-probs.

Log-probs are computed only at completion positions: the decoder runs over prompt+completion,
then the hidden states of valid completion tokens go through the LM head `logprob_chunk` rows at
a time. Under autograd each chunk is checkpointed, so neither the forward nor the backward ever
holds a (tokens x vocabulary) tensor for the whole batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from . import losses
from .config import ConfigError
from .rollout import Rollout, positions


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(path: str | Path, device: torch.device):
    """Actor and tokenizer from a Hugging Face folder (or hub id when a hub is reachable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model: cannot load a causal language model from {path!r}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def frozen_copy(model):
    """The reference policy: a copy of the actor with gradients off."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


@dataclass
class TokenStats:
    logp: Tensor              # (N, L) log pi(token), 0 where masked; differentiable under autograd
    entropy: Tensor           # (N, L) detached
    full_kl: Tensor | None    # (N, L) KL(pi || pi_ref) over the vocabulary, when a reference was given


def _hidden(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=positions(attention_mask))
    return out.last_hidden_state                                            # (N, P+L, H)


def _head_logits(model, hidden: Tensor, temperature: float) -> Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits / temperature


def token_stats(model, rollout: Rollout, *, temperature: float, chunk: int, ref_model=None) -> TokenStats:
    """Log-prob, entropy (and full KL to `ref_model`) of every valid completion token."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)          # (N, P+L)
    attn = torch.cat([rollout.prompt_mask, rollout.completion_mask.long()], 1)
    P, L = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    sel = rollout.completion_mask                                              # (N, L)
    targets = rollout.completion_ids[sel]                                      # (M,)
    # position P-1+t predicts completion token t
    h = _hidden(model, ids, attn)[:, P - 1:P + L - 1][sel]                     # (M, H)
    ref_h = None
    if ref_model is not None:
        with torch.no_grad():
            ref_h = _hidden(ref_model, ids, attn)[:, P - 1:P + L - 1][sel]     # (M, H)

    def piece(h_c, tok_c, ref_c):
        logits = _head_logits(model, h_c, temperature)                         # (m, V)
        logp = losses.token_logprobs(logits, tok_c)
        with torch.no_grad():
            ent = losses.entropy_from_logits(logits)
        if ref_c is None:
            return logp, ent, torch.zeros_like(logp)
        with torch.no_grad():
            ref_logits = _head_logits(ref_model, ref_c, temperature)
        return logp, ent, losses.full_kl_from_logits(logits, ref_logits)

    parts = []
    for s in range(0, h.shape[0], chunk):
        args = (h[s:s + chunk], targets[s:s + chunk], None if ref_h is None else ref_h[s:s + chunk])
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(piece, *args, use_reentrant=False))
        else:
            parts.append(piece(*args))
    logp, ent, kl = (torch.cat(x) for x in zip(*parts)) if parts else (h.new_zeros(0),) * 3

    def scatter(v):
        return torch.zeros(sel.shape, dtype=v.dtype, device=v.device).masked_scatter(sel, v)

    return TokenStats(scatter(logp), scatter(ent.detach()), scatter(kl) if ref_model is not None else None)
