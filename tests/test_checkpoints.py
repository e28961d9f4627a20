"""Checkpoints you can trust (grpo/train/checkpoint.py): each records what it holds, a damaged or
incompatible one is refused with the reason, `latest-good` falls back only when asked, a full disk
during a save leaves the previous checkpoint resumable, and kill -9 at random moments (inside
saves too) always leaves a run that resumes with contiguous metrics. bench/kill_loop.py runs the
kill loop at length (20+ kills)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grpo.errors import CheckpointError
from grpo.train import checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--max-steps", "3", "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--eval-size",
         "0", "--lr", "1e-3", "--device", "cpu", "--no-save-model", "--save-every", "1"]


def _grpo(*args, cwd: Path, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "grpo", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GRPO_CACHE": str(cwd / "cache")})


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_checkpoints(tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(tiny_config(max_steps=2, save_every=1, eval_size=0, output_dir=str(out)), log=lambda *a: None)
    return out


def test_the_manifest_records_step_settings_and_every_file(two_checkpoints):
    path = two_checkpoints / "checkpoints" / "step-000002"
    m = json.loads((path / "manifest.json").read_text())
    assert m["step"] == 2 and m["format"] == 1 and m["config"]["max_steps"] == 2
    assert m["config_hash"] == checkpoint.config_hash(m["config"])
    on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk and "trainer_state.pt" in on_disk and "model/model.safetensors" in on_disk
    for name, rec in m["files"].items():
        assert rec["bytes"] == (path / name).stat().st_size and len(rec["sha256"]) == 64
    assert checkpoint.problem(path) is None


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "trainer_state.pt").write_bytes((p / "trainer_state.pt").read_bytes()[:100]),
     r"trainer_state.pt has 100 bytes, \d+ when it was written"),
    (lambda p: (p / "model" / "config.json").unlink(), "model/config.json is missing"),
    (lambda p: (p / "model" / "model.safetensors").write_bytes(
        bytes(b ^ 1 if i == 300 else b for i, b in enumerate((p / "model" / "model.safetensors").read_bytes()))),
     "model/model.safetensors has changed since it was written"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "its manifest.json cannot be read"),
])
def test_a_damaged_checkpoint_is_refused_and_latest_good_falls_back(two_checkpoints, tmp_path, damage, reason):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    damage(run / "checkpoints" / "step-000002")
    with pytest.raises(CheckpointError, match=reason) as e:
        checkpoint.find("latest", run)
    assert "is damaged" in str(e.value) and "--resume latest-good continues from the newest intact one (step-000001)" \
        in str(e.value)
    said = []
    assert checkpoint.find("latest-good", run, log=said.append) == run / "checkpoints" / "step-000001"
    assert len(said) == 1 and "passing over" in said[0] and "step-000002" in said[0]


def test_latest_good_with_nothing_intact(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    for step in ("step-000001", "step-000002"):
        (run / "checkpoints" / step / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*step-000002: trainer_state.pt is missing; "
                                              r"step-000001: trainer_state.pt is missing"):
        checkpoint.find("latest-good", run)


@pytest.mark.slow
def test_resume_latest_good_runs_on_from_the_older_checkpoint(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "checkpoints" / "step-000002" / "trainer_state.pt").write_bytes(b"cut")
    proc = _grpo("train", "--config", run / "config.yaml", "--output-dir", run, "--max-steps", "3",
                 "--resume", "latest-good", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "passing over" in proc.stdout + proc.stderr
    assert _steps(run) == [1, 2, 3]


def test_a_cut_last_metrics_line_is_dropped_on_resume(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "rew')
    checkpoint.truncate_jsonl(f, 3)
    assert f.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'


def test_older_checkpoints_without_a_manifest_still_resume(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "checkpoints" / "step-000002" / "manifest.json").unlink()
    assert checkpoint.find("latest", run) == run / "checkpoints" / "step-000002"
    assert checkpoint.step_of(run / "checkpoints" / "step-000002") == 2


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return proc.returncode == 0


@contextlib.contextmanager
def _small_disk(tmp_path: Path, size: int, room: int):
    """A tmpfs of 64 x `size` bytes at tmp_path/disk, filled (by the file it yields) so that about
    `room` bytes stay free; unmounted afterwards. Skips the test where it cannot be mounted (not root)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 64 * size):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - room))
        yield filler
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _pages(folder: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_model_dir, tmp_path):
    probe = tmp_path / "probe"
    proc = _grpo("train", "--model", tiny_model_dir, *FLAGS, "--max-steps", "1", "--output-dir", probe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    size = _pages(probe / "checkpoints" / "step-000001")
    with _small_disk(tmp_path, size, int(1.5 * size) + 256 * 1024) as used:     # room for one checkpoint and a half
        run = used.parent / "run"
        proc = _grpo("train", "--model", tiny_model_dir, *FLAGS, "--output-dir", run, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"grpo train: error: checkpoint: no space left on the device for step 2 in "
                               f"{run / 'checkpoints'}") and "the last complete checkpoint is step-000001" in last, last
        assert checkpoint.find("latest", run) == run / "checkpoints" / "step-000001"
        assert not list((run / "checkpoints").glob(".tmp-*"))            # the half-written folder is gone
        used.unlink()                                                    # space again: the run continues
        proc = _grpo("train", "--config", run / "config.yaml", "--output-dir", run, "--resume", "latest", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _steps(run) == [1, 2, 3]


@pytest.mark.slow
def test_a_full_disk_during_the_final_save_is_one_line_and_keeps_the_checkpoint(tiny_model_dir, tmp_path):
    """The trained model is written like a checkpoint: a full disk leaves no model/ folder without
    weights, says so in one line, and the last checkpoint resumes."""
    flags = [f for f in FLAGS if f != "--no-save-model"]
    probe = tmp_path / "probe"
    proc = _grpo("train", "--model", tiny_model_dir, *flags, "--max-steps", "1", "--output-dir", probe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt, model = _pages(probe / "checkpoints" / "step-000001"), _pages(probe / "model")
    with _small_disk(tmp_path, ckpt, ckpt + model // 2 + 128 * 1024) as used:   # room for the checkpoint, not the model
        run = used.parent / "run"
        proc = _grpo("train", "--model", tiny_model_dir, *flags, "--max-steps", "1", "--output-dir", run, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"grpo train: error: save: no space left on the device for {run / 'model'}; nothing "
                               f"of it was kept; the last checkpoint, {run / 'checkpoints' / 'step-000001'}, is "
                               "intact"), last
        assert not (run / "model").exists() and not list(run.glob(".tmp-*"))
        used.unlink()
        proc = _grpo("train", "--config", run / "config.yaml", "--output-dir", run, "--resume", "latest",
                     "--max-steps", "2", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _steps(run) == [1, 2] and (run / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_kill_9_at_random_moments_always_resumes(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kill_loop.py"), "--kills", "4", "--steps", "120"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "failed resumes: 0" in proc.stdout and "each once: True" in proc.stdout, proc.stdout
    assert "kills: 4 " in proc.stdout, proc.stdout
    assert "reward/mean 0," in proc.stdout, proc.stdout                 # exact resume: the same numbers


def test_resume_refuses_a_checkpoint_of_another_lora_rank(two_checkpoints, tiny_config, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    cfg = tiny_config(max_steps=3, eval_size=0, output_dir=str(run), resume="latest", lora_rank=4)
    with pytest.raises(CheckpointError, match="was written with lora_rank 0, and this run has lora_rank 4; resume with "
                                              "--lora-rank 0"):
        train(cfg, log=lambda *a: None)


def test_resume_refuses_a_checkpoint_whose_weights_are_not_finite(two_checkpoints, tiny_config, tmp_path):
    """A checkpoint written faithfully (its manifest agrees) but holding a NaN weight is refused by
    name before any step, instead of sampling garbage."""
    from safetensors.torch import load_file, save_file
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    path = run / "checkpoints" / "step-000002"
    weights = path / "model" / "model.safetensors"
    state = load_file(weights)
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name].view(-1)[0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = checkpoint.describe(path)
    del manifest["files"]["manifest.json"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert checkpoint.problem(path) is None
    cfg = tiny_config(max_steps=3, eval_size=0, output_dir=str(run), resume="latest")
    with pytest.raises(CheckpointError, match=f"resume: {path} has non-finite values in weight {name} \\(1 of "):
        train(cfg, log=lambda *a: None)
    assert _steps(run) == [1, 2]


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` made read-only by a bind mount over itself; unmounted afterwards. Skips the test
    where it cannot be mounted (not root)."""
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_an_output_folder_on_a_read_only_mount_is_one_line(two_checkpoints, tiny_config, tmp_path):
    from grpo.errors import ConfigError
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (tmp_path / "empty").mkdir()
    with _read_only(tmp_path):
        for out, resume in ((run, "latest"), (tmp_path / "empty", None)):
            cfg = tiny_config(max_steps=3, eval_size=0, output_dir=str(out), resume=resume)
            with pytest.raises(ConfigError, match=f"output_dir: cannot write in {out}: Read-only file system; "
                                                  "choose a writable --output-dir"):
                train(cfg, log=lambda *a: None)
    assert _steps(run) == [1, 2]


def test_a_save_killed_part_way_leaves_no_hidden_folder_after_the_next(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "checkpoints" / ".tmp-step-000003-abc").mkdir()
    (run / "checkpoints" / ".tmp-step-000003-abc" / "junk").write_text("half")
    from grpo.config import resolve
    cfg = resolve(yaml_values=None, overrides={**json.loads((run / "checkpoints" / "step-000002" / "manifest.json")
                                                            .read_text())["config"],
                                               "output_dir": str(run), "resume": "latest", "max_steps": 3,
                                               "save_every": 1})
    started = time.time()
    train(cfg, log=lambda *a: None)
    assert time.time() - started < 300
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000002", "step-000003"]


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused_and_the_first_goes_on(tiny_model_dir, tmp_path):
    import time
    out = tmp_path / "run"
    flags = ["--model", tiny_model_dir, "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
             "--eval-size", "0", "--device", "cpu", "--no-save-model", "--output-dir", out]
    first = subprocess.Popen([sys.executable, "-m", "grpo", "train", *map(str, flags), "--max-steps", "600"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "GRPO_CACHE": str(tmp_path / "cache")})
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():          # the first run holds the folder and has begun
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)
        t0 = time.monotonic()
        second = _grpo("train", *flags, "--max-steps", "5", cwd=tmp_path)
        took = time.monotonic() - t0
        assert first.poll() is None, "the first run ended before the second was refused; make it longer"
        last = second.stderr.strip().splitlines()[-1]
        assert second.returncode == 2 and took < 10, (took, second.stderr[-2000:])
        assert last.startswith(f"grpo train: error: output_dir: {out} is in use by another run (process {first.pid} "), last
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert _steps(out) == list(range(1, 601))               # the first run's record, whole and in order
