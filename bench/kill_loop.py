"""kill -9 a checkpointing run again and again, resume it each time, and check what survives.

    python bench/kill_loop.py --kills 20 --steps 600

A tiny model (the demo's architecture, ~21k parameters; nothing downloaded) trains with a
checkpoint after every step. Each round starts `grpo train` (with `--resume latest` once a
checkpoint exists) and SIGKILLs it: on odd rounds at a random moment (a quarter of them 0.2-3 s
after its start, while it loads; the rest 0-1.5 s after it logs its first step: stepping or
saving), on even rounds
a random 0-6 ms after a checkpoint's hidden folder appears (so the kill lands inside a save).
A run killed before its first checkpoint has nothing to resume and starts over in a fresh folder
(counted). After the last kill the run finishes. Reported: kills, how many landed during a save (a hidden
folder was there at the moment of the kill), resumes that failed (none expected), whether
metrics.jsonl holds every step exactly once, and the largest difference of each step's reward
and loss from one uninterrupted run of the same settings (exact resume: 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_model(path: Path) -> Path:
    from grpo import demo
    tok = demo.build_tokenizer()
    model = demo.build_model(tok, {**demo.RECIPE, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                   "num_attention_heads": 4})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def args_for(model: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "grpo", "train", "--model", str(model), "--max-steps", str(steps),
            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--eval-size", "0",
            "--lr", "1e-3", "--device", "cpu", "--no-save-model", "--save-every", "1", "--keep-checkpoints", "2",
            "--output-dir", str(out)]


def rows(out: Path) -> list[dict]:
    f = out / "metrics.jsonl"
    if not f.exists():
        return []
    result = []
    for line in f.read_text().splitlines():
        try:
            result.append(json.loads(line))
        except ValueError:
            result.append({"step": None, "broken": line})
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="grpo-kill-loop-"))
    env = {**os.environ, "GRPO_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    model = tiny_model(work / "tiny-model")

    reference = work / "reference"
    t0 = time.monotonic()
    subprocess.run(args_for(model, reference, a.steps), env=env, check=True, capture_output=True)
    one_run = time.monotonic() - t0

    out = work / "run"
    kills = during_save = failed_resumes = rounds = restarts = 0
    notes = []
    while kills < a.kills:
        rounds += 1
        resume = (out / "checkpoints" / "latest").exists()
        if not resume and out.exists():                  # killed before its first checkpoint: nothing to resume
            shutil.rmtree(out)
            restarts += 1
        cmd = args_for(model, out, a.steps) + (["--resume", "latest"] if resume else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ckpts = out / "checkpoints"
        if rounds % 2 and rng.random() < 0.25:           # while it starts up (imports, model load)
            deadline = time.monotonic() + rng.uniform(0.2, 3.0)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
        elif rounds % 2:                                 # a random moment once it steps
            before = len(rows(out))
            while proc.poll() is None and len(rows(out)) <= before:
                time.sleep(0.01)
            deadline = time.monotonic() + rng.uniform(0.0, 1.5)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
        else:                                            # inside a save
            end = time.monotonic() + one_run + 10
            seen = {p.name for p in ckpts.glob(".tmp-step-*")} if ckpts.exists() else set()
            while proc.poll() is None and time.monotonic() < end:
                now = {p.name for p in ckpts.glob(".tmp-step-*")} if ckpts.exists() else set()
                if now - seen:
                    time.sleep(rng.uniform(0.0, 0.006))
                    break
                time.sleep(0.001)
        if proc.poll() is not None:                      # it finished (or failed) before the kill
            err = proc.stderr.read()
            if proc.returncode != 0:
                failed_resumes += 1
                notes.append(f"round {rounds}: exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
            elif rows(out) and rows(out)[-1].get("step") == a.steps:
                notes.append(f"round {rounds}: the run finished before {a.kills} kills; raise --steps")
                break
            continue
        mid_save = ckpts.exists() and any(ckpts.glob(".tmp-*"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        during_save += mid_save
    resume = (out / "checkpoints" / "latest").exists()
    if not resume and out.exists():
        shutil.rmtree(out)
        restarts += 1
    finished = bool(rows(out)) and rows(out)[-1].get("step") == a.steps
    final = subprocess.run(args_for(model, out, a.steps) + (["--resume", "latest"] if resume else []),
                           env=env, capture_output=True, text=True) if not finished else None
    if final is not None and final.returncode != 0:
        failed_resumes += 1
        notes.append(f"final: exit {final.returncode}: {final.stderr.strip().splitlines()[-1:]}")

    got, want = rows(out), rows(reference)
    steps = [r.get("step") for r in got]
    contiguous = steps == list(range(1, a.steps + 1))
    diff = {k: max((abs(x[k] - y[k]) for x, y in zip(got, want) if x.get(k) is not None and y.get(k) is not None),
                   default=None) for k in ("reward/mean", "loss", "kl")}
    print(f"kills: {kills} ({during_save} during a save, {kills - during_save} at other moments), rounds: {rounds}")
    print(f"failed resumes: {failed_resumes}; runs started over (killed before their first checkpoint): {restarts}")
    print(f"metrics.jsonl: {len(got)} rows, steps 1..{a.steps} each once: {contiguous}")
    print("largest difference from an uninterrupted run: " + ", ".join(f"{k} {v:.3g}" if v is not None else f"{k} -"
                                                                       for k, v in diff.items()))
    for n in notes:
        print("note:", n)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder: {work}")
    return 0 if contiguous and not failed_resumes else 1


if __name__ == "__main__":
    sys.exit(main())
