"""Checkpoints: everything a run needs to continue exactly where it stopped, and a record of it.

    <output_dir>/checkpoints/step-000010/
        model/               the actor in Hugging Face format (with LoRA: the peft adapter)
        trainer_state.pt     optimizer, scheduler, every RNG, data position, beta, baseline window, step
        manifest.json        what the folder holds: the step, the run's settings and their hash, and
                             every file's size and SHA-256
    <output_dir>/checkpoints/latest   the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder (its files synced to disk) and renamed into
place only when complete, and `latest` is replaced atomically after that: a crash or a full disk
while writing leaves the previous checkpoint, and the pointer to it, untouched; the hidden folder
is removed by the next save. `--resume` checks the manifest before it trusts a checkpoint (every
file present, of its size and hash; the same LoRA rank and target modules; weights of the model
being trained) and refuses one that fails with the reason; `--resume latest-good` takes the newest
checkpoint that passes instead of refusing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..files import atomic_folder
from ..errors import CheckpointError
from .hardware import unresolved

STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
FORMAT = 1
# Settings that shape what a checkpoint holds: a resume with other values cannot load it.
SHAPING = ("lora_rank", "lora_target_modules")
# Settings a resume may change without comment (how long, where, what is logged).
FREE = {"resume", "max_steps", "output_dir", "save_every", "keep_checkpoints", "eval_size", "eval_every",
        "eval_batch_size", "log_completions", "report_to", "project", "run_name", "save_model", "save_merged",
        "device", "memory_check", "reward_workers", "reward_timeout", "reward_failure"}


# ============================================================================== writing
def save(out_dir: Path, step: int, actor, tokenizer, state: dict, keep: int, weights: dict | None = None,
         config: dict | None = None) -> Path:
    """Write checkpoint `step`. `weights`: the actor's whole state dict when the actor itself holds
    only pieces (sharded training); else the actor's own are written. `config`: the run's settings,
    recorded in the manifest."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for left in root.glob(".tmp-*"):                # a save that was killed part-way
        shutil.rmtree(left, ignore_errors=True)
    final = root / f"step-{step:06d}"
    with atomic_folder(final, replace=True) as tmp:
        try:
            actor.save_pretrained(tmp / "model", state_dict=weights)
            tokenizer.save_pretrained(tmp / "model")
            torch.save(state, tmp / STATE)
            files = describe(tmp)
            manifest = {"format": FORMAT, "step": step, "files": files}
            if config is not None:
                manifest.update(config_hash=config_hash(config), config=config)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            sync(tmp)
        except Exception as e:
            if disk_full(e, tmp):          # torch.save says only "unexpected pos ..." when the disk fills
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp)) from e
            raise
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name + "\n")
    _fsync(pointer)
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        trash = root / f".tmp-old-{old.name}"      # out of sight first: a kill mid-delete leaves no half folder
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def disk_full(e: BaseException, where: Path) -> bool:
    """Whether a failed write failed for want of space (asked before the half-written folder goes)."""
    chain = e
    while chain is not None:
        if getattr(chain, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(chain):
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        return shutil.disk_usage(where).free < 1 << 20
    except OSError:
        return False


def describe(folder: Path) -> dict:
    """{relative path: {"bytes", "sha256"}} of every file under `folder`."""
    out = {}
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        out[f.relative_to(folder).as_posix()] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    return out


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync(folder: Path) -> None:
    """Every file and folder under `folder` on disk before the rename that publishes it."""
    for p in sorted(Path(folder).rglob("*"), key=lambda p: -len(p.parts)):
        _fsync(p)
    _fsync(folder)


# ============================================================================== checking
def _read_manifest(path: Path) -> tuple[dict | None, str | None]:
    """(the manifest or None when there is none, None) or (None, why it cannot be read)."""
    f = Path(path) / MANIFEST
    if not f.exists():
        return None, None
    try:
        return json.loads(f.read_text()), None
    except (OSError, ValueError) as e:
        return None, f"its {MANIFEST} cannot be read ({e})"


def manifest_of(path: Path) -> dict | None:
    """The checkpoint's manifest, or None when it has none (written before manifests existed)."""
    manifest, why = _read_manifest(path)
    if why is not None:
        raise CheckpointError(f"resume: {path} is damaged: {why}")
    return manifest


def problem(path: Path) -> str | None:
    """Why the checkpoint folder cannot be trusted, or None when it can: a file of its manifest
    missing, of another size, or with another SHA-256. A folder without a manifest (an older
    checkpoint) only needs its state file and model folder."""
    path = Path(path)
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file, not a checkpoint folder"
    manifest, why = _read_manifest(path)
    if why is not None:
        return why
    if manifest is None:
        if not (path / STATE).exists() or not (path / "model").is_dir():
            return f"it is not a complete checkpoint (expected {STATE} and model/)"
        return None
    for name, want in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size} bytes, {want['bytes']} when it was written (truncated or overwritten)"
    for name, want in manifest.get("files", {}).items():
        if _sha256(path / name) != want["sha256"]:
            return f"{name} has changed since it was written (its SHA-256 differs: corrupt)"
    return None


