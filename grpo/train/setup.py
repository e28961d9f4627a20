"""Setting a run up and writing its results: the output folder, the models (actor, reference,
tokenizer), and the trained model at the end."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig, needs_reference
from ..demo import DEMO_NOTE, RECIPE, ensure_demo_model, recipe_for
from ..models.loading import hf_model, load_model
from ..models.logprobs import allow_prefix_under_checkpointing
from ..models.lora import add_lora
from ..models.reference import Reference
from .hardware import resolve_precision


def make_output_dir(cfg: TrainConfig, resuming: bool = False) -> Path:
    if cfg.output_dir:
        out = Path(cfg.output_dir)
    else:
        out = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.preset}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a folder; choose a new --output-dir")
    if (out / "metrics.jsonl").exists() and not resuming:
        hint = ("continue it with --resume latest" if (out / "checkpoints" / "latest").exists() else
                "it has no checkpoint to continue from")
        raise ConfigError(f"output_dir: {out} already holds a run (metrics.jsonl; {hint}); choose a new --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir: cannot create {out}: {e.strerror or e}") from None
    return out


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
        if cfg.model:
            model_path = cfg.model
        else:
            recipe = recipe_for(cfg)
            model_path = ensure_demo_model(recipe, log=log)
            if recipe is RECIPE:
                log(DEMO_NOTE.format(preset=cfg.preset))
        actor, tokenizer = load_model(model_path, device, cfg.gguf_file, mmap=not shard)
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


def given_model(model, tokenizer, device, log=print):
    """A model object handed in from Python, checked, in fp32 on `device` (the trainer keeps fp32
    master weights), with its tokenizer (loaded from the model's name_or_path when not given)."""
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "generate", None)) \
            or getattr(model, "config", None) is None:
        raise ConfigError(f"model: expected a transformers causal language model (AutoModelForCausalLM), a model "
                          f"folder or a hub id, got {type(model).__name__}")
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
    actor.save_pretrained(out / "model", state_dict=weights)
    tokenizer.save_pretrained(out / "model")
    summary["model_dir"] = str(out / "model")
    if cfg.lora_rank and cfg.save_merged:
        if weights is None:
            merged = actor.merge_and_unload()
        else:                     # the sharded actor cannot merge in place: base + saved adapter, afresh
            from peft import PeftModel
            base, _ = load_model(model_path, torch.device("cpu"), cfg.gguf_file)
            merged = PeftModel.from_pretrained(base, out / "model").merge_and_unload()
        merged.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        summary["merged_dir"] = str(out / "merged")
