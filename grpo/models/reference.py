"""The reference policy pi_ref, and the memory it holds.

Two kinds, one interface:
  * under LoRA, the actor itself with its adapter switched off: the base weights are held once;
  * in full fine-tuning, a frozen copy of the actor, its weights in memory or, when the run gives
    a `spill` function (grpo/fast's file-backed weights, CPU only), in a file mapped into memory
    and resident only while it runs.
`release()` lets go of whatever the reference can drop between uses (the mapped pages); the
training phases call it after each phase that read the reference.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from .loading import hf_model


class Reference:
    """`Reference.adapter_disabled(peft_actor)` or `Reference.frozen_copy(actor, spill)`."""

    def __init__(self, model, adapter_off: bool, spilled=None, spill=None):
        self.model = model                     # the module whose forward is pi_ref (inside `scope`)
        self.adapter_off = adapter_off
        self.spilled = spilled                 # a handle with release(), or None
        self.spill = spill                     # how the weights were moved to a file (refresh redoes it)

    @classmethod
    def adapter_disabled(cls, peft_model) -> "Reference":
        return cls(peft_model, adapter_off=True)

    @classmethod
    def frozen_copy(cls, model, spill=None) -> "Reference":
        """A copy of `model` with gradients off. `spill(module)` moves its weights elsewhere and
        returns a handle with `release()`; an OSError from it leaves them in memory, with a warning."""
        ref = copy.deepcopy(model)
        ref.eval()
        ref.requires_grad_(False)
        spilled = None
        if spill is not None and all(t.device.type == "cpu" for t in ref.state_dict().values()):
            try:
                spilled = spill(ref)
            except OSError as e:                  # a full disk, a folder that cannot map: stay in memory
                warnings.warn(f"reference_in_file: cannot keep the reference's weights in a file ({e}); "
                              "they stay in memory", stacklevel=2)
        return cls(ref, adapter_off=False, spilled=spilled, spill=spill if spilled is not None else None)

    @torch.no_grad()
    def refresh(self, actor, alpha: float) -> None:
        """TR-DPO's soft update: ref <- alpha * actor + (1 - alpha) * ref, parameter by parameter.
        A file-backed copy is written to a new file (its mapping is private: an in-place change
        would be lost at the next release)."""
        if self.adapter_off:
            raise ValueError("a LoRA run's reference is the actor's own base weights; it cannot be refreshed")
        for mine, theirs in zip(self.model.parameters(), actor.parameters()):
            mine.mul_(1.0 - alpha).add_(theirs.detach().to(mine.dtype), alpha=alpha)
        if self.spilled is not None:
            self.spilled = self.spill(self.model)

    def weights(self) -> dict:
        """The copy's parameters by name (for a checkpoint of a refreshed reference)."""
        return {k: v.detach().clone() for k, v in self.model.named_parameters()}

    @torch.no_grad()
    def load_weights(self, weights: dict) -> None:
        """Put a checkpoint's refreshed reference back (names as `weights()` gives them)."""
        own = dict(self.model.named_parameters())
        if set(own) != set(weights):
            raise ValueError(f"the checkpoint's reference has {len(weights)} tensors, this model {len(own)}")
        for k, v in weights.items():
            own[k].copy_(v)
        if self.spilled is not None:
            self.spilled = self.spill(self.model)

    @property
    def shares_actor(self) -> bool:
        """The reference is the actor's own weights (LoRA): nothing of its own to shard or save."""
        return self.adapter_off

    @contextlib.contextmanager
    def scope(self):
        """Inside: the transformers model that computes pi_ref, gradients off."""
        off = self.model.disable_adapter() if self.adapter_off else contextlib.nullcontext()
        with torch.no_grad(), off:
            yield hf_model(self.model)

    def release(self) -> None:
        """Drop what can be read back on the next use (a file-backed copy's resident pages)."""
        if self.spilled is not None:
            self.spilled.release()
