"""W1 (see bench.py) on 1 process and on 2 processes, data-parallel and sharded (`fsdp`): the
median step time and every process's peak RSS.

    python bench/scale.py --steps 3

Each layout is its own job (torchrun for 2 processes, as `grpo train --nproc 2` starts it); the
machine's 2 cores are split between the processes (2 threads for 1 process, 1 each for 2). The
first step of each job is a warm-up and not counted. W1's 2 prompts per step put one prompt and
its 8 completions on each of 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORES = 2
LAYOUTS = {"1 process": (1, False), "2 processes": (2, False), "2 processes, fsdp": (2, True)}


def child(fsdp: bool, steps: int) -> None:
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from grpo.fast.heap import return_freed_memory
    return_freed_memory()                       # as the `grpo` command does at start
    sys.path.insert(0, str(HERE))
    import bench
    res = bench.run_ours("W1", bench.smollm2_folder(), steps, {"fsdp": fsdp})
    print("SCALE " + json.dumps(dict(rank=int(os.environ.get("RANK", "0")), step_s=res["step_s"],
                                     phases=res["phases"],
                                     peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0] == "fsdp", int(args.child[1]))
    for name in args.layouts:
        n, fsdp = LAYOUTS[name]
        env = {**os.environ, "OMP_NUM_THREADS": str(CORES // n), "TOKENIZERS_PARALLELISM": "false"}
        me = [__file__, "--child", "fsdp" if fsdp else "plain", str(args.steps)]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *me]
               if n > 1 else [sys.executable, *me])
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = sorted((json.loads(x[6:]) for x in p.stdout.splitlines() if x.startswith("SCALE ")),
                       key=lambda r: r["rank"])
        if len(found) != n:
            raise RuntimeError(f"{name} failed:\n{p.stderr[-3000:]}")
        main_rank = found[0]
        steps = main_rank["step_s"][1:]
        phases = {k: statistics.median(v[1:]) for k, v in main_rank["phases"].items()}
        print(f"{name}: median {statistics.median(steps):.2f} s/step; peak RSS per process "
              + ", ".join(f"{r['peak_rss_gb']:.2f}" for r in found) + " GB")
        print("  phases (s, process 0): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)


if __name__ == "__main__":
    main()
