"""Models and their per-token log-probs.

Log-probs are computed only at completion positions: the decoder runs over prompt+completion,
then the hidden states of valid completion tokens go through the LM head `logprob_chunk` rows at
a time. Under autograd each chunk is checkpointed, so neither the forward nor the backward ever
holds a (tokens x vocabulary) tensor for the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import mmap
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicLayer

from . import losses
from .config import ConfigError
from .rollout import Rollout, few_rows_linear, positions


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


def load_model(path: str | Path, device: torch.device, gguf_file: str | None = None, mmap: bool = True):
    """Actor and tokenizer from a Hugging Face folder, a .gguf file (de-quantised to fp32 once,
    then cached as a safetensors folder), or a hub id when a hub is reachable.

    With `mmap` (transformers' default) CPU weights are views of the mapped safetensors file, and
    one tensor still in use keeps the whole file's touched pages resident; sharded training
    replaces most weights by their pieces, so it reads the file into memory instead."""
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
                try:
                    os.replace(tmp, cached)
                except OSError:                 # another process (a rank beside this one) was first
                    shutil.rmtree(tmp, ignore_errors=True)
                    if not (cached / "config.json").exists():
                        raise
            folder = str(cached)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, disable_mmap=not mmap)
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
        model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"lora_target_modules: {e}") from None
    lean_lora(model)
    return model


def _plain_lora_layers(model):
    """peft's LoRA linear layers that are plain: one nn.Linear base, vanilla LoRA (no DoRA or other
    variant), no dropout. Only these take the leaner paths below."""
    from peft.tuners.lora import Linear as LoraLinear
    for m in model.modules():
        if (isinstance(m, LoraLinear) and type(m.base_layer) is torch.nn.Linear and not m.lora_variant
                and all(isinstance(d, torch.nn.Identity) for d in m.lora_dropout.values())):
            yield m


def lean_lora(model) -> None:
    """Run each plain LoRA layer as base(x) + scale * (x A^T) B^T in one fused multiply-add
    (torch.addmm with alpha = scale): the same function as peft's forward, without its two
    full-size temporaries (the scaled adapter output and the sum) per projection. Anything else
    (adapter disabled, merged, several adapters) goes through peft's own forward."""
    for m in _plain_lora_layers(model):
        m.forward = _lean_forward(m)


def _lean_forward(m):
    peft_forward = type(m).forward

    def forward(x, *args, **kwargs):
        active = [a for a in m.active_adapters if a in m.lora_A]
        if m.disable_adapters or m.merged or len(active) != 1 or args or kwargs:
            return peft_forward(m, x, *args, **kwargs)
        name = active[0]
        base = torch.nn.functional.linear(x, m.base_layer.weight, m.base_layer.bias)
        h = torch.nn.functional.linear(x, m.lora_A[name].weight)                  # (..., r)
        out = torch.addmm(base.reshape(-1, base.shape[-1]), h.reshape(-1, h.shape[-1]), m.lora_B[name].weight.t(),
                          alpha=m.scaling[name])
        return out.view(base.shape)
    return forward


def hf_model(model):
    """The transformers model inside a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def lora_merged(model):
    """Inside: every plain LoRA linear layer of `model` runs as one matmul with the merged weight
    W + scale * B @ A, computed fresh (the base weights are not touched, so nothing drifts). The
    same function as the adapter path in eval mode, where LoRA dropout is off; meant for sampling,
    where it removes two small matmuls per projection per token. Gradients are off inside."""
    swapped = []
    if hasattr(model, "get_base_model"):
        with torch.no_grad():
            for m in _plain_lora_layers(model):
                if m.merged or m.disable_adapters:
                    continue
                w = m.base_layer.weight
                for name in m.active_adapters:
                    if name in m.lora_A:
                        w = w + m.get_delta_weight(name)
                swapped.append((m, vars(m).get("forward")))
                m.forward = _fixed_linear(w, m.base_layer.bias)
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, previous in swapped:
            if previous is None:
                del m.forward
            else:
                m.forward = previous


def _fixed_linear(weight: Tensor, bias: Tensor | None):
    """A forward for a linear layer with these weights: few_rows_linear bound to them (the lean
    decoding step reads them back from the partial)."""
    return functools.partial(few_rows_linear, weight=weight, bias=bias)


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


def frozen_copy(model, spill_dir: str | Path | None = None):
    """The reference policy: a copy of the actor with gradients off. With `spill_dir` (CPU only),
    its weights move to a file there (see `FileBackedWeights`)."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    if spill_dir is not None and all(t.device.type == "cpu" for t in ref.state_dict().values()):
        try:
            ref.grpo_file_weights = FileBackedWeights(ref, spill_dir)
        except OSError as e:                      # a full disk, a folder that cannot map: stay in memory
            warnings.warn(f"reference_in_file: cannot keep the reference's weights in a file in {spill_dir} "
                          f"({e}); they stay in memory", stacklevel=2)
    return ref


