"""The `grpo` command as a user runs it: a subprocess, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

TINY_FLAGS = ["--max-steps", "2", "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6",
              "--eval-size", "8", "--lr", "1e-3", "--device", "cpu"]


@pytest.fixture
def grpo(tmp_path):
    """grpo(*args) -> CompletedProcess of `python -m grpo args`, with a private GRPO_CACHE."""
    env = {**os.environ, "GRPO_CACHE": str(tmp_path / "cache")}

    def run(*args, timeout=600):
        return subprocess.run([sys.executable, "-m", "grpo", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def test_train_help_lists_the_settings(grpo):
    out = ok(grpo("train", "--help")).stdout
    for flag in ["--preset", "--group-size", "--prompts-per-step", "--max-new-tokens", "--min-new-tokens",
                 "--temperature", "--beta", "--gamma", "--epsilon", "--lr", "--max-steps", "--seed",
                 "--output-dir", "--config", "--loss-aggregation", "--token-norm", "--no-token-norm"]:
        assert f"{flag} " in out or f"{flag}\n" in out, flag
    assert "seed, deepseekmath, dr_grpo, dapo, gspo, trl" in out or "{seed,deepseekmath,dr_grpo,dapo,gspo,trl}" in out


@pytest.mark.slow
def test_train_writes_every_output(grpo, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = ok(grpo("train", "--model", tiny_model_dir, *TINY_FLAGS, "--output-dir", out))
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "completions.jsonl", "model/config.json"]:
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 8
    assert "held-out accuracy" in proc.stdout and str(out) in proc.stdout
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == str(tiny_model_dir) and saved["preset"] == "seed" and saved["group_size"] == 4


@pytest.mark.slow
def test_flags_override_the_config_file(grpo, tiny_model_dir, tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "preset": "deepseekmath", "beta": 0.3,
                                        "lr": 0.01, "group_size": 8, "max_new_tokens": 6, "prompts_per_step": 2,
                                        "max_steps": 1, "eval_size": 0, "device": "cpu"}))
    out = tmp_path / "run"
    ok(grpo("train", "--config", cfg_file, "--beta", "0.1", "--group-size", "4", "--no-save-model",
            "--output-dir", out))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["beta"] == 0.1 and saved["group_size"] == 4        # flags win
    assert saved["lr"] == 0.01 and saved["max_steps"] == 1          # the file's values stay
    assert saved["preset"] == "deepseekmath" and saved["kl_estimator"] == "k3"    # the file's preset
    assert saved["save_model"] is False and not (out / "model").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--group-size", "1"], "group_size (in command line): must be >= 2, got 1"),
    (["--lr", "abc"], "lr (in command line): expected float, got 'abc'"),
    (["--kl-estimator", "k9"], "kl_estimator (in command line): must be one of k1, k2, k3, full"),
])
def test_bad_value_exits_2_with_one_line(grpo, tmp_path, args, message):
    out = tmp_path / "never"
    proc = grpo("train", "--model", "does-not-matter", *args, "--output-dir", out)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"grpo train: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def _one_line_error(proc, message):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "it/s]" not in line]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith(f"grpo train: error: {message}"), proc.stderr[-3000:]


@pytest.mark.parametrize("device, message", [
    ("gpu", "device: 'gpu' is not a device name"),
    pytest.param("cuda", "device: 'cuda' asked for, but this machine has no usable CUDA GPU",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")),
    pytest.param("cuda:7", "device: 'cuda:7'",
                 marks=pytest.mark.skipif(__import__("torch").cuda.device_count() > 7, reason="8 or more GPUs")),
])
@pytest.mark.slow
def test_a_device_this_machine_lacks_is_one_line(grpo, tiny_model_dir, tmp_path, device, message):
    _one_line_error(grpo("train", "--model", tiny_model_dir, *TINY_FLAGS[:-2], "--device", device,
                         "--output-dir", tmp_path / "run"), message)


@pytest.mark.slow
def test_an_output_dir_that_is_a_file_is_one_line(grpo, tiny_model_dir, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    _one_line_error(grpo("train", "--model", tiny_model_dir, *TINY_FLAGS, "--output-dir", tmp_path / "taken"),
                    f"output_dir: {tmp_path / 'taken'} is a file, not a folder")


@pytest.mark.slow
def test_a_truncated_weights_file_is_one_line_naming_it(grpo, tiny_model_dir, tmp_path):
    import shutil
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _one_line_error(grpo("train", "--model", broken, *TINY_FLAGS, "--output-dir", tmp_path / "run"),
                    f"model: a weights file in '{broken}' is truncated or corrupt ({weights})")


def test_unknown_flag_exits_2(grpo):
    proc = grpo("train", "--group-szie", "4")
    assert proc.returncode == 2 and "--group-szie" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_explain_json_is_one_object(grpo):
    proc = ok(grpo("explain", "--json"))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    for key in ["preset", "settings", "rewards", "lengths", "scaled_rewards", "baseline_values",
                "sequence_advantages", "token_advantages", "normalized_token_advantages", "loss"]:
        assert key in res, key
    # explain uses the algorithm's defaults (the article), never the demo's preset
    assert res["preset"] == "seed" and res["rewards"] == [[0.8, 0.6]] and res["lengths"] == [[3, 4]]
    for key in ["advantage", "ratio", "policy_loss", "kl", "total", "weight"]:
        assert key in res["loss"], key


@pytest.mark.slow
def test_eval_json(grpo, tiny_model_dir):
    proc = ok(grpo("eval", "--model", tiny_model_dir, "--eval-size", "8", "--device", "cpu", "--json"))
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n"] == 8 and res["task"] == "arithmetic" and res["model"] == str(tiny_model_dir)
    assert 0.0 <= res["accuracy"] <= 1.0 and "mean_reward" in res


@pytest.mark.slow
def test_eval_of_an_environment(grpo, tiny_model_dir):
    """grpo eval --env: held-out episodes, greedy, then sampled with pass@k."""
    proc = ok(grpo("eval", "--model", tiny_model_dir, "--env", "retry", "--env-max-turns", "2", "--eval-size", "6",
                   "--max-new-tokens", "4", "--device", "cpu", "--json"))
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["env"] == "retry" and res["n"] == 6 and res["samples"] == 1 and res["decoding"] == "greedy"
    assert 1.0 <= res["turns"] <= 2.0 and 0.0 <= res["success"] <= 1.0
    proc = ok(grpo("eval", "--model", tiny_model_dir, "--env", "retry", "--env-max-turns", "2", "--eval-size", "6",
                   "--max-new-tokens", "4", "--samples", "3", "--device", "cpu", "--json"))
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["samples"] == 3 and res["success"] <= res["pass@3"] <= 1.0


@pytest.mark.slow
def test_demo_end_to_end_with_a_fresh_cache(grpo, tmp_path):
    """No --model: builds the demo model (the real supervised warm start), caches it, trains 2 steps."""
    cache = tmp_path / "cache"
    assert not cache.exists()
    out = tmp_path / "demo-run"
    proc = ok(grpo("train", "--max-steps", "2", "--eval-size", "16", "--device", "cpu", "--output-dir", out))
    models = [p for p in cache.glob("demo-*") if (p / "config.json").is_file()]
    assert len(models) == 1 and not list(cache.glob(".building-*"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] is None and saved["preset"] == "dr_grpo"     # the demo defaults
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(models[0])
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 16
    assert "done: held-out accuracy" in proc.stdout


@pytest.mark.slow
def test_a_custom_reward_dataset_reports_that_reward_and_evaluates_during_training(grpo, tiny_model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(40)))
    (tmp_path / "my_reward.py").write_text(
        "def digits(prompts, completions, **_):\n"
        "    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]\n")
    out = tmp_path / "run"
    proc = ok(grpo("train", "--model", tiny_model_dir, "--dataset", data, "--prompt-column", "question",
                   "--reward", f"{tmp_path / 'my_reward.py'}:digits", "--eval-every", "1", "--max-steps", "3",
                   "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--eval-size", "8",
                   "--device", "cpu", "--output-dir", out))
    summary = json.loads((out / "summary.json").read_text())
    for key in ("eval_before", "eval_after"):
        assert "accuracy" not in summary[key]                  # a dataset defines no accuracy of its own
        assert 0.0 <= summary[key]["mean_reward"] <= 1.0 and "pass/digits" in summary[key]
    b, a = summary["eval_before"]["mean_reward"], summary["eval_after"]["mean_reward"]
    assert f"done: held-out reward {b:.3f} -> {a:.3f}" in proc.stdout
    assert "held-out before: reward" in proc.stdout
    rows = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r["when"]) for r in rows] == [(0, "before"), (1, "during"), (2, "during"), (3, "after")]
    assert rows[0]["mean_reward"] == b and rows[-1]["mean_reward"] == a


def test_the_heap_policy_is_set_for_train_on_a_cpu_only(tiny_model_dir, tmp_path, monkeypatch):
    """glibc's allocation policy (grpo/fast/heap.py) is `grpo train`'s on a CPU; --no-heap-reuse,
    another device and the other commands keep glibc's own."""
    from grpo import cli
    calls = []
    monkeypatch.setattr(cli, "_process_memory_policy", lambda: calls.append(1))
    run = ["train", "--model", str(tiny_model_dir), "--max-steps", "1", "--eval-size", "0", "--no-save-model",
           "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "4"]
    assert cli.main(run + ["--device", "cpu", "--output-dir", str(tmp_path / "a")]) == 0
    assert calls == [1]
    assert cli.main(run + ["--device", "cpu", "--no-heap-reuse", "--output-dir", str(tmp_path / "b")]) == 0
    assert cli.main(["explain", "--json"]) == 0
    assert calls == [1]
    import torch
    from grpo import device, train
    monkeypatch.setattr(device, "pick_device", lambda name: torch.device("cuda"))   # a run on a GPU ...
    monkeypatch.setattr(train, "train", lambda cfg, **_: {"output_dir": str(tmp_path / "c")})   # ... not started here
    assert cli.main(run + ["--device", "cuda", "--output-dir", str(tmp_path / "c")]) == 0
    assert calls == [1]


def test_setting_types_are_resolved_once(monkeypatch):
    """Each flag's type comes from TrainConfig's annotations, resolved once per process: resolving
    them per field compiled every annotation again (tens of thousands of calls per run)."""
    import typing
    from grpo import config
    from grpo.config import checks
    checks._hints.cache_clear()
    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(2):
        for name in config.FIELDS:
            config.field_type(name)
    assert len(calls) == 1
