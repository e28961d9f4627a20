"""LoRA through peft: the trainable adapter, a leaner forward for plain LoRA layers, and the
merged weights sampling runs with."""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref

import torch

from ..compat import FixedLinear, own_forward, restore_forward, set_forward
from ..config import ConfigError


def add_lora(model, cfg):
    """Wrap the actor with a trainable LoRA adapter (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                      lora_dropout=cfg.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():     # peft reads a property transformers deprecates; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"lora_target_modules: {e}") from None
    lean_lora(model, low=torch.bfloat16 if cfg.lora_base_dtype == "bf16" else None)
    return model


def plain_lora_layers(model):
    """peft's LoRA linear layers that are plain: one nn.Linear base, vanilla LoRA (no DoRA or other
    variant), no dropout. Only these take the leaner paths below."""
    from peft.tuners.lora import Linear as LoraLinear
    for m in model.modules():
        if (isinstance(m, LoraLinear) and type(m.base_layer) is torch.nn.Linear and not m.lora_variant
                and all(isinstance(d, torch.nn.Identity) for d in m.lora_dropout.values())):
            yield m


def lean_lora(model, low: torch.dtype | None = None) -> None:
    """Run each plain LoRA layer as base(x) + scale * (x A^T) B^T in one fused multiply-add
    (torch.addmm with alpha = scale): the same function as peft's forward, without its two
    full-size temporaries (the scaled adapter output and the sum) per projection. Anything else
    (merged, several adapters) goes through peft's own forward, and so does the adapter-disabled
    reference unless `low` is given.

    `low` (lora_base_dtype): the frozen base product runs in that dtype, from a copy of the base
    weight made once (and again if the weight is changed in place), with the input cast to it and
    the output cast back; the adapter's products, and everything outside the projections, keep
    the input's dtype. The backward to the activations through the base product then runs in
    `low` too (the frozen weight gets no gradient). This holds for the policy and for the
    adapter-disabled reference alike, so the two differ by the adapter alone."""
    cast = _LastCast()                       # shared: q, k, v (and gate, up) read the same input
    for m in plain_lora_layers(model):
        set_forward(m, _LeanForward(m, low, cast))


class _LastCast:
    """x cast to a dtype, remembered for the next call with the same x (the same tensor, unchanged,
    in the same grad mode), so projections that read one input cast it once."""

    def __init__(self):
        self.key, self.out = None, None

    def __call__(self, x, dtype):
        key = (x._version, dtype, torch.is_grad_enabled())
        if self.key is not None and self.key[0]() is x and self.key[1:] == key:
            return self.out
        self.out = x.to(dtype)
        self.key = (weakref.ref(x), *key)
        return self.out


class _LeanForward:
    """The forward `lean_lora` gives one LoRA layer."""

    def __init__(self, layer, low: torch.dtype | None = None, cast: _LastCast | None = None):
        self.layer = layer
        self.low = low
        self.cast = cast or _LastCast()
        self._copy, self._of = None, None

    def _lowers(self, x) -> bool:
        """Whether the base product of `x` runs in `low` (and so comes back as a fresh cast)."""
        return self.low is not None and x.dtype != self.low

    def _base(self, x):
        """The frozen base product, in `low` where asked."""
        b = self.layer.base_layer
        if not self._lowers(x):
            return torch.nn.functional.linear(x, b.weight, b.bias)
        w = b.weight
        key = (w.data_ptr(), w._version, w.device)
        if self._of != key:                  # first use, or the base weight was replaced or changed
            with torch.no_grad():
                self._copy = (w.detach().to(self.low), None if b.bias is None else b.bias.detach().to(self.low))
            self._of = key
        return torch.nn.functional.linear(self.cast(x, self.low), *self._copy).to(x.dtype)

    def __call__(self, x, *args, **kwargs):
        m = self.layer
        active = [a for a in m.active_adapters if a in m.lora_A]
        if m.merged or args or kwargs or not (m.disable_adapters or len(active) == 1):
            return type(m).forward(m, x, *args, **kwargs)
        if m.disable_adapters:               # the reference: the base weights alone
            if self.low is None:
                return type(m).forward(m, x, *args, **kwargs)
            return self._base(x)
        name = active[0]
        base = self._base(x)
        h = torch.nn.functional.linear(x, m.lora_A[name].weight)                  # (..., r)
        if self._lowers(x):
            # `base` is a fresh cast of the low-precision product: add the adapter into it in place
            base.view(-1, base.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), m.lora_B[name].weight.t(),
                                                 alpha=m.scaling[name])
            return base
        out = torch.addmm(base.reshape(-1, base.shape[-1]), h.reshape(-1, h.shape[-1]), m.lora_B[name].weight.t(),
                          alpha=m.scaling[name])
        return out.view(base.shape)


@contextlib.contextmanager
def lora_merged(model, product=torch.nn.functional.linear):
    """Inside: every plain LoRA linear layer of `model` runs as one product with the merged weight
    W + scale * B @ A, computed fresh (the base weights are not touched, so nothing drifts), as
    `product(x, weight, bias)`. The same function as the adapter path in eval mode, where LoRA
    dropout is off; meant for sampling, where it removes two small matmuls per projection per
    token. Gradients are off inside."""
    swapped = []
    if hasattr(model, "get_base_model"):
        with torch.no_grad():
            for m in plain_lora_layers(model):
                if m.merged or m.disable_adapters:
                    continue
                w = m.base_layer.weight
                for name in m.active_adapters:
                    if name in m.lora_A:
                        w = w + m.get_delta_weight(name)
                swapped.append((m, own_forward(m)))
                set_forward(m, FixedLinear(w, m.base_layer.bias, product))
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, previous in swapped:
            restore_forward(m, previous)


@torch.no_grad()
def sampling_copy(model, dtype: torch.dtype):
    """A copy of `model` whose parameters are `dtype` copies of its own, frozen and in eval mode,
    made without a full-precision copy on the way (each parameter is cast straight into the
    copy). Buffers (the rotary frequencies) keep their dtype, as an inference engine keeps them;
    the bf16 base weights a lean LoRA layer keeps (`lora_base_dtype`) are shared, not copied."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters()}
    for m in model.modules():
        forward = own_forward(m)
        if isinstance(forward, _LeanForward):
            memo[id(forward.cast)] = _LastCast()         # its last input's cast is the actor's, not the copy's
            if forward._copy is not None:
                memo.update((id(t), t) for t in forward._copy if t is not None)
    return copy.deepcopy(model, memo).eval()