class FileBackedWeights:
    """A frozen module's parameters and buffers, moved into one file that is mapped into memory.

    The frozen reference is read once per step, in its own forward pass, and sits idle through the
    update, which is the step's memory peak. Mapped from a file, its pages can be dropped after
    each use (`release`) and are read back from the page cache, or the disk, on the next forward:
    the process holds one copy of the weights fewer at the peak (0.54 GB on SmolLM2-135M). The
    mapping is private and the file is unlinked as soon as it is mapped, so nothing stays on disk
    after the process ends, however it ends."""

    ALIGN = 64

    def __init__(self, module: torch.nn.Module, folder: str | Path):
        tensors, seen = [], set()
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() and id(t) not in seen:       # tied weights are stored once
                seen.add(id(t))
                tensors.append(t)
        offsets, size = [], 0
        for t in tensors:
            size += (-size) % self.ALIGN
            offsets.append(size)
            size += t.numel() * t.element_size()
        fd, path = tempfile.mkstemp(prefix=".grpo-reference-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                for t, off in zip(tensors, offsets):
                    fh.seek(off)
                    fh.write(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
                fh.truncate(size)
            with open(path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)   # private: never written back
        finally:
            os.unlink(path)
        raw = torch.frombuffer(self._map, dtype=torch.uint8)
        with torch.no_grad():
            for t, off in zip(tensors, offsets):
                n = t.numel() * t.element_size()
                t.data = raw[off:off + n].view(t.dtype).view(t.shape)

    def release(self) -> None:
        """Drop the resident pages (the next read maps them back in from the file)."""
        self._map.madvise(mmap.MADV_DONTNEED)


def release_weights(model) -> None:
    """After a forward of a model from `frozen_copy(..., spill_dir)`: let its pages go."""
    weights = getattr(model, "grpo_file_weights", None)
    if weights is not None:
        weights.release()


@dataclass
class TokenStats:
    logp: Tensor              # (N, L) log pi(token), 0 where masked; differentiable under autograd
    entropy: Tensor           # (N, L) detached
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
    gradient, are 2 x 113 MB at the peak of SmolLM2-135M's step. Same gradient."""
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
        torch.autograd.Variable._execution_engine.queue_callback(finish)

    out.register_hook(hook)
    return out


class _Recorder(DynamicLayer):
    """Cache layer for a prompt forward: keeps the layer's keys/values, returns them unchanged.
    Writing the same states again (a checkpointed layer's backward replay) leaves it the same."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.is_initialized = True
        self.keys, self.values = key_states, value_states
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0                                              # nothing precedes the prompt


class _Prefix(DynamicLayer):
    """Read-only cache layer: a fixed prefix's keys/values, to which each call appends the new
    states in its return value only. The same input gives the same output every time, so a
    checkpointed layer may replay it in backward."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def _can_share_prefix(net, decoder) -> bool:
    """Full-attention layers with the standard cache only (no sliding windows, no linear
    attention), and, when layers are checkpointed, layers that keep a read-only cache."""
    from transformers.cache_utils import DynamicCache
    try:
        kinds = {type(layer) for layer in DynamicCache(config=decoder.config).layers}
    except Exception:                                           # an unusual config: stay on the plain path
        return False
    if not kinds <= {DynamicLayer}:
        return False
    if torch.is_grad_enabled() and getattr(net, "is_activation_checkpointing", False):
        return all(getattr(m, "_can_checkpoint_with_cache", False) for m in decoder.layers)
    return True


def allow_prefix_under_checkpointing(model) -> None:
    """Let checkpointed decoder layers keep the read-only prefix cache of `_predicting_hidden`
    (its states are the same on the backward replay). Only that function passes a cache to a
    layer while gradients are on."""
    for layer in getattr(hf_model(model).get_decoder(), "layers", []):
        layer._can_checkpoint_with_cache = True


def _deferred_backward(outputs: list[Tensor]) -> list[Tensor]:
    """Detached stand-ins for `outputs` whose gradients are pushed on through `outputs` once the
    backward pass that produced them has finished (same gradients, in two passes).

    Why: every weight is used by the prompt forward and again by the completion forward. In one
    pass autograd holds each weight's completion gradient until the prompt's arrives, at the end
    of the pass: a second full set of weight gradients alive at once (0.38 GB on SmolLM2-135M).
    In two passes each contribution goes straight into `.grad`. Gradients must come from
    `.backward()` (leaf gradients), as the trainer takes them."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in outputs):
        return outputs
    stand_ins = [t.detach().requires_grad_(t.requires_grad) for t in outputs]
    queued = [False]

    def finish():
        queued[0] = False
        pairs = [(o, s.grad) for o, s in zip(outputs, stand_ins) if s.grad is not None]
        for s in stand_ins:
            s.grad = None
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

    def hook(grad):
        if not queued[0]:
            queued[0] = True
            torch.autograd.Variable._execution_engine.queue_callback(finish)
        return grad

    for s in stand_ins:
        if s.requires_grad:
            s.register_hook(hook)
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
    if not _can_share_prefix(net, decoder):
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
        return _hidden(model, ids, attn)[:, P - 1:P + L - 1]
    key = torch.cat([rollout.prompt_ids, rollout.prompt_mask.to(rollout.prompt_ids.dtype)], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    u_ids, u_mask = uniq[:, :P], uniq[:, P:]
    record = Cache(layer_class_to_replicate=_Recorder)
    out = decoder(inputs_embeds=_embed(decoder, u_ids), attention_mask=u_mask, position_ids=positions(u_mask),
                  cache=record,
                  use_cache=False)
    last, *kv = _deferred_backward([out.last_hidden_state[:, -1]] + [t for layer in record.layers
                                                                      for t in (layer.keys, layer.values)])
    last = last[inverse]                                                    # (N, H) predicts token 0
    if L == 1:
        return last[:, None]
    prefix = Cache(layers=[_Prefix(k[inverse], v[inverse]) for k, v in zip(kv[0::2], kv[1::2])])
    start = positions(rollout.prompt_mask)[:, -1:] + 1
    pos = start + torch.arange(L - 1, device=start.device)[None]
    rest = decoder(inputs_embeds=_embed(decoder, rollout.completion_ids[:, :-1]), attention_mask=attn[:, :-1],
                   position_ids=pos,
                   cache=prefix, use_cache=False).last_hidden_state           # (N, L-1, H)
    return torch.cat([last[:, None], rest], 1)


def _head_logits(model, hidden: Tensor, temperature: float) -> Tensor:
    model = hf_model(model)
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits if temperature == 1.0 else logits / temperature


FUSED_HEAD = True        # token_stats through _HeadLogProb where the head allows (bench/ turns it off to compare)


class _HeadLogProb(torch.autograd.Function):
    """Log-prob of each row's target token and the distribution's entropy, straight from the
    hidden states through a plain linear LM head: (m, H) -> (m,), (m,) (entropy not differentiable).

    The same values as log_softmax(h W^T / T) gathered at the targets, with one (m, vocabulary)
    tensor at most kept for backward: with `keep`, the softmax itself (backward then needs no
    product with the head); without, only the rows' log-normaliser, and backward recomputes the
    logits once and turns them in place into their gradient, g * (onehot(target) - softmax) / T.
    Autograd's own path (checkpointed) holds the recomputed logits, their log-softmax, the
    gather's zero-filled gradient and the log-softmax's gradient, each (m, vocabulary)."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, inv_temperature: float, keep: bool):
        logits = losses._upcast(torch.nn.functional.linear(h, weight, bias))
        if inv_temperature != 1.0:
            logits.mul_(inv_temperature)
        top = logits.amax(-1, keepdim=True)
        logits.sub_(top)                                                 # shifted: max 0 per row
        p = logits.exp()
        total = p.sum(-1)
        log_total = total.log()
        logp = logits.gather(-1, targets[:, None]).squeeze(-1) - log_total
        expected = torch.bmm(p[:, None], logits[:, :, None]).view(-1) / total     # E_p[shifted logit]
        entropy = log_total - expected
        del logits
        if keep:
            ctx.save_for_backward(h, weight, bias, targets, p.div_(total[:, None]))       # the softmax
        else:
            ctx.save_for_backward(h, weight, bias, targets, top.squeeze(-1) + log_total)
        ctx.inv_temperature, ctx.keep = inv_temperature, keep
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g, _g_entropy):
        h, weight, bias, targets, saved = ctx.saved_tensors
        if ctx.keep:
            grad = saved * -g[:, None]                                   # -g * softmax (the saved one stays)
        else:
            grad = losses._upcast(torch.nn.functional.linear(h, weight, bias))
            if ctx.inv_temperature != 1.0:
                grad.mul_(ctx.inv_temperature)
            grad.sub_(saved[:, None]).exp_().mul_(-g[:, None])          # -g * softmax
        grad.scatter_add_(1, targets[:, None], g[:, None])                 # + g at the target
        if ctx.inv_temperature != 1.0:
            grad.mul_(ctx.inv_temperature)
        grad = grad.to(h.dtype)
        dh = grad @ weight if ctx.needs_input_grad[0] else None
        dw = grad.t() @ h if ctx.needs_input_grad[1] else None
        db = grad.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return dh, dw, db, None, None, None


def _plain_head(model):
    """The model's LM head if it is a plain nn.Linear with no logit soft-capping, else None."""
    net = hf_model(model)
    head = net.get_output_embeddings()
    if type(head) is not torch.nn.Linear or "forward" in vars(head) or getattr(net.config, "final_logit_softcapping", None):
        return None
    if torch.is_autocast_enabled(head.weight.device.type):     # backward would not recompute the same logits
        return None
    return head


def token_stats(model, rollout: Rollout, *, temperature: float, chunk: int, ref_model=None,
                keep_bytes: int = 0) -> TokenStats:
    """Log-prob, entropy (and full KL to `ref_model`) of every valid completion token. Under
    autograd, the LM head's softmax of the first chunks, up to `keep_bytes` in all, is kept for
    backward instead of recomputed (see `_HeadLogProb`)."""
    if isinstance(model, AdapterDisabled):          # the reference under LoRA (never differentiated)
        with model.peft_model.disable_adapter():
            return token_stats(hf_model(model.peft_model), rollout, temperature=temperature, chunk=chunk,
                               ref_model=ref_model)
    sel = rollout.completion_mask                                              # (N, L)
    targets = rollout.completion_ids[sel]                                      # (M,)
    h = _predicting_hidden(model, rollout)[sel]                                # (M, H)
    ref_h = None
    if ref_model is not None:
        scope, ref_net = _reference_scope(ref_model)
        with torch.no_grad(), scope:
            ref_h = _predicting_hidden(ref_net, rollout)[sel]                  # (M, H)

    def piece(h_c, tok_c, ref_c):
        logits = _head_logits(model, h_c, temperature)                         # (m, V)
        logp, ent = losses.logprobs_and_entropy(logits, tok_c)
        if ref_c is None:
            return logp, ent, torch.zeros_like(logp)
        scope, ref_net = _reference_scope(ref_model)
        with torch.no_grad(), scope:
            ref_logits = _head_logits(ref_net, ref_c, temperature)
        return logp, ent, losses.full_kl_from_logits(logits, ref_logits)

    head = _plain_head(model) if ref_model is None and FUSED_HEAD else None
    budget = keep_bytes
    if head is not None:        # bytes per kept row: the softmax in the upcast dtype (losses._upcast)
        row_bytes = head.weight.shape[0] * torch.promote_types(head.weight.dtype, torch.float32).itemsize
    parts = []
    for s in range(0, h.shape[0], chunk):
        args = (h[s:s + chunk], targets[s:s + chunk], None if ref_h is None else ref_h[s:s + chunk])
        if head is not None:
            size = args[0].shape[0] * row_bytes
            keep = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad) and size <= budget
            budget -= size if keep else 0
            logp, ent = _HeadLogProb.apply(args[0], head.weight, head.bias, args[1], 1.0 / temperature, keep)
            parts.append((logp, ent, None))
        elif torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(piece, *args, use_reentrant=False))
        else:
            parts.append(piece(*args))
    logp, ent, kl = (torch.cat(x) if x[0] is not None else None for x in zip(*parts)) if parts else (h.new_zeros(0),) * 3

    def scatter(v):
        return torch.zeros(sel.shape, dtype=v.dtype, device=v.device).masked_scatter(sel, v)

    return TokenStats(scatter(logp), scatter(ent.detach()), scatter(kl) if ref_model is not None else None)
