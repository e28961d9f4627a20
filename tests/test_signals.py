"""Stopping a run: SIGINT or SIGTERM ends `grpo train` after the current step with a checkpoint, one
line naming it and the command that continues, and no traceback; a resume with nothing left to do
says so and fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")]


def start(tiny_model_dir, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "grpo", "train", "--model", str(tiny_model_dir), "--max-steps", "100000",
           "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "4", "--eval-size", "0",
           "--no-save-model", "--device", "cpu", "--output-dir", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_steps(out: Path, proc: subprocess.Popen, n: int = 2, timeout: float = 120) -> None:
    t = time.time()
    while time.time() - t < timeout:
        f = out / "metrics.jsonl"
        if f.exists() and len(f.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("the run logged no steps")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_with_a_checkpoint(tiny_model_dir, tmp_path, signum, code):
    out = tmp_path / "run"
    proc = start(tiny_model_dir, out, "--save-every", "1000")
    wait_for_steps(out, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]["step"]
    assert [r["step"] for r in rows] == list(range(1, last + 1))            # whole steps only
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{last:06d}"
    line = [x for x in err.splitlines() if "stopped after step" in x][-1]
    assert f"stopped after step {last} of 100000" in line and f"last checkpoint {out}" in line
    assert f"continue with: grpo train --config {out / 'config.yaml'} --resume latest" in line


def test_without_checkpointing_the_line_says_so(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(tiny_model_dir, out)
    wait_for_steps(out, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "no checkpoint (checkpointing is off: --save-every N)" in err


def test_a_resume_with_nothing_left_to_do_fails_with_a_line(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "grpo", "train", "--model", str(tiny_model_dir), "--prompts-per-step", "2",
            "--group-size", "4", "--max-new-tokens", "4", "--eval-size", "0", "--no-save-model", "--device", "cpu",
            "--output-dir", str(out), "--save-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(base + ["--max-steps", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(base + ["--max-steps", "2", "--resume", "latest"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "is at step 2 and max_steps is 2: nothing left to do; raise --max-steps" in again.stderr
    more = subprocess.run(base + ["--max-steps", "3", "--resume", "latest"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert more.returncode == 0, more.stderr[-3000:]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_ctrl_c_under_nproc_stops_every_process_after_the_step_with_one_line(tiny_model_dir, tmp_path):
    """As a terminal's Ctrl-C: SIGINT to the launcher's process group. Every worker finishes its step,
    the checkpoint is written, rank 0 alone says where the run stopped, and nothing prints a traceback."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "grpo", "train", "--nproc", "2", "--model", str(tiny_model_dir),
                             "--max-steps", "100000", "--prompts-per-step", "2", "--group-size", "2",
                             "--max-new-tokens", "4", "--eval-size", "0", "--save-every", "100000",
                             "--no-save-model", "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert stderr.count("stopped after step") == 1 and "--resume latest" in stderr
    assert stdout.count("SIGINT: stopping after this step") == 1
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert (out / "checkpoints" / f"step-{steps[-1]:06d}").is_dir()
