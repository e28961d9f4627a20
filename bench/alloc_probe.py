"""Per-phase wall time, system time, page faults and peak RSS of W1 (see bench.py) with our memory
and decoding levers switched on or off, each variant in its own process, variants alternating.

    python bench/alloc_probe.py --rounds 2 --steps 3 --variants all no-reuse no-file no-few-rows

Variants (everything on, or one lever of grpo.config.Levers off, passed as settings):
  all          the code as it ships
  all-off      every lever off (Levers.all_off)
  no-reuse     every large tensor a fresh mapping in every phase (heap_reuse=false)
  no-file      the reference's weights held in memory (reference_in_file=false)
  no-few-rows  decoding matmuls as x W^T (few_rows_max=0)
  no-native    decoding's few-row products through MKL, not the compiled kernel (native_kernel=false)
  no-lean      decoding through the model's forward instead of the lean step (lean_decode=false)
  no-trim      the update on fresh mappings, no heap reuse there (heap_trim_every=0)
  no-keep      the LM head's logits recomputed in backward (head_keep_mb=0)
  no-fused-head
               log-probs through autograd's checkpointed log-softmax (fused_head=false)
  set-K=V      any of our settings K set to V, e.g. set-logprob_chunk=512
  thp          (not a lever the command uses) torch's transparent-huge-page allocation for tensors
               of 2 MiB and more (THP_MEM_ALLOC_ENABLE=1)
Phases are measured through the trainer's `watch` hook (grpo/train/phases.py). The first step of
each process is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREADS = 2
PHASES = ("generate", "reference", "policy")


VARIANTS = {
    "all": {}, "no-reuse": {"heap_reuse": False}, "no-file": {"reference_in_file": False},
    "no-few-rows": {"few_rows_max": 0}, "no-native": {"native_kernel": False}, "no-lean": {"lean_decode": False},
    "no-trim": {"heap_trim_every": 0.0}, "no-keep": {"head_keep_mb": 0}, "no-fused-head": {"fused_head": False},
    "thp": {},
}


def settings(variant: str) -> dict:
    if variant == "all-off":
        from grpo.config import Levers
        return {k: getattr(Levers.all_off(), k) for k in vars(Levers.all_off())}
    if variant.startswith("set-"):          # set-KEY=VALUE: one of our settings changed
        key, value = variant[4:].split("=", 1)
        return {key: json.loads(value)}
    return VARIANTS[variant]


def child(variant: str, steps: int) -> None:
    import torch
    torch.set_num_threads(THREADS)
    from grpo.fast.heap import return_freed_memory
    return_freed_memory()                       # as the `grpo` command does at start
    log: list[dict] = []

    @contextlib.contextmanager
    def watch(phase):
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        yield
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        log.append(dict(phase=phase, wall=time.perf_counter() - t, sys=r1.ru_stime - r0.ru_stime,
                        faults=r1.ru_minflt - r0.ru_minflt))

    sys.path.insert(0, str(HERE))
    import bench
    res = bench.run_ours("W1", bench.smollm2_folder(), steps, settings(variant), watch=watch)
    print("PROBE " + json.dumps(dict(log=log, step_s=res["step_s"],
                                     peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["all", "no-reuse", "no-file", "no-few-rows"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]))
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v in args.variants:
            p = subprocess.run([sys.executable, __file__, "--child", v, str(args.steps)], capture_output=True, text=True,
                               env={**env, "THP_MEM_ALLOC_ENABLE": "1"} if v == "thp" else env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("PROBE ")), None)
            if line is None:
                raise RuntimeError(f"{v} failed:\n{p.stderr[-3000:]}")
            runs[v].append(json.loads(line[6:]))
    for v, rs in runs.items():
        steps = [s for r in rs for s in r["step_s"][1:]]
        print(f"\n{v}: median {statistics.median(steps):.2f} s/step, peak RSS {max(r['peak_rss_gb'] for r in rs):.2f} GB")
        for phase in PHASES:
            rows = []
            for r in rs:                        # per process: drop the first step's (warm-up)
                rows += [x for x in r["log"] if x["phase"] == phase][1:]
            med = {k: statistics.median(x[k] for x in rows) for k in ("wall", "sys", "faults")}
            print(f"  {phase:9s} wall {med['wall']:6.2f} s   system {med['sys']:5.2f} s   page faults {med['faults']:9.0f}")


if __name__ == "__main__":
    main()
