"""The speed and memory levers (grpo.config.Levers, plugged in by grpo/train/plug.py): each one
off, all of them off, and grpo/fast missing altogether, a run trains and logs what the run with
every lever on logs, within float tolerance."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from rows import assert_rows_match

from grpo.config import FIELDS, LEVER_FIELDS, Levers, resolve
from grpo.data import tasks as tasks_mod
from grpo.rollout import HFEngine, StaticEngine
from grpo.train import train
from grpo.train.plug import plug

HERE = Path(__file__).parent
COMPARED = ("loss", "policy_loss", "kl", "entropy", "reward/mean", "length/mean", "grad_norm", "ratio/mean")
LEVERS_OFF = {f.name: getattr(Levers.all_off(), f.name) for f in dataclasses.fields(Levers)}


def crc(prompts, completions, **_):
    return [(zlib.crc32(c.encode()) % 97) / 96 for c in completions]


def dense_task() -> tasks_mod.Task:
    """The arithmetic prompts with a dense reward, so a tiny random model gets non-zero advantages."""
    base = tasks_mod.arithmetic()
    return tasks_mod.Task(name="dense", train_size=base.train_size, heldout_size=base.heldout_size, row=base.row,
                          rewards={"crc": crc})


@pytest.fixture(autouse=True)
def _dense_task(monkeypatch):
    monkeypatch.setitem(tasks_mod.TASKS, "dense", dense_task)


def metrics(cfg) -> list[dict]:
    return [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: list[dict], b: list[dict], what: str) -> None:
    assert_rows_match(a, b, COMPARED, what, rel=1e-4)


RUNS = {   # a full fine-tune with a (file-backed) reference, and LoRA with the adapter-disabled one
    "full": dict(preset="deepseekmath", task="dense", max_steps=3, eval_size=4, save_model=False, lr=1e-2,
                 prompts_per_step=4, group_size=4, max_new_tokens=8),
    "lora": dict(preset="seed", task="dense", lora_rank=4, max_steps=3, eval_size=4, save_model=False, lr=5e-2,
                 prompts_per_step=4, group_size=4, max_new_tokens=8),
}


@pytest.fixture(scope="module")
def all_on(tiny_config):
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tasks_mod.TASKS, "dense", dense_task)
        for name, kw in RUNS.items():
            cfg = tiny_config(**kw)
            train(cfg, log=lambda *a: None)
            out[name] = metrics(cfg)
    return out


def test_levers_are_config_fields_with_the_same_defaults():
    assert set(LEVER_FIELDS) <= set(FIELDS)
    for name in LEVER_FIELDS:
        assert FIELDS[name].default == getattr(Levers(), name), name
    assert Levers.of(resolve(overrides={"lean_decode": False})) == dataclasses.replace(Levers(), lean_decode=False)


def test_plug_gives_the_plain_pieces_with_every_lever_off():
    plugged = plug(Levers.all_off())
    assert type(plugged.engine) is HFEngine and plugged.engine.scope is None
    assert plugged.head is None and plugged.spill is None
    assert plugged.merged_product is torch.nn.functional.linear
    on = plug(Levers())
    assert type(on.engine).__name__ == "LeanEngine" and on.head is not None and on.spill is not None


def test_on_a_gpu_the_cpu_levers_stay_off():
    """On CUDA: the static engine (or the plain loop when named), no few-row products, no
    file-backed reference, no heap policy; the fused head is not a CPU lever and stays."""
    plugged = plug(Levers(), torch.device("cuda"))
    assert type(plugged.engine) is StaticEngine and plugged.head is not None
    assert plugged.spill is None and plugged.merged_product is torch.nn.functional.linear
    assert type(plugged.heap_policy("generate")) is contextlib.nullcontext
    assert type(plug(Levers(), "cuda", engine="hf").engine) is HFEngine
    assert type(plug(Levers(), "cpu", engine="static").engine) is StaticEngine
    assert type(plug(Levers(), "cpu").engine).__name__ == "LeanEngine"


def test_few_row_products_leave_a_model_off_the_cpu_as_it_is():
    from grpo.compat import own_forward
    from grpo.fast.few_rows import FewRows
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with FewRows().decoding_linears(model):
        assert all(own_forward(m) is None for m in model)
    cpu = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with FewRows().decoding_linears(cpu):
        assert own_forward(cpu[0]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_the_static_engine_gives_the_same_run(tiny_config, all_on, run):
    cfg = tiny_config(**RUNS[run], engine="static")
    train(cfg, log=lambda *a: None)
    assert_same_run(metrics(cfg), all_on[run], f"{run}, engine static")


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("lever", [*LEVER_FIELDS[:-1], "all"])      # grad_bucket_mb: tests/test_distributed.py
def test_a_lever_off_gives_the_same_run(tiny_config, all_on, run, lever):
    off = LEVERS_OFF if lever == "all" else {lever: LEVERS_OFF[lever]}
    cfg = tiny_config(**RUNS[run], **off)
    train(cfg, log=lambda *a: None)
    assert_same_run(metrics(cfg), all_on[run], f"{run}, {lever} off")


BLOCK_FAST = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "grpo.fast" or name.startswith("grpo.fast."):
            raise ImportError("grpo.fast is not installed here")
sys.meta_path.insert(0, Block())
sys.path.insert(0, {tests!r})
from grpo.data import tasks
from grpo.config import resolve, Levers
from grpo.train import train
from grpo.train.plug import plug
import test_levers
tasks.TASKS["dense"] = test_levers.dense_task
plugged = plug(Levers())
assert plugged.head is None and plugged.spill is None and type(plugged.engine).__name__ == "HFEngine"
train(resolve(overrides=json.loads(sys.argv[1])), log=lambda *a: None)
assert not any(m.startswith("grpo.fast") for m in sys.modules), "grpo.fast was imported"
print("trained without grpo.fast")
"""


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_training_without_grpo_fast(tiny_config, all_on, run):
    cfg = tiny_config(**RUNS[run])
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", BLOCK_FAST.format(tests=str(HERE)), json.dumps(vars(cfg))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained without grpo.fast" in proc.stdout
    assert_same_run(metrics(cfg), all_on[run], f"{run} without grpo.fast")
