"""The speed and memory levers as one typed settings object (see `Levers`). Imports nothing of the
package: grpo.config re-exports it, and every seam a lever serves reads it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Levers:
    """The speed and memory levers, as the seams they serve read them (grpo/fast plugs them in;
    grpo/train/plug.py wires them). Each is also a `TrainConfig` field of the same name (a flag
    and a YAML key). With every lever off, or without grpo/fast, the plain paths run and a run
    gives the same results within float tolerance (tests/test_levers.py)."""
    lean_decode: bool = True
    few_rows_max: int = 128
    native_kernel: bool = True
    fused_head: bool = True
    head_keep_mb: int = 256
    heap_reuse: bool = True
    heap_trim_every: float = 0.5
    reference_in_file: bool = True
    grad_bucket_mb: float = 32.0

    @classmethod
    def of(cls, cfg) -> "Levers":
        """The levers of a TrainConfig."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def all_off(cls) -> "Levers":
        return cls(lean_decode=False, few_rows_max=0, native_kernel=False, fused_head=False, head_keep_mb=0,
                   heap_reuse=False, heap_trim_every=0.0, reference_in_file=False)


LEVER_FIELDS = tuple(f.name for f in dataclasses.fields(Levers))
