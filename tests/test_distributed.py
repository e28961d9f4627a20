"""Data parallelism and sharding: 2 processes (gloo, on this CPU) compute what 1 process computes.

One torchrun job (tests/dist_worker.py) trains every configuration below with 2 processes, B/2
prompts each, once data-parallel and once with the decoder layers sharded (`fsdp`); the same
configurations run here in 1 process with all B prompts. Sampling is seeded per prompt, so the
whole runs must match: every step's loss, gradient norm, KL and reward, and the final weights.
Then 2-process checkpoints (sharded or not) are resumed by 1 process, and a data-parallel one by 2
sharded processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rows as rows_mod
from grpo.config import resolve
from grpo.train import train

pytestmark = pytest.mark.slow          # every test here runs `grpo` in processes of its own

HERE = Path(__file__).parent
REWARD = f"{HERE / 'dist_worker.py'}:dense_reward"
BASE = dict(max_steps=3, prompts_per_step=4, group_size=4, max_new_tokens=6, eval_size=0, lr=1e-3, device="cpu",
            log_completions=0, reward=[REWARD], save_model=True,
            grad_bucket_mb=4096 / 2 ** 20)     # 4 KB: the tiny model's gradients go over in many buckets

# every loss aggregation, every scope of reward scaling and baseline, token normalisation, split
# updates (minibatches and micro-batches spanning ranks), the adaptive beta, the group filter and
# an environment's episodes
CONFIGS = {
    "deepseekmath": dict(preset="deepseekmath"),
    "dapo": dict(preset="dapo"),
    "dr_grpo": dict(preset="dr_grpo", grad_accum=2),
    "seed-batch": dict(preset="seed", reward_scaling="batch", baseline="batch", token_norm=True, kl_target=0.01),
    "minibatches": dict(preset="deepseekmath", reward_scaling="batch", minibatches=2, updates_per_batch=2,
                        loss_aggregation="token_mean"),
    "lora-checkpointing": dict(preset="deepseekmath", lora_rank=4, gradient_checkpointing=True, save_merged=True),
    "full-kl": dict(preset="deepseekmath", kl_estimator="full", gradient_checkpointing=True),
    # multi-turn episodes (each group on one rank; the environment's tokens carry no loss)
    "env": dict(preset="deepseekmath", env=f"{HERE / 'dist_worker.py'}:TwoTurns", env_max_turns=2, env_max_tokens=16),
}
LAYOUTS = {"2": dict(fsdp=False), "2fsdp": dict(fsdp=True)}
COMPARED = ("loss", "grad_norm", "kl", "policy_loss", "entropy", "reward/mean", "length/mean", "beta",
            "ratio/mean", "clip/low_frac", "clip/high_frac")


def torchrun(nproc: int, script: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", str(script), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path, folder: str = "model") -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run / folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_weights_match(a: dict, b: dict, what: str) -> None:
    """Each tensor within 1e-5 relative, as a whole: |a - b| / |a| (Adam amplifies last-bit
    differences of near-zero gradient entries, so single entries are not compared alone)."""
    assert a.keys() == b.keys()
    for k in a:
        rel = ((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-12)).item()
        assert rel <= 1e-5, f"{what}: {k} differs by {rel:.2e} relative"


def assert_rows_match(a: list[dict], b: list[dict], what: str) -> None:
    rows_mod.assert_rows_match(a, b, COMPARED, what)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """{name: (1-process run dir, 2-process run dir)}, plus the resume runs."""
    root = tmp_path_factory.mktemp("dist")
    spec = []
    for name, extra in CONFIGS.items():
        for layout, how in LAYOUTS.items():
            spec.append({**BASE, **extra, **how, "model": str(tiny_model_dir), "output_dir": str(root / f"{name}-{layout}")})
    # 4 steps with a checkpoint at step 2, for the resume tests
    resume_cfg = {**BASE, **CONFIGS["deepseekmath"], "model": str(tiny_model_dir), "max_steps": 4, "save_every": 2,
                  "keep_checkpoints": 3}
    for layout, how in LAYOUTS.items():
        spec.append({**resume_cfg, **how, "output_dir": str(root / f"resume-{layout}")})
    # the data-parallel checkpoint, continued by 2 sharded processes (the job runs the specs in order)
    spec.append({**resume_cfg, "fsdp": True, "output_dir": str(root / "resume-2-to-2fsdp"),
                 "resume": str(root / "resume-2" / "checkpoints" / "step-000002")})
    (root / "spec.json").write_text(json.dumps(spec))
    torchrun(2, HERE / "dist_worker.py", str(root / "spec.json"))
    torch.set_num_threads(1)
    for name, extra in CONFIGS.items():
        train(resolve(overrides={**BASE, **extra, "model": str(tiny_model_dir),
                                 "output_dir": str(root / f"{name}-1")}), log=lambda *a: None)
    for layout in LAYOUTS:
        ckpt = root / f"resume-{layout}" / "checkpoints" / "step-000002"
        train(resolve(overrides={**resume_cfg, "output_dir": str(root / f"resume-{layout}-to-1"), "resume": str(ckpt)}),
              log=lambda *a: None)
    return root


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_give_the_one_process_run(runs, name, layout):
    one, two = runs / f"{name}-1", runs / f"{name}-{layout}"
    r1, r2 = rows(one), rows(two)
    assert len(r1) == BASE["max_steps"]
    assert any(r["loss"] not in (None, 0.0) for r in r1), "the run must actually update"
    assert_rows_match(r2, r1, name)
    assert_weights_match(weights(one), weights(two), name)
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    assert json.loads((two / "summary.json").read_text())["sharded"] is LAYOUTS[layout]["fsdp"]
    assert json.loads((one / "summary.json").read_text())["processes"] == 1
    for rank in (0, 1):                     # sampling took the lean decoding step, sharded or not
        assert int((two / f"lean-decoders-rank{rank}.txt").read_text()) > 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_merged_lora_model_is_the_same_with_two_processes(runs, layout):
    one, two = runs / "lora-checkpointing-1", runs / f"lora-checkpointing-{layout}"
    assert_weights_match(weights(one, "merged"), weights(two, "merged"), f"merged, {layout}")


def test_clip_grad_norm_of_whole_gradients_is_torchs():
    from grpo.parallel.fsdp import clip_grad_norm
    from grpo.parallel.world import World
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    ours = clip_grad_norm(a, 1.0, World())
    theirs = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6) and ours.item() > 1.0
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)


def test_scheduler_state_fits_any_number_of_groups():
    from grpo.parallel.fsdp import fit_scheduler_state
    saved = {"base_lrs": [1e-3], "_last_lr": [5e-4], "last_epoch": 3, "lr_lambdas": [None]}
    two = fit_scheduler_state(saved, 2)
    assert two["base_lrs"] == [1e-3, 1e-3] and two["_last_lr"] == [5e-4, 5e-4] and two["last_epoch"] == 3
    assert fit_scheduler_state(two, 1)["base_lrs"] == [1e-3]


def test_the_weights_moved(runs, tiny_model_dir):
    """The comparison above is not between two untouched models."""
    start = {}
    for f in Path(tiny_model_dir).glob("*.safetensors"):
        start.update(load_file(f))
    end = weights(runs / "deepseekmath-2")
    assert any(not torch.equal(end[k], start[k]) for k in end if k in start)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_two_process_checkpoint_resumed_by_one_process_continues_the_run(runs, layout):
    full, resumed = rows(runs / f"resume-{layout}"), rows(runs / f"resume-{layout}-to-1")
    assert [r["step"] for r in resumed] == [3, 4]
    assert_rows_match(resumed, full[2:], f"resume {layout} -> 1")
    assert_weights_match(weights(runs / f"resume-{layout}"), weights(runs / f"resume-{layout}-to-1"),
                         f"resume {layout} -> 1")


def test_a_data_parallel_checkpoint_resumed_sharded_continues_the_run(runs):
    full, resumed = rows(runs / "resume-2"), rows(runs / "resume-2-to-2fsdp")
    assert [r["step"] for r in resumed] == [3, 4]
    assert_rows_match(resumed, full[2:], "resume 2 -> 2 sharded")
    assert_weights_match(weights(runs / "resume-2"), weights(runs / "resume-2-to-2fsdp"), "resume 2 -> 2 sharded")


def test_sharded_checkpoints_hold_whole_tensors(runs):
    """What a sharded run writes is an ordinary checkpoint: whole weights, whole AdamW moments."""
    ckpt = runs / "resume-2fsdp" / "checkpoints" / "step-000002"
    plain = runs / "resume-2" / "checkpoints" / "step-000002"
    w, w_plain = weights(ckpt), weights(plain)
    assert {k: v.shape for k, v in w.items()} == {k: v.shape for k, v in w_plain.items()}
    opt = torch.load(ckpt / "trainer_state.pt", weights_only=False)["opt"]
    opt_plain = torch.load(plain / "trainer_state.pt", weights_only=False)["opt"]
    assert opt["state"].keys() == opt_plain["state"].keys()
    for i, s in opt["state"].items():
        assert type(s["exp_avg"]) is torch.Tensor
        assert s["exp_avg"].shape == opt_plain["state"][i]["exp_avg"].shape


def test_nproc_flag_launches_the_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "grpo", "train", "--nproc", "2", "--model", str(tiny_model_dir),
                           "--max-steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                           "--max-new-tokens", "4", "--eval-size", "4", "--eval-batch-size", "4", "--no-save-model",
                           "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["eval_after"]["n"] == 4 and "done: held-out accuracy" in proc.stdout
    assert len(rows(out)) == 1


def test_uneven_split_is_refused(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "grpo", "train", "--nproc", "2", "--model", str(tiny_model_dir),
                           "--max-steps", "1", "--prompts-per-step", "3", "--eval-size", "0",
                           "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode != 0
    assert "prompts_per_step: 3 prompts do not split evenly over 2 processes" in proc.stderr


def test_a_demo_model_built_by_another_process_meanwhile_is_used(tmp_path, monkeypatch):
    """Two processes that find no cached demo model both build it; the second to finish keeps the
    first one's (the build is deterministic) instead of failing."""
    from grpo import demo
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))
    recipe = {"test": 1}
    final = tmp_path / f"demo-{demo.recipe_key(recipe)}"

    def build(folder, _recipe):
        (Path(folder) / "config.json").write_text("{}")
        final.mkdir()                                   # the other process renames its build into place
        (final / "config.json").write_text('{"first": true}')

    monkeypatch.setattr(demo, "build_sft_model", build)
    assert demo.ensure_demo_model(recipe, log=lambda *a: None) == final
    assert json.loads((final / "config.json").read_text()) == {"first": True}
    assert [p.name for p in tmp_path.iterdir()] == [final.name]        # no build folder left behind
