"""Checkpoints and exact resume: a run that crashes after a checkpoint and is resumed logs the
same metrics rows, step for step, as a run that never stopped (timing fields aside)."""

from __future__ import annotations

import json
import os
import zlib

import pytest
import torch

from grpo.data import tasks as tasks_mod
from grpo.train import checkpoint
from grpo.train import loop as train_mod
from grpo.config import ConfigError
from grpo.train import train


def crc_reward(prompts, completions, **_):
    return [(zlib.crc32(c.encode()) % 97) / 96 for c in completions]


@pytest.fixture(autouse=True)
def _dense_task(monkeypatch):
    base = tasks_mod.arithmetic()
    monkeypatch.setitem(tasks_mod.TASKS, "dense", lambda: tasks_mod.Task(
        name="dense", train_size=base.train_size, heldout_size=base.heldout_size, row=base.row,
        rewards={"crc": crc_reward}))


def rows(out) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in lines]


# deepseekmath has every piece of state in play: a reference, Adam moments, the sampling and
# data RNGs; updates_per_batch/minibatches add the shuffle RNG; the window baseline its history
@pytest.mark.parametrize("extra", [
    dict(preset="deepseekmath", updates_per_batch=2, minibatches=2),
    dict(preset="seed", baseline="window", kl_target=0.01),
    # an environment's multi-turn episodes (each episode's generator seeded by step and index)
    dict(preset="deepseekmath", env=f"{os.path.dirname(__file__)}/dist_worker.py:TwoTurns", env_max_turns=2,
         env_max_tokens=16),
])
@pytest.mark.slow
def test_crash_then_resume_equals_uninterrupted(tiny_config, monkeypatch, tmp_path, extra):
    common = dict(task="dense", max_steps=6, save_every=2, lr=1e-2, eval_size=4, **extra)
    whole = tiny_config(**common, output_dir=str(tmp_path / "whole"))
    train(whole, log=lambda *a: None)

    crashed = tiny_config(**common, output_dir=str(tmp_path / "crashed"))
    real_step = train_mod.train_step

    def crash_at_5(run, st):
        if st.step == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_step(run, st)

    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "train_step", crash_at_5)
        with pytest.raises(KeyboardInterrupt):
            train(crashed, log=lambda *a: None)
    out = tmp_path / "crashed"
    assert len(rows(out)) == 4                                  # steps 1-4 logged; checkpoint at step 4
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"

    resumed = tiny_config(**common, output_dir=str(out), resume="latest")
    summary = train(resumed, log=lambda *a: None)
    assert rows(out) == rows(tmp_path / "whole")
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4, 5, 6]
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["eval_before"] == whole_summary["eval_before"]
    assert summary["eval_after"] == whole_summary["eval_after"]


def test_checkpoints_are_pruned_and_loadable(tiny_config, tmp_path):
    from transformers import AutoModelForCausalLM
    cfg = tiny_config(task="dense", max_steps=5, save_every=1, keep_checkpoints=2, eval_size=0,
                      output_dir=str(tmp_path / "run"))
    train(cfg, log=lambda *a: None)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000005"]
    model = AutoModelForCausalLM.from_pretrained(root / "step-000005" / "model")
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    for (n, a), (_, b) in zip(model.named_parameters(), final.named_parameters()):
        assert torch.equal(a, b), n


def test_interrupted_write_leaves_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config(task="dense", max_steps=2, save_every=1, eval_size=0, output_dir=str(tmp_path / "run"))
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        if "step-000002" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        train(cfg, log=lambda *a: None)
    root = tmp_path / "run" / "checkpoints"
    assert checkpoint.find("latest", tmp_path / "run") == root / "step-000001"
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []   # no half-written folder
    assert not os.path.exists(root / "step-000002")


def test_resume_errors_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint in"):
        checkpoint.find("latest", tmp_path)
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        checkpoint.find(str(tmp_path), None)
    with pytest.raises(ConfigError, match="needs --output-dir"):
        checkpoint.find("latest", None)
