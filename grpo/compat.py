"""Every use of a private or unstable transformers / torch / peft interface, in one place.

Each function below reaches past a library's documented surface: a cache-layer subclass, a class
swapped on a live object, a forward set on one module instance, autograd's engine callback, an
attribute a library keeps for itself. Nothing else in the package does. They were checked against
the versions in `CHECKED_AGAINST`; tests/test_compat.py exercises each one on those versions and
fails, naming the function, when a new release changes what it relies on (the callers do not fall
back silently to a slower path on a supported model).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

CHECKED_AGAINST = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"}


# ------------------------------------------------------------------------ autograd
def after_backward(fn) -> None:
    """Run `fn()` once the backward pass now running has finished (autograd's engine callback;
    only valid from inside a backward hook)."""
    torch.autograd.Variable._execution_engine.queue_callback(fn)


# ------------------------------------------------------------------------ forwards
def own_forward(module):
    """The forward set on this instance (by `set_forward`), or None when it uses its class's."""
    return vars(module).get("forward")


def set_forward(module, forward) -> None:
    """Make `module(x)` call `forward(x)` for this instance only (its class is untouched)."""
    module.forward = forward


def restore_forward(module, previous=None) -> None:
    """Undo `set_forward`: back to `previous` (an earlier instance forward) or the class's own."""
    if previous is None:
        vars(module).pop("forward", None)
    else:
        module.forward = previous


class FixedLinear:
    """A forward for a linear layer computing `product(x, weight, bias)` with fixed weights
    (decoding's few-row products, LoRA's merged weights). Its weights can be read back
    (`linear_weights`), so a decoder that runs projections as plain matmuls need not call the
    module."""

    def __init__(self, weight: Tensor, bias: Tensor | None, product=torch.nn.functional.linear):
        self.weight, self.bias, self.product = weight, bias, product

    def __call__(self, x: Tensor) -> Tensor:
        return self.product(x, self.weight, self.bias)


def linear_weights(module) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) of a module whose forward is a plain linear map with them: an untouched
    nn.Linear, or any module given a `FixedLinear` forward. None otherwise."""
    forward = own_forward(module)
    if forward is None:
        return (module.weight, module.bias) if type(module) is torch.nn.Linear else None
    if isinstance(forward, FixedLinear):
        return forward.weight, forward.bias
    return None


def lora_parts(module) -> tuple[Tensor, Tensor | None, list[tuple[Tensor, Tensor, float]]] | None:
    """(base weight, base bias, [(A, B, scale) per active adapter]) of a peft LoRA linear layer
    whose forward in eval mode is the linear map with weight W + sum scale * B @ A: an nn.Linear
    base, plain LoRA (no DoRA or other variant). Adapters merged into the base, or disabled, give
    no parts. None for any other module."""
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not all(hasattr(module, a) for a in ("lora_A", "lora_B", "scaling")):
        return None
    if getattr(module, "lora_variant", None) or getattr(module, "fan_in_fan_out", False):
        return None
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return base.weight, base.bias, []
    parts = [(module.lora_A[n].weight, module.lora_B[n].weight, float(module.scaling[n]))
             for n in module.active_adapters if n in module.lora_A]
    return base.weight, base.bias, parts


# ------------------------------------------------------------------------ KV cache layers
class RecordingLayer(DynamicLayer):
    """Cache layer for a prompt forward: keeps the layer's keys/values, returns them unchanged.
    Writing the same states again (a checkpointed layer's backward replay) leaves it the same."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.is_initialized = True
        self.keys, self.values = key_states, value_states
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0                                              # nothing precedes the prompt


class PrefixLayer(DynamicLayer):
    """Read-only cache layer: a fixed prefix's keys/values, to which each call appends the new
    states in its return value only. The same input gives the same output every time, so a
    checkpointed layer may replay it in backward."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def recording_cache() -> Cache:
    """A cache whose layers record one forward's keys/values (read them from `.layers`)."""
    return Cache(layer_class_to_replicate=RecordingLayer)


def forget_recorded(cache: Cache) -> None:
    """Drop a recording cache's keys/values once they are read. Under checkpointed layers the
    cache is kept by each layer's replay closure, which the keys' own graph keeps: a cycle through
    autograd's C++ graph that Python's collector cannot see, freed only by a backward through it.
    (A replay records the states again, and the backward then frees them.)"""
    for layer in cache.layers:
        layer.keys = layer.values = None


def prefix_cache(keys_values: list[tuple[Tensor, Tensor]]) -> Cache:
    """A read-only cache holding one (keys, values) pair per layer."""
    return Cache(layers=[PrefixLayer(k, v) for k, v in keys_values])


def full_attention_only(config) -> bool:
    """The model's standard cache is made of plain dynamic layers only (no sliding window, no
    linear attention): the kind `recording_cache` and `prefix_cache` stand in for."""
    kinds = {type(layer) for layer in DynamicCache(config=config).layers}
    return kinds <= {DynamicLayer}


def checkpoints_layers(net) -> bool:
    """The transformers model has activation checkpointing switched on."""
    return bool(getattr(net, "is_activation_checkpointing", False))


def allow_cache_under_checkpointing(layers) -> None:
    """Let checkpointed decoder layers keep a read-only cache (transformers' per-layer flag; the
    states are the same on the backward replay)."""
    for layer in layers:
        layer._can_checkpoint_with_cache = True


def keeps_cache_under_checkpointing(layers) -> bool:
    return all(getattr(m, "_can_checkpoint_with_cache", False) for m in layers)


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into buffers with spare capacity."""

    def reserve(self, extra: int) -> None:
        n = self.keys.shape[-2]
        self._kbuf = self.keys.new_empty(*self.keys.shape[:-2], n + extra, self.keys.shape[-1])
        self._vbuf = self.values.new_empty(*self.values.shape[:-2], n + extra, self.values.shape[-1])
        self._kbuf[..., :n, :] = self.keys
        self._vbuf[..., :n, :] = self.values
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]

    def batch_select_indices(self, indices) -> None:
        n = self.keys.shape[-2]
        self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
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


def reserve(cache, extra: int) -> None:
    """Give every plain dynamic layer of `cache` room for `extra` more positions, so each decoded
    token is written into place instead of re-concatenating the whole cache (O(L^2) copying over
    a completion). The live layers change class; other layer kinds are left as they are."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            layer.__class__ = ReservedLayer
            layer.reserve(extra)


# ------------------------------------------------------------------------ model attributes
def sharded(model) -> bool:
    """Any parameter still a sharded DTensor (FSDP2 outside its gathered scope): each forward then
    gathers every layer's weights with the other processes, so all must run as many forwards."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def drop_quantizer(model) -> None:
    """Forget that a model came from a quantised (GGUF) file once its weights are de-quantised,
    so `save_pretrained` writes plain weights."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def class_name(module) -> str:
    """The class name of `module`, seen through FSDP2's wrapper (`fully_shard` turns a
    LlamaDecoderLayer into an FSDPLlamaDecoderLayer subclass defined in torch.distributed)."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("torch.distributed"):
            return cls.__name__
    return type(module).__name__


def no_split_modules(net) -> set[str]:
    """Class names transformers keeps whole when it splits a model over devices."""
    return set(getattr(net, "_no_split_modules", None) or [])
