"""Loading a causal language model and its tokenizer: Hugging Face folders, `.gguf` files
(de-quantised to fp32 once, then cached as a safetensors folder), or hub ids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..files import atomic_folder, cache_root
from ..compat import drop_quantizer
from ..config import ConfigError


def hf_model(model):
    """The transformers model inside a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _split_gguf(path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """`dir/model.gguf` -> (`dir`, `model.gguf`); a folder plus --gguf-file stays as given."""
    if gguf_file is None and path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, gguf_file


def gguf_cache(folder: str, gguf_file: str) -> Path:
    """Where the de-quantised copy of a GGUF file is kept (keyed by its path, size and time)."""
    f = Path(folder) / gguf_file
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / f"gguf-{f.stem}-{key}"


def _dequantised(folder: str, gguf_file: str) -> str:
    """The cached safetensors folder of a GGUF file, written on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cached = gguf_cache(folder, gguf_file)
    if not (cached / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        drop_quantizer(model)                # the weights are fp32 already: save them as such
        with atomic_folder(cached) as tmp:    # a rank beside this one may be first: theirs is kept
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return str(cached)


def load_model(path: str | Path, device: torch.device, gguf_file: str | None = None, mmap: bool = True):
    """Actor and tokenizer from a Hugging Face folder, a .gguf file, or a hub id when a hub is
    reachable.

    With `mmap` (transformers' default) CPU weights are views of the mapped safetensors file, and
    one tensor still in use keeps the whole file's touched pages resident; sharded training
    replaces most weights by their pieces, so it reads the file into memory instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.expanduser(str(path))
    folder, gguf_file = _split_gguf(path, gguf_file)
    looks_local = path.startswith((".", "/")) or path.endswith(".gguf")   # otherwise it may be a hub id
    wanted = os.path.join(folder, gguf_file) if gguf_file else path
    if looks_local and not os.path.exists(wanted):
        raise ConfigError(f"model: {wanted} does not exist (expected a Hugging Face model folder, a .gguf file, "
                          "or a hub id)")
    if not gguf_file and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        raise ConfigError(f"model: {folder} has no config.json (expected a Hugging Face model folder, as "
                          "save_pretrained writes it: config.json, the weights, the tokenizer's files)")
    if not gguf_file:
        _check_architecture(folder)
    try:
        source = _dequantised(folder, gguf_file) if gguf_file else folder
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, disable_mmap=not mmap,
                                                           output_loading_info=True)
    except (OSError, ValueError, FileNotFoundError) as e:
        where = f"{folder}/{gguf_file}" if gguf_file else folder
        raise ConfigError(f"model: cannot load a causal language model from {where!r}: {e}") from None
    except RuntimeError as e:
        if "mismatched_sizes" not in str(e) and "size mismatch" not in str(e):
            raise
        raise ConfigError(f"model: the weights in {folder} do not fit its config.json: some have other shapes "
                          "than the config describes (transformers' report above lists them)") from None
    except SafetensorError as e:
        files = sorted(str(f) for f in Path(folder).glob("*.safetensors")) if os.path.isdir(folder) else [folder]
        raise ConfigError(f"model: a weights file in {folder!r} is truncated or corrupt ({', '.join(files)}): "
                          f"{e}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight")]
    if missing:
        raise ConfigError(f"model: the weights in {folder} do not fit its config.json ({model.config.model_type}): "
                          f"{len(missing)} weights are missing, e.g. {', '.join(sorted(missing)[:3])}")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model: the tokenizer of {folder} has no end-of-sequence token (eos_token), so no "
                          "completion could end; set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


_CAUSAL = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _check_architecture(folder: str) -> None:
    """A local config.json that names an architecture which is not a causal LM (BertModel, a
    sequence classifier) is refused by name, before its weights are read."""
    import json
    conf = os.path.join(folder, "config.json")
    if not os.path.isfile(conf):
        return
    try:
        values = json.loads(Path(conf).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model: {conf} is not valid JSON ({e})") from None
    names = values.get("architectures") or []
    if names and not any(n.endswith(_CAUSAL) for n in names):
        raise ConfigError(f"model: {folder} is a {names[0]} (model_type {values.get('model_type')!r}), not a causal "
                          f"language model (expected an architecture ending in {', '.join(_CAUSAL)})")
