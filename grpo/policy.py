"""Models and their per-token log-probs.

Log-probs are computed only at completion positions: the decoder runs over prompt+completion,
then the hidden states of valid completion tokens go through the LM head `logprob_chunk` rows at
a time. Under autograd each chunk is checkpointed, so neither the forward nor the backward ever
holds a (tokens x vocabulary) tensor for the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import tempfile
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


def _split_gguf(path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """`dir/model.gguf` -> (`dir`, `model.gguf`); a folder plus --gguf-file stays as given."""
    if gguf_file is None and path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, gguf_file


def _gguf_cache(folder: str, gguf_file: str) -> Path:
    """Where the de-quantised copy of a GGUF file is kept (keyed by its path, size and time)."""
    from .demo import cache_root
    f = Path(folder) / gguf_file
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / f"gguf-{f.stem}-{key}"


def load_model(path: str | Path, device: torch.device, gguf_file: str | None = None):
    """Actor and tokenizer from a Hugging Face folder, a .gguf file (de-quantised to fp32 once,
    then cached as a safetensors folder), or a hub id when a hub is reachable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.expanduser(str(path))
    folder, gguf_file = _split_gguf(path, gguf_file)
    looks_local = path.startswith((".", "/")) or path.endswith(".gguf")   # otherwise it may be a hub id
    if looks_local and not os.path.exists(os.path.join(folder, gguf_file or "")):
        raise ConfigError(f"model: {path} does not exist (expected a Hugging Face model folder, a .gguf file, "
                          "or a hub id)")
    try:
        if gguf_file:
            cached = _gguf_cache(folder, gguf_file)
            if not (cached / "config.json").exists():
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
                # the weights are de-quantised to fp32 already; drop the GGUF marker so they can be saved
                model.hf_quantizer = None
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                tmp = Path(tempfile.mkdtemp(dir=cached.parent.mkdir(parents=True, exist_ok=True) or cached.parent))
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                os.replace(tmp, cached)
            folder = str(cached)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, FileNotFoundError) as e:
        where = f"{folder}/{gguf_file}" if gguf_file else folder
        raise ConfigError(f"model: cannot load a causal language model from {where!r}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def add_lora(model, cfg):
    """Wrap the actor with a trainable LoRA adapter (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                      lora_dropout=cfg.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"lora_target_modules: {e}") from None


def hf_model(model):
    """The transformers model inside a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class AdapterDisabled:
    """The reference policy under LoRA: the actor itself with its adapter switched off, so the
    base weights are held once."""

    def __init__(self, peft_model):
        self.peft_model = peft_model


def _reference_scope(ref):
    """(context, transformers model) to run the reference's forward."""
    if isinstance(ref, AdapterDisabled):
        return ref.peft_model.disable_adapter(), hf_model(ref.peft_model)
    return contextlib.nullcontext(), ref


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
    out = hf_model(model).get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=positions(attention_mask), use_cache=False)
    return out.last_hidden_state                                            # (N, P+L, H)


def _head_logits(model, hidden: Tensor, temperature: float) -> Tensor:
    model = hf_model(model)
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits / temperature


def token_stats(model, rollout: Rollout, *, temperature: float, chunk: int, ref_model=None) -> TokenStats:
    """Log-prob, entropy (and full KL to `ref_model`) of every valid completion token."""
    if isinstance(model, AdapterDisabled):          # the reference under LoRA (never differentiated)
        with model.peft_model.disable_adapter():
            return token_stats(hf_model(model.peft_model), rollout, temperature=temperature, chunk=chunk,
                               ref_model=ref_model)
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)          # (N, P+L)
    attn = torch.cat([rollout.prompt_mask, rollout.completion_mask.long()], 1)
    P, L = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    sel = rollout.completion_mask                                              # (N, L)
    targets = rollout.completion_ids[sel]                                      # (M,)
    # position P-1+t predicts completion token t
    h = _hidden(model, ids, attn)[:, P - 1:P + L - 1][sel]                     # (M, H)
    ref_h = None
    if ref_model is not None:
        scope, ref_net = _reference_scope(ref_model)
        with torch.no_grad(), scope:
            ref_h = _hidden(ref_net, ids, attn)[:, P - 1:P + L - 1][sel]       # (M, H)

    def piece(h_c, tok_c, ref_c):
        logits = _head_logits(model, h_c, temperature)                         # (m, V)
        logp, ent = losses.logprobs_and_entropy(logits, tok_c)
        if ref_c is None:
            return logp, ent, torch.zeros_like(logp)
        scope, ref_net = _reference_scope(ref_model)
        with torch.no_grad(), scope:
            ref_logits = _head_logits(ref_net, ref_c, temperature)
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
