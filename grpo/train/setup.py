"""Setting a run up and writing its results: the output folder, the models (actor, reference,
tokenizer), and the trained model at the end."""

from __future__ import annotations

import contextlib
import errno
from datetime import datetime
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig, needs_reference
from ..demo import DEMO_NOTE, RECIPE, model_for, recipe_for
from ..models.loading import hf_model, load_model
from ..models.logprobs import allow_prefix_under_checkpointing
from ..models.lora import add_lora
from ..models.reference import Reference
from .checkpoint import first_nonfinite
from .hardware import resolve_precision


def make_output_dir(cfg: TrainConfig, resuming: bool = False) -> tuple[Path, "FolderLock"]:
    """The run's folder, created, and its lock (held for the run's life: one run per folder)."""
    if cfg.output_dir:
        out = Path(cfg.output_dir)
    else:
        out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.preset}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a folder; choose a new --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir: cannot create {out}: {e.strerror or e}") from None
    lock = FolderLock(out)
    try:
        if (out / "metrics.jsonl").exists() and not resuming:
            hint = ("continue it with --resume latest" if (out / "checkpoints" / "latest").exists() else
                    "it has no checkpoint to continue from")
            raise ConfigError(f"output_dir: {out} already holds a run (metrics.jsonl; {hint}); choose a new "
                              "--output-dir")
    except BaseException:
        lock.release()
        raise
    return out, lock


class FolderLock:
    """An exclusive lock on a run folder (flock on <out>/.grpo.lock, which also names the holder).
    The kernel releases it however the holder ends, kill -9 included, so no stale lock outlives a
    run; a second run on the folder is refused at once, naming the holder."""

    NAME = ".grpo.lock"

    def __init__(self, out: Path):
        import fcntl
        import os
        import socket
        self.path = out / self.NAME
        try:
            self.fh = open(self.path, "a+")
        except OSError as e:
            raise ConfigError(f"output_dir: cannot write in {out}: {e.strerror or e}; choose a writable "
                              "--output-dir") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise ConfigError(f"output_dir: {out} is in use by another run ({holder}); wait for it to end or "
                              "choose another --output-dir") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"process {os.getpid()} on {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        self.fh.flush()

    def release(self) -> None:
        if not self.fh.closed:
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.close()            # closing drops the lock


def build_models(cfg: TrainConfig, device, log=print, spill=None, shard: bool = False, model=None, tokenizer=None):
    """Actor, reference (a models.reference.Reference, or None), tokenizer and the model path, as
    the config asks. `spill`: how a full fine-tune's frozen reference keeps its weights out of
    memory (None: in memory). `shard`: the models will be sharded (weights read into memory, not
    mapped: see load_model). `model` (and `tokenizer`): a model the caller loaded, trained in
    place of --model."""
    if model is not None:
        actor, tokenizer = given_model(model, tokenizer, device, log)
        model_path = cfg.model or getattr(model, "name_or_path", None) or type(model).__name__
    else:
        model_path = model_for(cfg, log=log)
        if not cfg.model and recipe_for(cfg) is RECIPE:
            log(DEMO_NOTE.format(preset=cfg.preset))
        actor, tokenizer = load_model(model_path, device, cfg.gguf_file, mmap=not shard)
    check_finite(actor, model_path)
    chosen = resolve_precision(cfg, device, sum(p.numel() for p in actor.parameters()), sharded=cfg.fsdp)
    if chosen:
        log(chosen)
    if cfg.lora_rank:
        actor = add_lora(actor, cfg)
        ref = Reference.adapter_disabled(actor) if needs_reference(cfg) else None   # no second copy
    else:
        ref = Reference.frozen_copy(actor, spill) if needs_reference(cfg) else None
    if cfg.gradient_checkpointing:
        checkpoint_activations(actor)
    return actor, ref, tokenizer, model_path


