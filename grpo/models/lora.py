"""LoRA through peft: the trainable adapter, a leaner forward for plain LoRA layers, and the
merged weights sampling runs with."""

from __future__ import annotations

import contextlib
import warnings

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
    lean_lora(model)
    return model


def plain_lora_layers(model):
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
    for m in plain_lora_layers(model):
        set_forward(m, _LeanForward(m))


class _LeanForward:
    """The forward `lean_lora` gives one LoRA layer."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, *args, **kwargs):
        m = self.layer
        active = [a for a in m.active_adapters if a in m.lora_A]
        if m.disable_adapters or m.merged or len(active) != 1 or args or kwargs:
            return type(m).forward(m, x, *args, **kwargs)
        name = active[0]
        base = torch.nn.functional.linear(x, m.base_layer.weight, m.base_layer.bias)
        h = torch.nn.functional.linear(x, m.lora_A[name].weight)                  # (..., r)
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
