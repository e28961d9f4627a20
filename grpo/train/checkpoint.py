"""Checkpoints: everything a run needs to continue exactly where it stopped.

    <output_dir>/checkpoints/step-000010/
        model/               the actor in Hugging Face format (with LoRA: the peft adapter)
        trainer_state.pt     optimizer, scheduler, every RNG, data position, beta, baseline window, step
    <output_dir>/checkpoints/latest   the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder and renamed into place only when complete,
and `latest` is replaced atomically after that: a crash while writing leaves the previous
checkpoint, and the pointer to it, untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..common import atomic_folder
from ..config import ConfigError

STATE = "trainer_state.pt"


def save(out_dir: Path, step: int, actor, tokenizer, state: dict, keep: int, weights: dict | None = None) -> Path:
    """Write checkpoint `step`. `weights`: the actor's whole state dict when the actor itself holds
    only pieces (sharded training); else the actor's own are written."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    with atomic_folder(final, replace=True) as tmp:
        actor.save_pretrained(tmp / "model", state_dict=weights)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / STATE)
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find(resume: str, out_dir: Path | None) -> Path:
    """The checkpoint folder named by --resume (a path, or `latest` in the output dir)."""
    if resume == "latest":
        if out_dir is None:
            raise ConfigError("resume: `latest` needs --output-dir, the run folder to continue")
        pointer = Path(out_dir) / "checkpoints" / "latest"
        if not pointer.exists():
            raise ConfigError(f"resume: no checkpoint in {Path(out_dir) / 'checkpoints'} (no `latest` file)")
        path = pointer.parent / pointer.read_text().strip()
    else:
        path = Path(resume)
    if not (path / STATE).exists() or not (path / "model").is_dir():
        raise ConfigError(f"resume: {path} is not a complete checkpoint (expected {STATE} and model/)")
    return path


def step_of(path: Path) -> int:
    """The step a checkpoint folder holds (from its name, step-NNNNNN; else its state)."""
    name = Path(path).name
    if name.startswith("step-") and name[5:].isdigit():
        return int(name[5:])
    return int(load_state(Path(path))["step"])


def latest(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    pointer = Path(out_dir) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def load_state(path: Path) -> dict:
    return torch.load(path / STATE, weights_only=False)


def load_weights(actor, path: Path) -> None:
    """Put the checkpoint's weights into the already-built actor (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    model_dir = path / "model"
    if hasattr(actor, "peft_config"):
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(actor, load_file(model_dir / "adapter_model.safetensors"))
        return
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = actor.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise ConfigError(f"resume: {model_dir} does not match the model being trained "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint's step (they will be produced again)."""
    import json
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in keep))
