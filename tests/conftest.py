"""Shared fixtures: a tiny random Hugging Face model (nothing downloaded) and configs for it."""

from __future__ import annotations

import pytest

from grpo import demo
from grpo.config import TrainConfig, resolve

# The demo's architecture and character tokenizer, shrunk to ~21k parameters.
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}

# Sizes that make a training step take a fraction of a second on a CPU.
TINY_RUN = dict(max_steps=2, prompts_per_step=2, group_size=4, max_new_tokens=6, eval_size=8,
                eval_batch_size=8, lr=1e-3, device="cpu", log_completions=2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder of a randomly initialised tiny Llama and its tokenizer (save_pretrained)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tok = demo.build_tokenizer()
    model = demo.build_model(tok, {**demo.RECIPE, **TINY})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir, tmp_path_factory):
    """tiny_config(**overrides) -> TrainConfig for the tiny model, in a fresh output folder.

    The values go through `resolve` as command-line overrides, so they are validated."""

    def make(**overrides) -> TrainConfig:
        values = {"model": str(tiny_model_dir), **TINY_RUN, **overrides}
        values["output_dir"] = values.get("output_dir") or str(tmp_path_factory.mktemp("run"))
        return resolve(overrides=values)

    return make
