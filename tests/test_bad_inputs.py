"""Every bad input a one-line answer: the `grpo` command, run as a user runs it (a subprocess), on
each case of docs/troubleshooting.md's table, exits with code 2, prints no traceback, and its last
line names the place (the setting, the file and line, the function). `--debug` shows the traceback.

Each case is (id, setup, message): `setup(t)` writes what the case needs under `t.tmp` and returns
the command's arguments; `message` is the start of the expected error line (after
`grpo train: error: `), with `{tmp}` standing for the case's folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow          # every test here runs `grpo` in processes of its own

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-steps", "2", "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
        "--eval-size", "0", "--device", "cpu", "--no-save-model"]


@dataclass
class T:
    tmp: Path
    model: Path            # the tiny model folder (shared, never changed)
    run: Path              # a finished run with checkpoints at steps 1 and 2 (shared, never changed)

    def write(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def train(self, *args) -> list:
        return ["train", "--model", self.model, *FAST, "--output-dir", self.tmp / "out", *args]

    def copy_model(self, name: str = "model") -> Path:
        dst = self.tmp / name
        shutil.copytree(self.model, dst)
        return dst

    def copy_run(self) -> Path:
        dst = self.tmp / "run"
        shutil.copytree(self.run, dst)
        return dst


def _reward_file(t: T, body: str) -> str:
    t.write("r.py", "import math, os, time\n\n" + textwrap.dedent(body))
    return "r.py:f"


def _jsonl(t: T, name: str, rows) -> Path:
    return t.write(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


_HELD = []            # folder locks this process holds while the cases run (output-dir-in-use)


def _hold(folder: Path) -> None:
    from grpo.train.setup import FolderLock
    folder.mkdir(parents=True, exist_ok=True)
    _HELD.append(FolderLock(folder))


def _env_file(t: T, reset: str, reply: str) -> str:
    t.write("env.py", f"""
        from grpo.envs import Reply


        class Env:
            def reset(self, row):
                {reset}

            def step(self, text):
                return {reply}
        """)
    return "env.py:Env"


def _rows(n: int) -> list:
    return [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(n)]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _resume(t: T, *args) -> list:
    run = t.copy_run()
    return ["train", "--config", run / "config.yaml", "--output-dir", run, "--max-steps", "4", *args]


def _resume_copied(t: T) -> list:
    """--resume latest of the run copied (and damaged) by the case."""
    run = t.tmp / "run"
    return ["train", "--config", run / "config.yaml", "--output-dir", run, "--max-steps", "4", "--resume", "latest"]


def _other_model(t: T) -> Path:
    from grpo import demo
    tok = demo.build_tokenizer()
    model = demo.build_model(tok, {**demo.RECIPE, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2})
    path = t.tmp / "other-model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _no_special_tokens(t: T) -> Path:
    m = t.copy_model()
    cfg = json.loads((m / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token", "bos_token", "unk_token"):
        cfg.pop(key, None)
    (m / "tokenizer_config.json").write_text(json.dumps(cfg))
    special = m / "special_tokens_map.json"
    if special.exists():
        special.write_text("{}")
    conf = json.loads((m / "config.json").read_text())
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        conf[key] = None
    (m / "config.json").write_text(json.dumps(conf))
    gen = m / "generation_config.json"
    if gen.exists():
        gen.unlink()
    return m


def _wrong_architecture(t: T) -> Path:
    m = t.copy_model()
    conf = json.loads((m / "config.json").read_text())
    conf.update(model_type="bert", architectures=["BertModel"])
    (m / "config.json").write_text(json.dumps(conf))
    return m


def _wider_config(t: T) -> Path:
    m = t.copy_model()
    conf = json.loads((m / "config.json").read_text())
    conf["intermediate_size"] *= 2
    (m / "config.json").write_text(json.dumps(conf))
    return m


def _two_label_reward_model(t: T) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from grpo import demo
    tok = demo.build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_labels=2, pad_token_id=tok.pad_token_id)
    path = t.tmp / "two-labels"
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# (id, setup, message). Grouped as docs/troubleshooting.md's table.
CASES = [
    # ---------------------------------------------------------------- settings (flags)
    ("group-size-below-2", lambda t: t.train("--group-size", "1"), "group_size (in command line): must be >= 2, got 1"),
    ("lr-not-a-number", lambda t: t.train("--lr", "abc"), "lr (in command line): expected float, got 'abc'"),
    ("not-a-choice", lambda t: t.train("--kl-estimator", "k9"),
     "kl_estimator (in command line): must be one of k1, k2, k3, full; got 'k9'"),
    ("min-above-max-new-tokens", lambda t: t.train("--min-new-tokens", "9"),
     "min_new_tokens (9) must be <= max_new_tokens (6)"),
    ("more-minibatches-than-prompts", lambda t: t.train("--minibatches", "3"),
     "minibatches (3) must be <= prompts_per_step (2)"),
    ("task-config-not-json", lambda t: t.train("--task-config", "{min_terms: [2"),
     "task_config (in command line): expected a JSON or YAML mapping"),
    ("reward-timeout-zero", lambda t: t.train("--reward-timeout", "0"), "reward_timeout (in command line): must be > 0"),
    # ---------------------------------------------------------------- YAML
    ("yaml-unknown-setting", lambda t: ["train", "--config", t.write("typo.yaml", "group_szie: 8\n")],
     "{tmp}/typo.yaml: unknown setting 'group_szie'; did you mean 'group_size'?"),
    ("yaml-out-of-range", lambda t: ["train", "--config", t.write("bad.yaml", "group_size: 1\n")],
     "group_size (in {tmp}/bad.yaml): must be >= 2, got 1"),
    ("yaml-syntax-error", lambda t: ["train", "--config", t.write("broken.yaml", "group_size: 8\nlr: [1e-5\nbeta: 0\n")],
     "{tmp}/broken.yaml line 3: not valid YAML"),
    ("yaml-not-a-mapping", lambda t: ["train", "--config", t.write("list.yaml", "- group_size\n- 8\n")],
     "{tmp}/list.yaml: expected a mapping of setting: value"),
    ("yaml-wrong-type", lambda t: ["train", "--config", t.write("type.yaml", "lr: [1, 2]\n")],
     "lr (in {tmp}/type.yaml): expected float, got [1, 2]"),
    ("yaml-missing", lambda t: ["train", "--config", t.tmp / "nowhere.yaml"], "{tmp}/nowhere.yaml: file not found (--config)"),
    # ---------------------------------------------------------------- data files
    ("data-missing", lambda t: t.train("--dataset", t.tmp / "missing.jsonl"), "{tmp}/missing.jsonl: file not found"),
    ("data-bad-json-line", lambda t: t.train("--dataset", _jsonl(t, "d.jsonl", _rows(3) + ['{"prompt": "x" "answer": 1}']
                                                                    + _rows(30))),
     "{tmp}/d.jsonl line 4: not valid JSON"),
    ("data-no-prompt-column", lambda t: t.train("--dataset", _jsonl(t, "q.jsonl", [{"question": "1+1=", "answer": "2"}] * 30)),
     "{tmp}/q.jsonl line 1: no prompt column 'prompt'"),
    ("data-csv-fields", lambda t: t.train("--dataset", t.write("d.csv", "prompt,answer\n1+1=,2\n2+2=,4,extra\n")),
     "{tmp}/d.csv line 3: 3 fields, but the header (line 1) names 2 columns"),
    ("data-unknown-type", lambda t: t.train("--dataset", t.write("d.txt", "1+1=\n")),
     "{tmp}/d.txt: unknown file type '.txt'"),
    ("data-too-small-for-eval", lambda t: t.train("--dataset", _jsonl(t, "small.jsonl", _rows(3)), "--eval-size", "200"),
     "{tmp}/small.jsonl has 3 rows"),
    ("data-empty", lambda t: t.train("--dataset", t.write("empty.jsonl", "")), "{tmp}/empty.jsonl: no rows; the dataset is empty"),
    # ---------------------------------------------------------------- tasks
    ("task-unknown", lambda t: t.train("--task", "arithmetik"), "task: unknown task 'arithmetik' (did you mean 'arithmetic'?)"),
    ("task-unknown-reasoning-gym", lambda t: t.train("--task", "reasoning_gym:countdwn"),
     "task: unknown reasoning-gym dataset 'countdwn'"),
    ("task-config-unknown-key", lambda t: t.train("--task", "reasoning_gym:basic_arithmetic",
                                                  "--task-config", '{"min_termz": 2}'),
     "task_config: reasoning-gym dataset 'basic_arithmetic' has no setting 'min_termz' (did you mean 'min_terms'?)"),
    # ---------------------------------------------------------------- models
    ("model-missing", lambda t: t.train("--model", t.tmp / "nowhere"), "model: {tmp}/nowhere does not exist"),
    ("model-empty-folder", lambda t: t.train("--model", (t.tmp / "empty").mkdir() or t.tmp / "empty"),
     "model: {tmp}/empty has no config.json"),
    ("model-truncated-weights", lambda t: (_truncate(t.copy_model() / "model.safetensors"), t.train("--model", t.tmp / "model"))[1],
     "model: a weights file in '{tmp}/model' is truncated or corrupt ({tmp}/model/model.safetensors)"),
    ("model-corrupt-weights", lambda t: ((t.copy_model() / "model.safetensors").write_bytes(b"\x08" + b"\xff" * 4000),
                                         t.train("--model", t.tmp / "model"))[1],
     "model: a weights file in '{tmp}/model' is truncated or corrupt ({tmp}/model/model.safetensors)"),
    ("model-wrong-architecture", lambda t: t.train("--model", _wrong_architecture(t)),
     "model: {tmp}/model is a BertModel (model_type 'bert'), not a causal language model"),
    ("model-weights-wrong-shapes", lambda t: t.train("--model", _wider_config(t)),
     "model: the weights in {tmp}/model do not fit its config.json: some have other shapes than the config describes"),
    ("model-no-eos-or-pad", lambda t: t.train("--model", _no_special_tokens(t)),
     "model: the tokenizer of {tmp}/model has no end-of-sequence token"),
    ("lora-unknown-target", lambda t: t.train("--lora-rank", "4", "--lora-target-modules", "nosuchmodule"),
     "lora_target_modules: Target modules {{'nosuchmodule'}} not found in the base model"),
    # ---------------------------------------------------------------- GGUF
    ("gguf-not-gguf", lambda t: t.train("--model", t.write("fake.gguf", "not a gguf file\n")),
     "model: cannot load a causal language model from '{tmp}/fake.gguf': {tmp}/fake.gguf does not start with "
     "the GGUF magic bytes"),
    ("gguf-file-not-in-folder", lambda t: t.train("--gguf-file", "missing.gguf"),
     "model: {model}/missing.gguf does not exist"),
    # ---------------------------------------------------------------- reward functions
    ("reward-unknown", lambda t: t.train("--reward", "exact_mach"), "reward: unknown reward 'exact_mach'; did you mean 'exact_match'?"),
    ("reward-bad-weight", lambda t: t.train("--reward", "exact_match:lots"), "reward: bad weight 'lots' in 'exact_match:lots'"),
    ("reward-file-missing", lambda t: t.train("--reward", "nothere.py:f"), "reward: cannot import 'nothere.py:f': file nothere.py not found"),
    ("reward-syntax-error", lambda t: t.train("--reward", (t.write("r.py", "def f(prompts, completions, **_):\n    return [1.0 for c in completions\n"), "r.py:f")[1]),
     "reward: cannot import r.py (from 'r.py:f'): SyntaxError: "),
    ("reward-no-such-function", lambda t: t.train("--reward", (_reward_file(t, "def score(p, c, **_):\n    return [0.0] * len(c)\n"), "r.py:scor")[1]),
     "reward: r.py has no function 'scor'; did you mean 'score'?"),
    ("reward-wrong-signature", lambda t: t.train("--reward", _reward_file(t, "def f(text):\n    return [0.0]\n")),
     "reward: r.py:f takes (text), but a reward function is called as f(prompts, completions, **columns)"),
    ("reward-wrong-length", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    return [0.0, 1.0]\n")),
     "reward function 'f' returned 2 values for 1 completion on sample "),
    ("reward-nan", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    return [math.nan] * len(c)\n")),
     "reward function 'f' returned nan (expected a finite number or None) on sample "),
    ("reward-strings", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    return ['good'] * len(c)\n")),
     "reward function 'f' returned 'good' (expected a finite number or None) on sample "),
    ("reward-raises", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    return [1 / 0 for _ in c]\n")),
     "reward function 'f' raised ZeroDivisionError: division by zero on sample "),
    ("reward-hangs", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    time.sleep(600)\n"),
                                       "--reward-timeout", "2"),
     "reward function 'f' timed out after 2 s (reward_timeout) on sample "),
    ("reward-kills-its-process", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    os.kill(os.getpid(), 9)\n")),
     "reward function 'f' ended its worker process (killed by signal 9, SIGKILL) on sample "),
    ("reward-exits", lambda t: t.train("--reward", _reward_file(t, "def f(p, c, **_):\n    os._exit(3)\n")),
     "reward function 'f' ended its worker process (exit code 3) on sample "),
    # ---------------------------------------------------------------- reward models
    ("reward-model-missing", lambda t: t.train("--reward-model", t.tmp / "nowhere"),
     "reward_model: cannot load a model config from {tmp}/nowhere: no such file or folder"),
    ("reward-model-two-labels", lambda t: t.train("--reward-model", _two_label_reward_model(t)),
     "reward_model: {tmp}/two-labels (LlamaForSequenceClassification) has num_labels=2"),
    # ---------------------------------------------------------------- checkpoints
    ("resume-no-checkpoint", lambda t: t.train("--resume", "latest"), "resume: no checkpoint in {tmp}/out/checkpoints"),
    ("resume-missing-folder", lambda t: t.train("--resume", t.tmp / "step-000009"), "resume: {tmp}/step-000009 does not exist"),
    ("resume-truncated-state", lambda t: (_truncate(t.copy_run() / "checkpoints/step-000002/trainer_state.pt"),
                                          _resume_copied(t))[1],
     "resume: {tmp}/run/checkpoints/step-000002 (named by {tmp}/run/checkpoints/latest) is damaged: trainer_state.pt has "),
    ("resume-missing-weights", lambda t: ((t.copy_run() / "checkpoints/step-000002/model/model.safetensors").unlink(),
                                          _resume_copied(t))[1],
     "resume: {tmp}/run/checkpoints/step-000002 (named by {tmp}/run/checkpoints/latest) is damaged: "
     "model/model.safetensors is missing"),
    ("resume-another-model", lambda t: _resume(t, "--resume", "latest", "--model", _other_model(t)),
     "resume: {tmp}/run/checkpoints/step-000002 holds weights of another model"),
    ("resume-another-lora-rank", lambda t: _resume(t, "--resume", "latest", "--lora-rank", "8"),
     "resume: {tmp}/run/checkpoints/step-000002 was written with lora_rank 0, and this run has lora_rank 8"),
    ("resume-nothing-left", lambda t: _resume(t, "--resume", "latest", "--max-steps", "2"),
     "resume: {tmp}/run/checkpoints/step-000002 is at step 2 and max_steps is 2: nothing left to do"),
    # ---------------------------------------------------------------- devices
    ("device-not-a-name", lambda t: t.train("--device", "gpu"), "device: 'gpu' is not a device name"),
    pytest.param("device-cuda-without-cuda", lambda t: t.train("--device", "cuda"),
                 "device: 'cuda' asked for, but this machine has no usable CUDA GPU",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")),
    pytest.param("device-gpu-index", lambda t: t.train("--device", "cuda:7"), "device: 'cuda:7'",
                 marks=pytest.mark.skipif(__import__("torch").cuda.device_count() > 7, reason="8 or more GPUs")),
    # ---------------------------------------------------------------- output folders
    ("output-dir-is-a-file", lambda t: t.train("--output-dir", t.write("notes.txt", "x")),
     "output_dir: {tmp}/notes.txt is a file, not a folder"),
    ("output-dir-under-a-file", lambda t: t.train("--output-dir", t.write("notes.txt", "x") / "run"),
     "output_dir: cannot create {tmp}/notes.txt/run"),
    ("output-dir-not-writable", lambda t: t.train("--output-dir", "/proc/grpo-run"), "output_dir: cannot create /proc/grpo-run"),
    ("output-dir-old-run", lambda t: t.train("--output-dir", t.copy_run()), "output_dir: {tmp}/run already holds a run (metrics.jsonl; continue it with --resume latest)"),
    ("output-dir-in-use", lambda t: (_hold(t.tmp / "out"), t.train())[1],
     f"output_dir: {{tmp}}/out is in use by another run (process {os.getpid()} on "),
    # ---------------------------------------------------------------- environments
    ("env-reset-returns-nothing", lambda t: t.train("--env", _env_file(t, "pass", "Reply(done=True, reward=1.0)")),
     "environment Env.reset returned NoneType None (did reset forget its return?) on episode 0 (prompt "),
    ("env-reset-returns-one-message", lambda t: t.train("--env", _env_file(t, "return {'role': 'user', 'content': 'hi'}",
                                                                           "Reply(done=True, reward=1.0)")),
     "environment Env.reset returned dict {{'role': 'user', 'content': 'hi'}} on episode 0 (prompt "),
    ("env-reply-messages-text", lambda t: t.train("--env", _env_file(t, "return [{'role': 'user', 'content': 'hi'}]",
                                                                     "Reply(messages='text')")),
     "environment Env.step returned a Reply whose messages are str 'text'; expected a list of "),
    ("env-reward-not-a-number", lambda t: t.train("--env", _env_file(t, "return [{'role': 'user', 'content': 'hi'}]",
                                                                     "Reply(done=True, reward='high')")),
     "environment Env.step returned a Reply whose reward is str 'high'; expected a finite number or None on "),
    # ---------------------------------------------------------------- lengths
    ("prompt-longer-than-context", lambda t: t.train("--dataset", _jsonl(t, "d.jsonl", _rows(9) + [
        {"prompt": "1+" * 100 + "1=", "answer": "101"}])),
     "prompts: 1 of the 10 training prompts are longer than the model's context (64 positions) less max_new_tokens "
     "(6): the longest has "),
    ("max-new-tokens-past-context", lambda t: t.train("--max-new-tokens", "64"),
     "max_new_tokens: 64 leaves no room for a prompt in the model's context of 64 positions"),
    # ---------------------------------------------------------------- settings' types
    ("yaml-list-for-text", lambda t: ["train", "--config", t.write("c.yaml", "system_prompt: [be brief, be right]\n"),
                                      "--model", t.model, *FAST],
     "system_prompt (in {tmp}/c.yaml): expected text, got a list: ['be brief', 'be right']"),
    # ---------------------------------------------------------------- distributed
    ("nproc-zero", lambda t: t.train("--nproc", "0"), "--nproc: must be >= 1, got 0"),
    ("nproc-uneven-prompts", lambda t: t.train("--nproc", "3"),
     "prompts_per_step: 2 prompts do not split evenly over 3 processes"),
    ("nproc-bad-setting", lambda t: t.train("--nproc", "2", "--group-size", "1"),
     "group_size (in command line): must be >= 2, got 1"),
    pytest.param("nproc-device-without-cuda", lambda t: t.train("--nproc", "2", "--device", "cuda"),
                 "device: 'cuda' asked for, but this machine has no usable CUDA GPU",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")),
]


def _ids(cases):
    return [c.values[0] if hasattr(c, "values") else c[0] for c in cases]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A 2-step run of the tiny model with a checkpoint after each step."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = subprocess.run([sys.executable, "-m", "grpo", "train", "--model", str(tiny_model_dir), *FAST,
                           "--save-every", "1", "--output-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _grpo(args, cwd: Path, debug: bool = False, timeout: int = 300):
    env = {**os.environ, "GRPO_CACHE": str(cwd / "cache")}
    env.pop("GRPO_DEBUG", None)
    cmd = [sys.executable, "-m", "grpo", *(["--debug"] if debug else []), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _unpack(case):
    if hasattr(case, "values"):          # pytest.param(...): skipped here when its skipif holds
        skip = any(m.name == "skipif" and m.args and m.args[0] for m in case.marks)
        return (*case.values, skip)
    return (*case, False)


@pytest.fixture(scope="module")
def outcomes(tiny_model_dir, finished_run, tmp_path_factory):
    """Every case run once, as many at a time as the machine has cores: {id: (process, its folder)}.
    (Each is a fresh `grpo` process; most of its time is importing torch and transformers.)"""
    from concurrent.futures import ThreadPoolExecutor
    jobs = {}
    for case in CASES:
        cid, setup, _, skip = _unpack(case)
        if skip:
            continue
        tmp = tmp_path_factory.mktemp(cid)
        jobs[cid] = (setup(T(tmp, Path(tiny_model_dir), finished_run)), tmp)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        running = {cid: pool.submit(_grpo, args, tmp) for cid, (args, tmp) in jobs.items()}
        return {cid: (f.result(), jobs[cid][1]) for cid, f in running.items()}


@pytest.mark.parametrize("case, setup, message", CASES, ids=_ids(CASES))
def test_a_bad_input_is_one_line(case, setup, message, tiny_model_dir, outcomes):
    proc, tmp_path = outcomes[case]
    expected = message.format(tmp=tmp_path, model=tiny_model_dir)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not re.search(r"\d+it/s\]|s/it\]", line)]
    assert lines and lines[-1].startswith(f"grpo train: error: {expected}"), \
        f"expected: grpo train: error: {expected}\ngot:\n" + "\n".join(lines[-5:])
    assert sum("error:" in line for line in lines) == 1, "\n".join(lines)      # once, not once per process


def test_a_refused_resume_leaves_the_runs_settings_as_they_were(outcomes, finished_run):
    """The resume with another model fails when the checkpoint's weights are loaded, after the
    settings were resolved: config.yaml (what "continue with --config" names) is not rewritten."""
    proc, tmp_path = outcomes["resume-another-model"]
    assert proc.returncode == 2
    assert (tmp_path / "run" / "config.yaml").read_text() == (finished_run / "config.yaml").read_text()


def test_every_case_is_in_the_troubleshooting_table():
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = [case for case in _ids(CASES) if f"`{case}`" not in text]
    assert not missing, f"cases without a row in docs/troubleshooting.md: {missing}"
    assert len(CASES) >= 40


def test_debug_shows_the_traceback(tmp_path):
    proc = _grpo(["train", "--group-size", "1"], tmp_path, debug=True)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("grpo train: error: group_size")
    env_proc = subprocess.run([sys.executable, "-m", "grpo", "train", "--group-size", "1"], cwd=tmp_path,
                              env={**os.environ, "GRPO_DEBUG": "1"}, capture_output=True, text=True, timeout=120)
    assert "Traceback (most recent call last)" in env_proc.stderr
