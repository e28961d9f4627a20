"""Loading a causal language model and its tokenizer: Hugging Face folders, `.gguf` files
(de-quantised to fp32 once, then cached as a safetensors folder), or hub ids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..common import atomic_folder, cache_root
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
    if looks_local and not os.path.exists(os.path.join(folder, gguf_file or "")):
        raise ConfigError(f"model: {path} does not exist (expected a Hugging Face model folder, a .gguf file, "
                          "or a hub id)")
    try:
        source = _dequantised(folder, gguf_file) if gguf_file else folder
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, disable_mmap=not mmap)
    except (OSError, ValueError, FileNotFoundError) as e:
        where = f"{folder}/{gguf_file}" if gguf_file else folder
        raise ConfigError(f"model: cannot load a causal language model from {where!r}: {e}") from None
    except SafetensorError as e:
        files = sorted(str(f) for f in Path(folder).glob("*.safetensors")) if os.path.isdir(folder) else [folder]
        raise ConfigError(f"model: a weights file in {folder!r} is truncated or corrupt ({', '.join(files)}): "
                          f"{e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer
