"""Sharded training (`--fsdp`): FSDP2's `fully_shard` on every decoder layer.

With N processes, each decoder layer of the actor (and of a full fine-tune's reference) becomes
an FSDP unit: its weights, their gradients and their AdamW moments are cut into N pieces, one per
process, and the whole layer is gathered only while it runs. The rest of the model (embeddings,
final norm, LM head) stays whole on every process: the trainer calls those modules directly,
outside any layer, and their gradients are summed over processes like data-parallel ones
(`World.sum_grads` skips the sharded parameters). Everything else is as in data parallelism
(world.py): the same global batch, the same sums, so N sharded processes compute what one
process computes.

  * Gradients: FSDP reduce-scatters each layer's gradients as a sum (divide factor 1), the same
    sum over processes the data-parallel path takes; the global norm for clipping adds the
    sharded pieces' squares over processes (`clip_grad_norm`).
  * Sampling and evaluation gather every layer once (`gathered`) and release them after, instead
    of gathering each layer again for every generated token.
  * Checkpoints and the saved model hold whole tensors (`full_state_dict`, `full_optimizer_state`),
    in the same layout as an unsharded run's: a run resumes with or without `--fsdp`, with any
    number of processes.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from .. import compat
from ..config import ConfigError
from ..models.loading import hf_model


def _dtensor():
    from torch.distributed.tensor import DTensor
    return DTensor


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, _dtensor())


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's decoder layers: the module classes transformers keeps whole when it splits a
    model over devices (`_no_split_modules`), else the decoder's `layers`."""
    net = hf_model(model)
    names = compat.no_split_modules(net)
    layers = [m for m in net.modules() if type(m).__name__ in names]
    if not layers:
        layers = list(getattr(net.get_decoder(), "layers", []))
    if not layers:
        raise ValueError(f"fsdp: cannot find the decoder layers of {type(net).__name__}")
    return layers


def shard(model, device: torch.device, world_size: int) -> list:
    """Shard every decoder layer of `model` over the default process group; the FSDP modules.

    The decoder around the layers becomes the FSDP root, managing none of its own weights (the
    embeddings and final norm stay whole: they are `ignored_params`): one root schedules all
    layers' gathers and gradient reductions, so a single reduction buffer is in flight at a time.
    Separate roots per layer would each keep their last buffer until the end of backward."""
    from torch.distributed.device_mesh import init_device_mesh
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        FSDPModule = None
    if FSDPModule is None or not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        raise ConfigError(f"fsdp: torch {torch.__version__} lacks the FSDP2 interface this needs "
                          "(fully_shard, set_force_sum_reduction_for_comms); install a newer torch or drop --fsdp")

    mesh = init_device_mesh(device.type, (world_size,))
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    decoder = hf_model(model).get_decoder()
    inside = {id(p) for layer in layers for p in layer.parameters()}
    if {id(layer) for layer in layers} <= {id(m) for m in decoder.modules()}:
        fully_shard(decoder, mesh=mesh, ignored_params={p for p in decoder.parameters() if id(p) not in inside})
    units = units_of(model)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)          # a sum over processes, as data parallelism takes,
        unit.set_force_sum_reduction_for_comms(True)  # as a plain SUM (gloo has no pre-scaled sum)
    return units


def units_of(model) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in hf_model(model).modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model):
    """Inside: every FSDP unit of `model` holds its whole weights (gathered once, on every
    process) and keeps them through any number of forward passes; released on exit. Every process
    must enter; inside, a forward pass needs no other process (rank 0 may evaluate alone)."""
    units = units_of(model)
    for u in units:
        u.unshard()
        u.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for u in units:
            u.set_reshard_after_forward(True, recurse=False)
            u.reshard()


def full_state_dict(model) -> dict[str, Tensor]:
    """`model.state_dict()` with every sharded tensor gathered whole (every process must call)."""
    return {k: v.full_tensor() if is_sharded(v) else v for k, v in model.state_dict().items()}