def _steps(root: Path) -> list[Path]:
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def find(resume: str, out_dir: Path | None, log: Callable = print) -> Path:
    """The checkpoint folder --resume names, checked: a path, `latest` (the newest in the output
    dir's `latest` pointer) or `latest-good` (the newest that passes its checks, saying which newer
    ones it passed over and why). Raises CheckpointError with the reason for one that fails."""
    if resume in ("latest", "latest-good"):
        if out_dir is None:
            raise CheckpointError(f"resume: `{resume}` needs --output-dir, the run folder to continue")
        root = Path(out_dir) / "checkpoints"
        pointer = root / "latest"
        if not pointer.exists() and not (resume == "latest-good" and _steps(root)):
            raise CheckpointError(f"resume: no checkpoint in {root} (no `latest` file)")
        if resume == "latest":
            path = root / pointer.read_text().strip()
            why = problem(path)
            if why is not None:
                good = next((p for p in _steps(root) if p != path and problem(p) is None), None)
                hint = (f"; --resume latest-good continues from the newest intact one ({good.name})" if good else
                        "; no other checkpoint in that folder is intact")
                raise CheckpointError(f"resume: {path} (named by {pointer}) is damaged: {why}{hint}")
            return path
        passed = []
        for p in _steps(root):
            why = problem(p)
            if why is None:
                for skipped, reason in passed:
                    log(f"resume: passing over {skipped}: {reason}")
                return p
            passed.append((p, why))
        raise CheckpointError(f"resume: no intact checkpoint in {root}: " +
                              "; ".join(f"{p.name}: {why}" for p, why in passed))
    path = Path(resume)
    why = problem(path)
    if why == "it does not exist":
        raise CheckpointError(f"resume: {path} does not exist (expected a checkpoint folder, `latest` or `latest-good`)")
    if why is not None:
        raise CheckpointError(f"resume: {path} is damaged: {why}" if (path / MANIFEST).exists() else
                              f"resume: {path}: {why}")
    return path


def check_compatible(path: Path, cfg, log: Callable = print) -> None:
    """Refuse a checkpoint written with other shaping settings (LoRA rank, target modules); list
    the other settings that changed since it was written."""
    manifest = manifest_of(path)
    if not manifest or "config" not in manifest:
        return
    then = manifest["config"]
    for key in SHAPING:
        if key in then and then[key] != getattr(cfg, key):
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(f"resume: {path} was written with {key} {then[key]}, and this run has {key} "
                                  f"{getattr(cfg, key)}; resume with {flag} {then[key]}, or start a new run "
                                  "(a new --output-dir)")
    now = {k: getattr(cfg, k) for k in then if hasattr(cfg, k)}
    changed = [k for k in then if k not in FREE and k in now and _plain(now[k]) != _plain(then[k])
               and not unresolved(cfg, k)]
    if changed:
        log("resume: settings changed since the checkpoint: " +
            ", ".join(f"{k} {then[k]!r} -> {now[k]!r}" for k in changed[:8]) + (" ..." if len(changed) > 8 else ""))


def _plain(v):
    return json.loads(json.dumps(v, default=str))


# ============================================================================== reading
def step_of(path: Path) -> int:
    """The step a checkpoint folder holds (from its manifest or name, step-NNNNNN; else its state)."""
    manifest = manifest_of(path)
    if manifest and "step" in manifest:
        return int(manifest["step"])
    name = Path(path).name
    if name.startswith("step-") and name[5:].isdigit():
        return int(name[5:])
    return int(load_state(Path(path))["step"])


def latest(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    pointer = Path(out_dir) / "checkpoints" / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def load_state(path: Path) -> dict:
    try:
        return torch.load(path / STATE, weights_only=False)
    except Exception as e:      # a state file of an older checkpoint (no manifest) cut short or damaged
        raise CheckpointError(f"resume: {path / STATE} cannot be read ({type(e).__name__}: {e})") from None


def load_weights(actor, path: Path) -> None:
    """Put the checkpoint's weights into the already-built actor (full model or LoRA adapter),
    refusing weights of another model (other names or shapes) with the first difference."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = path / "model"
    peft = hasattr(actor, "peft_config")
    files = [model_dir / "adapter_model.safetensors"] if peft else sorted(model_dir.glob("*.safetensors"))
    state = {}
    try:
        for f in files:
            state.update(load_file(f))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"resume: {model_dir} cannot be read ({e})") from None
    _check_finite(path, state)
    if peft:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        _same_shapes(path, state, get_peft_model_state_dict(actor))
        set_peft_model_state_dict(actor, state)
        return
    if not state:
        raise CheckpointError(f"resume: {model_dir} holds no weights (no .safetensors file)")
    own = actor.state_dict()
    if "base_model.model" in next(iter(state)) or any(k.endswith("lora_A.weight") for k in state):
        raise CheckpointError(f"resume: {path} holds a LoRA adapter, and this run trains the full model")
    _same_shapes(path, state, own)
    missing, unexpected = actor.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"resume: {path} holds weights of another model (missing "
                              f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")


def first_nonfinite(named) -> tuple[str, int, int] | None:
    """(name, how many values are NaN or infinite, of how many) of the first floating-point tensor
    of `named` ((name, tensor) pairs) that holds any, or None (tensors on the meta device skipped)."""
    for name, tensor in named:
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            return name, int((~torch.isfinite(tensor)).sum()), tensor.numel()
    return None


def _check_finite(path: Path, state: dict) -> None:
    """A CheckpointError naming the first saved weight that holds NaN or infinite values."""
    if bad := first_nonfinite(state.items()):
        name, n, size = bad
        raise CheckpointError(f"resume: {path} has non-finite values in weight {name} ({n} of {size}: "
                              "NaN or infinite); resume from an earlier checkpoint (--resume <its folder>)")


def _same_shapes(path: Path, saved: dict, own: dict) -> None:
    for name, tensor in saved.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"resume: {path} holds weights of another model: {name} is "
                                  f"{tuple(tensor.shape)} there and {tuple(own[name].shape)} in the model being "
                                  "trained")


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint's step (they will be produced again), and a last line
    cut short by a crash."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line) if line else None
        except ValueError:
            continue
        if row is not None and row.get("step", 0) <= last_step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