def check_finite(model, source) -> None:
    """A ConfigError naming the first weight that holds NaN or infinite values (a damaged file or a
    diverged checkpoint would otherwise sample garbage token ids and fail far from the cause)."""
    if bad := first_nonfinite(model.named_parameters()):
        name, n, size = bad
        raise ConfigError(f"model: {source} has non-finite values in weight {name} ({n} of {size}: NaN or "
                          "infinite); the file is damaged or the model diverged: load an earlier checkpoint")


def check_model_object(model) -> None:
    """A ConfigError unless `model` is a transformers model that generates (a causal LM)."""
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "generate", None)) \
            or getattr(model, "config", None) is None:
        raise ConfigError(f"model: expected a transformers causal language model (AutoModelForCausalLM), a model "
                          f"folder or a hub id, got {type(model).__name__}")


def tokenizer_for(model, tokenizer=None):
    """`tokenizer`, or the one loaded from the model's name_or_path, checked (an end-of-sequence
    token) and given a padding token (the end-of-sequence one) where it has none."""
    if tokenizer is None:
        from transformers import AutoTokenizer
        source = getattr(model, "name_or_path", None)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"model: no tokenizer was given and none loads from the model's name_or_path "
                              f"{source!r} ({e}); pass the tokenizer too") from None
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ConfigError("tokenizer: it has no end-of-sequence token (eos_token), so no completion could end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def given_model(model, tokenizer, device, log=print):
    """A model object handed in from Python, checked (its weights' values are checked by
    build_models, as every model's), in fp32 on `device` (the trainer keeps fp32 master weights),
    with its tokenizer (loaded from the model's name_or_path when not given)."""
    check_model_object(model)
    tokenizer = tokenizer_for(model, tokenizer)
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        log(f"model: its weights are {next(p.dtype for p in model.parameters() if p.dtype != torch.float32)}; "
            "converted to fp32 master weights (bf16 runs through autocast and the bf16 settings)")
        model = model.float()
    return model.to(device), tokenizer


def checkpoint_activations(actor) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them."""
    hf_model(actor).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    allow_prefix_under_checkpointing(actor)


def save_final(cfg, actor, tokenizer, out: Path, summary: dict, weights: dict | None = None,
               model_path=None) -> None:
    """The trained model (with LoRA: the adapter, peft format) in <out>/model, and with
    `save_merged` the merged model in <out>/merged. `weights`: the whole state dict of a sharded
    actor."""
    with _final_folder(out / "model", out) as tmp:
        actor.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
    summary["model_dir"] = str(out / "model")
    if cfg.lora_rank and cfg.save_merged:
        if weights is None:
            merged = actor.merge_and_unload()
        else:                     # the sharded actor cannot merge in place: base + saved adapter, afresh
            from peft import PeftModel
            base, _ = load_model(model_path, torch.device("cpu"), cfg.gguf_file)
            merged = PeftModel.from_pretrained(base, out / "model").merge_and_unload()
        with _final_folder(out / "merged", out) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        summary["merged_dir"] = str(out / "merged")


@contextlib.contextmanager
def _final_folder(final: Path, out: Path):
    """A trained model's folder written as a checkpoint is: into a hidden folder, synced, then
    renamed into place (an earlier `final` replaced), so a crash or a full disk never leaves a
    folder with a config and no weights; a full disk is one line that says what was kept."""
    from ..files import atomic_folder
    from ..errors import CheckpointError
    from . import checkpoint
    try:
        with atomic_folder(final, replace=True) as tmp:
            yield tmp
            checkpoint.sync(tmp)
    except Exception as e:                  # safetensors reports a full disk as its own error
        if checkpoint.disk_full(e, out):
            raise CheckpointError(f"save: no space left on the device for {final}; nothing of it was kept; "
                                  f"{_kept(out)}") from None
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise CheckpointError(f"save: cannot write {final} ({e.strerror}); {_kept(out)}") from None
        raise


def _kept(out: Path) -> str:
    from . import checkpoint
    last = checkpoint.latest(out)
    return (f"the last checkpoint, {last}, is intact: free some space, then continue with --resume latest (or "
            f"load its model/ folder)" if last else "the run had no checkpoint (--save-every N keeps some)")