def param_groups(params: list) -> list[dict]:
    """AdamW's parameter groups for a sharded actor: the sharded parameters, then the whole ones
    (a fused step takes one kind of tensor at a time). Same settings for both."""
    groups = [[p for p in params if is_sharded(p)], [p for p in params if not is_sharded(p)]]
    return [{"params": g} for g in groups if g]


def full_optimizer_state(opt: torch.optim.Optimizer, params: list) -> dict:
    """`opt.state_dict()` in the layout of an unsharded run's optimizer: one group over `params`
    (the trainable parameters in model order), every sharded moment gathered whole. Every
    process must call."""
    sd = opt.state_dict()
    flat = [p for g in opt.param_groups for p in g["params"]]
    where = {id(p): i for i, p in enumerate(params)}
    state = {where[id(flat[j])]: {k: v.full_tensor() if is_sharded(v) else v for k, v in s.items()}
             for j, s in sd["state"].items()}
    group = {k: v for k, v in sd["param_groups"][0].items() if k != "params"}
    return {"state": dict(sorted(state.items())), "param_groups": [{**group, "params": list(range(len(params)))}]}


def shard_optimizer_state(opt: torch.optim.Optimizer, params: list, sd: dict) -> dict:
    """The inverse of `full_optimizer_state`: a one-group state over `params` (model order), cut
    to this process's pieces and laid out in `opt`'s groups, ready for `opt.load_state_dict`. The
    pieces are taken locally: every process reads the whole file."""
    from torch.distributed.tensor import distribute_tensor

    if len(sd["param_groups"]) != 1 or len(sd["param_groups"][0]["params"]) != len(params):
        raise ValueError("optimizer state: expected one group over the model's trainable parameters")
    where = {id(p): i for i, p in enumerate(params)}
    hyper = {k: v for k, v in sd["param_groups"][0].items() if k != "params"}
    state, groups, j = {}, [], 0
    for g in opt.param_groups:
        ids = []
        for p in g["params"]:
            s = sd["state"].get(where[id(p)])
            if s is not None:
                state[j] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                            if is_sharded(p) and isinstance(v, Tensor) and v.shape == p.shape else v
                            for k, v in s.items()}
            ids.append(j)
            j += 1
        groups.append({**hyper, "params": ids})
    return {"state": state, "param_groups": groups}


def fit_scheduler_state(sd: dict, n_groups: int) -> dict:
    """A learning-rate scheduler's state for `n_groups` parameter groups, from one saved for any
    number of groups with the same settings (the per-group lists hold one repeated value)."""
    out = dict(sd)
    for k, v in sd.items():
        if isinstance(v, list) and v and len(v) != n_groups and all(x == v[0] for x in v):
            out[k] = [v[0]] * n_groups
    return out


def clip_grad_norm(params, max_norm: float, world) -> Tensor:
    """Clip the gradients of `params` (sharded or whole) by their global 2-norm; the norm.
    Sharded pieces' squares are summed over processes; whole gradients are the same on every
    process and counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() for g in grads if is_sharded(g)]
    whole = [g for g in grads if not is_sharded(g)]
    dev = grads[0].device if grads else torch.device("cpu")
    sq = torch.zeros((), dtype=torch.float64, device=dev)
    for g in local:
        sq += g.double().pow(2).sum()
    sq = world.sum(sq.to(world.device)).to(dev)
    for g in whole:
        sq += g.double().pow(2).sum()
    norm = sq.sqrt().float()
    if max_norm and math.isfinite(max_norm):
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            (g.to_local() if is_sharded(g) else g).mul_(coef.to(g.device))
    return norm


def with_stand_ins(parts: list[Tensor], total: int, device):
    """(micro-batch, stand_in) pairs: `parts`, then stand-ins up to `total`. Sharded layers reduce
    their gradients in every backward, so every process must run as many micro-batches as the one
    with the most (`total`); a stand-in is one sequence whose loss is to be multiplied by 0."""
    for micro in parts:
        yield micro, False
    for _ in range(total - len(parts)):
        yield torch.zeros(1, dtype=torch.long, device=device), True
