"""The decoder families a decoding step of plain tensor ops can run: which models (`unsupported`,
for the static engine's units and grpo/fast's lean step), and every tensor the static engine's
step reads, in its decoding dtype (`Weights`: the model's own tensors where they have it, else
copies, LoRA merged), with the two ops over them (`rms`, `linear`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import compat

LAYERS = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def unsupported(model) -> str | None:
    """Why `model` (a transformers causal LM) cannot decode as a run of plain tensor ops (this
    engine's unit, grpo/fast's lean step), or None if it can."""
    dec, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if dec is None or head is None or not all(hasattr(dec, a) for a in ("layers", "norm", "rotary_emb", "embed_tokens")):
        return "not a decoder with layers, norm, rotary embedding and LM head"
    if compat.sharded(model):
        return "sharded weights"
    if any(kind in str(getattr(dec.rotary_emb, "rope_type", "default")) for kind in ("dynamic", "longrope")):
        return "a rotary embedding recomputed from the positions seen (dynamic, longrope)"
    cfg = model.config
    if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return "attention other than full"
    if compat.class_name(dec.norm) not in NORMS:
        return f"final norm {compat.class_name(dec.norm)}"
    for layer in dec.layers:
        if compat.class_name(layer) not in LAYERS:
            return f"decoder layer {compat.class_name(layer)}"
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        norms += [getattr(layer.self_attn, n) for n in ("q_norm", "k_norm") if hasattr(layer.self_attn, n)]
        if any(compat.class_name(n) not in NORMS for n in norms):
            return "a norm of another kind"
        if model.training and getattr(layer.self_attn, "attention_dropout", 0.0):
            return "attention dropout in training mode"
    return None


# ------------------------------------------------------------------------------ weights
class _Copy:
    """One tensor of the decoding unit: the source itself where it has the dtype and nothing is
    merged into it, else a buffer of the dtype holding source (+ sum scale * B @ A), rewritten in
    place by `refresh` (the optimizer's fused updates leave no trace on a tensor's version
    counter, so a copy cannot tell by itself whether its sources changed)."""

    def __init__(self, source: Tensor, parts: list, dtype: torch.dtype):
        self.source, self.parts = source, parts
        self.own = source.dtype != dtype or bool(parts)
        self.value = torch.empty(source.shape, dtype=dtype, device=source.device) if self.own else source.detach()

    @torch.no_grad()
    def refresh(self) -> None:
        """Rewrite the buffer from its sources (nothing to do where the source is used in place)."""
        if not self.own:
            return
        if self.parts:
            merged = self.source.detach().to(torch.float32, copy=True)
            for a, b, scale in self.parts:
                merged.addmm_(b.detach().float(), a.detach().float(), alpha=scale)
            self.value.copy_(merged)
        else:
            self.value.copy_(self.source.detach())


class Weights:
    """Every tensor the decoding unit reads. The projections (LM head included) in the decoding
    dtype (see `_Copy`); the embedding and the norms as the model holds them, so the residual
    stream, norms and rotary run in the weights' own dtype, as they do under autocast. A tensor
    shared by two places in one dtype is held once."""

    def __init__(self, model, dtype: torch.dtype):
        self.dtype, self.copies = dtype, {}
        dec = model.model
        self.embed = self._plain(dec.embed_tokens.weight)
        self.norm = self._plain(dec.norm.weight)
        self.eps = dec.norm.variance_epsilon
        self.head = self._linear(model.lm_head)
        self.layers = []
        for layer in dec.layers:
            a = layer.self_attn
            entry = {"input_norm": self._plain(layer.input_layernorm.weight),
                     "post_norm": self._plain(layer.post_attention_layernorm.weight),
                     "eps": layer.input_layernorm.variance_epsilon, "post_eps": layer.post_attention_layernorm.variance_epsilon}
            for name in PROJECTIONS:
                entry[name] = self._linear(getattr(a if name in PROJECTIONS[:4] else layer.mlp, name))
            if hasattr(a, "q_norm"):
                entry["q_norm"], entry["k_norm"] = self._plain(a.q_norm.weight), self._plain(a.k_norm.weight)
                entry["qk_eps"] = a.q_norm.variance_epsilon
            self.layers.append(entry)

    def _copy(self, source: Tensor, parts=(), dtype: torch.dtype | None = None) -> _Copy:
        dtype = dtype or self.dtype
        key = (source.data_ptr(), dtype, tuple((a.data_ptr(), b.data_ptr()) for a, b, _ in parts))
        if key not in self.copies:
            self.copies[key] = _Copy(source, list(parts), dtype)
        return self.copies[key]

    def _plain(self, source: Tensor) -> _Copy:
        return self._copy(source, dtype=source.dtype)

    def _linear(self, module) -> tuple[_Copy, _Copy | None]:
        lora = compat.lora_parts(module)            # read before any forward patched in for sampling
        if lora is not None:
            weight, bias, parts = lora
        else:
            wb = compat.linear_weights(module)
            temporary = (isinstance(compat.own_forward(module), compat.FixedLinear)
                         and type(module) is not torch.nn.Linear)
            if wb is None or temporary:          # a patched-in forward's weights may not outlive the call
                raise Unsupported(f"a projection of kind {compat.class_name(module)}")
            weight, bias, parts = wb[0], wb[1], []
        return self._copy(weight, parts), None if bias is None else self._copy(bias)

    def refresh(self) -> None:
        """Rewrite every copy from its sources (one pass over the weights)."""
        for c in self.copies.values():
            c.refresh()


class Unsupported(Exception):
    """A part of the model the plain-tensor step cannot read (its message says which)."""


def rms(x: Tensor, weight: _Copy, eps: float) -> Tensor:
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight.value, eps)


def linear(x: Tensor, wb) -> Tensor:
    weight, bias = wb
    return torch.nn.functional.linear(x, weight.value, None if bias is None else bias.value)
