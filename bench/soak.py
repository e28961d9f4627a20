"""A soak: the built-in demo trained for a long while with everything that runs a long time on —
a checkpoint after every step, a reward function of the user's own in worker processes, a
held-out evaluation every N steps — then stopped with SIGTERM, as a job scheduler would.

    python bench/soak.py --minutes 30

Reported: steps done and s/step; the trainer's and the reward workers' resident memory at the
start (after step 1), the middle and the end of the run, and the largest seen (growth would show
here); evaluations done; checkpoints left on disk (--keep-checkpoints) and whether the last one
passes its checks; worker processes alive at the end (no leak); and failures: error lines, a
non-graceful exit, or metrics.jsonl not holding every step once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def workers_of(pid: int) -> list[int]:
    """The reward workers: processes started by `pid` that run grpo.rewards.worker."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"grpo.rewards.worker" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def steps_done(out: Path) -> int:
    f = out / "metrics.jsonl"
    if not f.exists():
        return 0
    lines = f.read_text().splitlines()
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except ValueError:
        return len(lines) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-size", type=int, default=50)
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grpo-soak-"))
    out = work / "run"
    cmd = [sys.executable, "-m", "grpo", "train", "--max-steps", "1000000", "--save-every", "1",
           "--keep-checkpoints", "2", "--eval-every", str(a.eval_every), "--eval-size", str(a.eval_size),
           "--reward", f"{ROOT / 'bench' / 'reward_workers.py'}:exact", "--no-save-model", "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = open(work / "stderr.txt", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    samples = []                      # (seconds, step, trainer MB, workers MB, worker count)
    end = t0 + a.minutes * 60
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(a.sample_every)
        ws = workers_of(proc.pid)
        samples.append((time.monotonic() - t0, steps_done(out), rss_mb(proc.pid), sum(rss_mb(w) for w in ws), len(ws)))
    before_stop = workers_of(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    err.close()
    elapsed = time.monotonic() - t0

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    contiguous = steps == list(range(1, len(steps) + 1))
    evals = len((out / "eval.jsonl").read_text().splitlines()) if (out / "eval.jsonl").exists() else 0
    from grpo.train import checkpoint
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    last_ok = checkpoint.problem(checkpoint.latest(out)) is None if checkpoint.latest(out) else False
    errors = [line for line in (work / "stderr.txt").read_text().splitlines()
              if "error" in line.lower() or "Traceback" in line]
    stepped = [s for s in samples if s[1] >= 1]
    pick = {"start": stepped[0], "middle": stepped[len(stepped) // 2], "end": stepped[-1]} if stepped else {}
    step_times = [r["time/step"] for r in rows[1:]]
    print(f"ran {elapsed / 60:.1f} min, {len(rows)} steps, {sum(step_times) / max(1, len(step_times)):.2f} s/step "
          f"(mean of time/step after step 1), exit code {code} (143 = stopped by SIGTERM, as asked)")
    for name, (sec, step, trainer, workers, n) in pick.items():
        print(f"memory at the {name:<6} (t={sec / 60:5.1f} min, step {step:5d}): trainer {trainer:7.1f} MB, "
              f"{n} reward workers {workers:6.1f} MB")
    if stepped:
        print(f"largest seen: trainer {max(s[2] for s in stepped):.1f} MB, workers {max(s[3] for s in stepped):.1f} MB")
    print(f"evaluations: {evals}; checkpoints on disk: {', '.join(ckpts)}; the last passes its checks: {last_ok}")
    time.sleep(1.0)
    left = [w for w in before_stop if os.path.exists(f"/proc/{w}") and
            (Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
    print(f"reward workers alive before the stop: {len(before_stop)}; still alive after it: {len(left)}")
    print(f"metrics.jsonl holds steps 1..{len(steps)} each once: {contiguous}")
    print(f"failures: {len(errors)} error lines" + (": " + errors[0] if errors else ""))
    print(f"work folder: {work}")
    ok = contiguous and not errors and code in (0, 128 + signal.SIGTERM) and last_ok and not left
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
