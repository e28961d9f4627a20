"""The LM head's log-probs and entropy in one autograd function (`HeadLogProb`), chunked with a
budget of softmaxes kept from forward to backward (`FusedHead`). Same values and gradients as
the plain chunked log-softmax of grpo/models/logprobs.py (tests/test_rollout.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..algo.losses import upcast
from ..compat import own_forward
from ..models.loading import hf_model


class HeadLogProb(torch.autograd.Function):
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
        logits = upcast(torch.nn.functional.linear(h, weight, bias))
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
            grad = upcast(torch.nn.functional.linear(h, weight, bias))
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


class FusedHead:
    """token_stats' `head`: `HeadLogProb` over chunks of rows, keeping the softmax of the first
    chunks, up to `keep_bytes` in all, from forward to backward instead of recomputing it."""

    def __init__(self, keep_bytes: int = 256 * 2 ** 20):
        self.keep_bytes = keep_bytes

    def module_for(self, model):
        """The model's LM head if this applies: a plain nn.Linear with its own forward, no logit
        soft-capping, outside autocast (backward would not recompute the same logits). Else None."""
        net = hf_model(model)
        head = net.get_output_embeddings()
        if (type(head) is not torch.nn.Linear or own_forward(head) is not None
                or getattr(net.config, "final_logit_softcapping", None)):
            return None
        if torch.is_autocast_enabled(head.weight.device.type):
            return None
        return head

    def __call__(self, h: Tensor, head, targets: Tensor, temperature: float, chunk: int) -> tuple[Tensor, Tensor]:
        """(logp (M,), entropy (M,)) of rows `h` (M, H) at `targets` (M,)."""
        budget = self.keep_bytes
        # bytes per kept row: the softmax in the upcast dtype
        row_bytes = head.weight.shape[0] * torch.promote_types(head.weight.dtype, torch.float32).itemsize
        grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
        logps, ents = [], []
        for s in range(0, h.shape[0], chunk):
            h_c = h[s:s + chunk]
            size = h_c.shape[0] * row_bytes
            keep = grad and size <= budget
            budget -= size if keep else 0
            logp, ent = HeadLogProb.apply(h_c, head.weight, head.bias, targets[s:s + chunk], 1.0 / temperature, keep)
            logps.append(logp)
            ents.append(ent)
        if not logps:
            return h.new_zeros(0), h.new_zeros(0)
        return torch.cat(logps), torch.cat(ents)
