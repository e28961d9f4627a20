"""Training from Python: grpo.train (the native API) and grpo.GRPOTrainer / GRPOConfig (TRL's
interface), checked against the `grpo train` command line doing the same work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import grpo
from grpo import demo
from grpo.api import trl_config
from grpo.api.trl_config import GRPOConfig, plan, to_settings
from grpo.cli import main as cli_main
from grpo.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROWS = [{"prompt": f"{a}+{a}=", "answer": str(2 * a), "target_len": a % 5 + 1} for a in range(40)]
CHAT_ROWS = [{"prompt": [{"role": "user", "content": f"{a}+{a}="}], "answer": str(2 * a), "target_len": a % 5 + 1}
             for a in range(40)]

# Two rewards that read a dataset column, written once for TRL's calling convention (keywords, completions
# as message lists for conversational prompts, token ids given) and once for grpo's own.
TRL_REWARDS = '''
def _text(c):
    return c[-1]["content"] if isinstance(c, list) else c

def correct(prompts, completions, answer, **kw):
    assert "trainer_state" in kw and "completion_ids" in kw and "target_len" in kw
    return [1.0 if _text(c).strip().startswith(a) else 0.0 for c, a in zip(completions, answer)]

def near_length(prompts, completions, completion_ids, target_len, **kw):
    return [-abs(len(ids) - t) / 5.0 for ids, t in zip(completion_ids, target_len)]
'''
GRPO_REWARDS = '''
def correct(prompts, completions, answer, **kw):
    return [1.0 if c.strip().startswith(a) else 0.0 for c, a in zip(completions, answer)]

def near_length(prompts, completions, completion_length, target_len, **kw):
    return [-abs(n - t) / 5.0 for n, t in zip(completion_length, target_len)]
'''


def _module(tmp_path: Path, name: str, text: str):
    import importlib.util
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _cli_run(tmp_path: Path, model_dir, settings: dict, rows: list[dict], name: str) -> Path:
    """The same run through `grpo train`: the mapped settings in a YAML file, the rows in a JSONL
    file, grpo-style rewards from a file."""
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, rewards = _module(tmp_path, f"{name}_rewards", GRPO_REWARDS)
    out = tmp_path / f"{name}-cli"
    values = {k: v for k, v in settings.items() if k not in ("output_dir", "resume")}
    values.update(model=str(model_dir), dataset=str(data), output_dir=str(out),
                  reward=[f"{rewards}:correct:1.0", f"{rewards}:near_length:0.5"])
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(values))
    assert cli_main(["train", "--config", str(tmp_path / f"{name}.yaml")]) == 0
    return out


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory):
    """The demo's model at its full size (untrained: its warm start is not what this tests)."""
    path = tmp_path_factory.mktemp("demo-model")
    tok = demo.build_tokenizer()
    demo.build_model(tok, demo.RECIPE).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _trl_args(out, **fields) -> GRPOConfig:
    base = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=6, max_steps=3,
                logging_steps=1, learning_rate=1e-3, reward_weights=[1.0, 0.5], use_cpu=True, bf16=False,
                save_strategy="no", seed=3)
    return GRPOConfig(str(out), **{**base, **fields})


@pytest.mark.slow
@pytest.mark.parametrize("which, rows", [("tiny", ROWS), ("demo", CHAT_ROWS)], ids=["tiny-standard", "demo-chat"])
def test_a_trl_script_gives_the_command_lines_metrics(which, rows, tiny_model_dir, demo_model_dir, tmp_path):
    """A TRL script (Dataset with a column the rewards read, two weighted rewards, a callback) through
    grpo.GRPOTrainer writes the same metrics.jsonl as `grpo train` with the mapped settings."""
    from datasets import Dataset
    from transformers import TrainerCallback
    model_dir = tiny_model_dir if which == "tiny" else demo_model_dir
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)
    seen = []

    class Watch(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append((state.global_step, logs["reward"], logs["reward/mean"], logs["learning_rate"]))

    out = tmp_path / "api"
    trainer = grpo.GRPOTrainer(model=str(model_dir), reward_funcs=[mod.correct, mod.near_length],
                               args=_trl_args(out), train_dataset=Dataset.from_list(rows), callbacks=[Watch])
    result = trainer.train()
    settings, p = trainer.settings()
    assert (p.prompts_per_step, settings["group_size"], p.max_steps) == (2, 4, 3)
    cli = _cli_run(tmp_path, model_dir, settings, rows, "same")
    api_rows, cli_rows = _metrics(out), _metrics(cli)
    assert len(api_rows) == 3 and api_rows == cli_rows
    assert "reward/correct/mean" in api_rows[0] and "reward/near_length/mean" in api_rows[0]
    assert [s[0] for s in seen] == [1, 2, 3] and result.global_step == 3
    assert [s[1] for s in seen] == [r["reward/mean"] for r in api_rows] == [s[2] for s in seen]
    assert trainer.state.log_history[-1]["train_loss"] == pytest.approx(
        sum(r["loss"] for r in api_rows) / 3)


@pytest.mark.slow
def test_lora_through_peft_config_and_save_model(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)
    out = tmp_path / "api"
    trainer = grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[mod.correct, mod.near_length],
                               args=_trl_args(out, max_steps=2), train_dataset=Dataset.from_list(ROWS),
                               peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    settings, _ = trainer.settings()
    assert (settings["lora_rank"], settings["lora_alpha"], settings["lora_target_modules"]) == (4, 8.0, "q_proj,v_proj")
    assert _metrics(out) == _metrics(_cli_run(tmp_path, tiny_model_dir, settings, ROWS, "lora"))
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["r"] == 4


@pytest.mark.slow
def test_a_callback_stops_the_run_and_train_resumes_it_exactly(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    def trainer(out, callbacks=()):
        return grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[mod.correct, mod.near_length],
                                args=_trl_args(out, max_steps=4, save_strategy="steps", save_steps=1),
                                train_dataset=Dataset.from_list(ROWS), callbacks=list(callbacks))
    whole = tmp_path / "whole"
    trainer(whole).train()
    parts = tmp_path / "parts"
    first = trainer(parts, [StopAt2])
    first.train()
    assert len(_metrics(parts)) == 2 and first.state.global_step == 2
    second = trainer(parts)
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 4
    assert _metrics(parts) == _metrics(whole)


@pytest.mark.slow
def test_grpo_train_takes_python_objects_like_the_command_line_takes_files(tiny_model_dir, tmp_path):
    """The native API: a list of rows and two functions, with weights, equal to the command line's run."""
    mod, _ = _module(tmp_path, "grpo_rewards", GRPO_REWARDS)
    settings = dict(max_steps=2, prompts_per_step=2, group_size=4, max_new_tokens=6, eval_size=4, lr=1e-3,
                    device="cpu", reward_workers=0, preset="deepseekmath", seed=5)
    steps = []

    class Count:
        def on_step_end(self, step, metrics):
            steps.append((step, metrics["reward/mean"]))

    out = tmp_path / "api"
    summary = grpo.fit(settings, model=str(tiny_model_dir), dataset=ROWS, output_dir=str(out),
                         rewards={"correct": mod.correct, "near_length": (mod.near_length, 0.5)}, callbacks=[Count()])
    assert summary["eval_before"]["n"] == 4 and "pass/correct" in summary["eval_after"]
    cli = _cli_run(tmp_path, tiny_model_dir, {**settings, "eval_size": 4}, ROWS, "native")
    assert _metrics(out) == _metrics(cli)
    assert [s for s, _ in steps] == [1, 2] and [r for _, r in steps] == [m["reward/mean"] for m in _metrics(out)]


# ------------------------------------------------------------------ the mapping, without training
def test_trl_batch_arithmetic_maps_onto_groups_minibatches_and_steps():
    args = GRPOConfig("o", per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=4,
                      num_generations=8, num_iterations=2, max_steps=10)
    p = plan(args, train_rows=100)
    # 4 x 4 = 16 completions a generation (2 prompts x G 8), 2 optimizer steps each pass, 2 passes
    assert (p.prompts_per_step, p.minibatches, p.optimizer_steps, p.max_steps) == (2, 2, 4, 3)
    epochs = plan(GRPOConfig("o", per_device_train_batch_size=8, num_generations=4, num_train_epochs=2.0),
                  train_rows=30)
    assert (epochs.prompts_per_step, epochs.max_steps) == (2, 30)
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        plan(GRPOConfig("o", per_device_train_batch_size=6, num_generations=4), train_rows=10)


@pytest.mark.parametrize("loss_type, level, aggregation, policy", [
    ("grpo", "token", "seq_mean_token_mean", "clip"), ("dapo", "token", "token_mean", "clip"),
    ("dr_grpo", "token", "seq_mean_token_sum_norm", "clip"), ("bnpo", "token", "token_mean", "clip"),
    ("cispo", "token", "token_mean", "cispo"), ("sapo", "token", "seq_mean_token_mean", "sapo"),
    ("grpo", "sequence", "seq_mean_token_mean", "gspo")])
def test_loss_types_map_onto_aggregation_and_policy_loss(loss_type, level, aggregation, policy):
    s, _ = to_settings(GRPOConfig("o", loss_type=loss_type, importance_sampling_level=level), train_rows=64)
    assert (s["loss_aggregation"], s["policy_loss"]) == (aggregation, policy)
    cfg = grpo.api.resolve_config(s, demo=False)         # every mapped value is a valid setting
    assert cfg.preset == "trl" and cfg.kl_estimator == "k3" and cfg.ratio_vs == "old"


def test_trl_defaults_are_kept_where_they_differ_from_grpos():
    s, _ = to_settings(GRPOConfig("o"), train_rows=64)
    cfg = grpo.api.resolve_config(s, demo=False)
    assert (cfg.lr, cfg.adam_beta2, cfg.max_new_tokens, cfg.group_size, cfg.seed) == (1e-6, 0.999, 512, 8, 42)
    assert cfg.lr_schedule == "linear" and cfg.gradient_checkpointing is True and cfg.beta == 0.0
    assert cfg.loss_aggregation == "token_mean" and cfg.reward_scaling == "group" and cfg.kl_ratio_weight
    assert cfg.save_model is False and cfg.eval_size == 0 and cfg.save_every == 500
    assert cfg.max_steps == 3 * 64                      # 3 epochs of 64 prompts, one prompt a step (8 / G 8)


def _non_default(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    return "something"


@pytest.mark.parametrize("field", sorted(trl_config.UNSUPPORTED))
def test_every_unsupported_trl_field_is_one_error_naming_it(field):
    defaults = trl_config.all_defaults()
    if field not in defaults:
        pytest.skip(f"{field} is not a field of this transformers' TrainingArguments")
    with pytest.raises(ConfigError) as e:
        GRPOConfig("o", **{field: _non_default(defaults[field])})
    assert f"GRPOConfig: {field}=" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fields, words", [
    (dict(loss_type="vespo"), "loss_type='vespo' is not supported"),
    (dict(fp16=True), "fp16=True"), (dict(lr_scheduler_type="polynomial"), "lr_scheduler_type"),
    (dict(optim="adafactor"), "optim='adafactor'"), (dict(max_prompt_length=256), "max_prompt_length"),
    (dict(learning_rat=1e-5), "did you mean 'learning_rate'"), (dict(hub_model_id="me/x"), "hub_model_id"),
    (dict(grpo_settings={"grup_size": 4}), "did you mean 'group_size'"),
])
def test_other_refused_fields(fields, words):
    with pytest.raises(ConfigError, match=None) as e:
        GRPOConfig("o", **fields)
    assert words in str(e.value)


def test_trainer_arguments_grpo_does_not_take_are_refused(tiny_model_dir):
    from datasets import Dataset
    with pytest.raises(ConfigError, match="tools is not supported"):
        grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=len, args=GRPOConfig("o"),
                         train_dataset=Dataset.from_list(ROWS), tools=[len])
    with pytest.raises(ConfigError, match="args must be a grpo.GRPOConfig"):
        grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=len, args=dict(output_dir="o"),
                         train_dataset=Dataset.from_list(ROWS))


def test_native_api_checks_its_objects(tiny_model_dir):
    with pytest.raises(ConfigError, match="rewards: expected a function"):
        grpo.api.build_inputs(model=str(tiny_model_dir), rewards=[42])
    with pytest.raises(ConfigError, match="unknown setting 'group_sise'"):
        grpo.api.build_inputs(model=str(tiny_model_dir), group_sise=4)
    with pytest.raises(ConfigError, match="callbacks: object has none"):
        grpo.api.build_inputs(model=str(tiny_model_dir), callbacks=[object()])
    with pytest.raises(ConfigError, match="train_dataset row 2"):
        grpo.api.build_inputs(model=str(tiny_model_dir), dataset=[{"prompt": "a"}, {"question": "b"}], eval_size=0)
    cfg, inputs = grpo.api.build_inputs(model=str(tiny_model_dir), eval_size=2,
                                        dataset={"prompt": [f"{a}+{a}=" for a in range(8)],
                                                 "answer": [str(2 * a) for a in range(8)]})
    assert (inputs.task.train_size, inputs.task.heldout_size) == (6, 2)
    assert inputs.task.row(1, True) == {"prompt": "7+7=", "answer": "14"}
    assert cfg.model == str(tiny_model_dir) and cfg.dataset is None


OTHER_FIELDS = sorted(set(trl_config.training_arguments_defaults()) - trl_config.MAPPED - trl_config.NO_EFFECT
                      - set(trl_config.UNSUPPORTED) - {"output_dir"})


@pytest.mark.parametrize("field", OTHER_FIELDS)
def test_every_other_training_arguments_field_set_is_refused_by_name(field):
    value = _non_default(trl_config.all_defaults()[field])
    with pytest.raises(ConfigError) as e:
        GRPOConfig("o", **{field: value})
    assert f"GRPOConfig: {field}=" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_evaluation_during_training_and_after(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import TrainerCallback
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)
    evals = []

    class Evals(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kw):
            evals.append((state.global_step, metrics["eval_reward"]))

    trainer = grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[mod.correct, mod.near_length],
                               args=_trl_args(tmp_path / "api", max_steps=4, eval_strategy="steps", eval_steps=2),
                               train_dataset=Dataset.from_list(ROWS[:30]), eval_dataset=Dataset.from_list(ROWS[30:]),
                               callbacks=[Evals])
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "api" / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r["when"]) for r in rows] == [(0, "before"), (2, "during"), (4, "after")]
    assert [e[1] for e in evals] == [r["mean_reward"] for r in rows] and all(r["n"] == 10 for r in rows)
    after = trainer.evaluate()
    assert set(after) >= {"eval_reward", "eval_pass/correct", "eval_pass/near_length"}
    assert trainer.state.log_history[-1]["eval_reward"] == after["eval_reward"] and len(evals) == 4


@pytest.mark.slow
def test_trl_style_rewards_run_contained_in_workers_when_asked(tiny_model_dir, tmp_path):
    """reward_workers > 0: the functions are imported by the workers from their file and still called
    with TRL's keywords; the metrics equal the in-process run's."""
    from datasets import Dataset
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)
    outs = {}
    for workers in (0, 2):
        outs[workers] = tmp_path / f"w{workers}"
        trainer = grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[mod.correct, mod.near_length],
                                   args=_trl_args(outs[workers], max_steps=2, grpo_settings={"reward_workers": workers}),
                                   train_dataset=Dataset.from_list(ROWS))
        trainer.train()
    config = yaml.safe_load((outs[2] / "config.yaml").read_text())
    assert config["reward_workers"] == 2
    assert _metrics(outs[0]) == _metrics(outs[2])


def test_a_reward_defined_in_a_function_cannot_go_to_a_worker(tiny_model_dir):
    def inner(prompts, completions, **_):
        return [0.0] * len(completions)
    with pytest.raises(ConfigError, match="cannot run in a reward worker"):
        cfg, inputs = grpo.api.build_inputs(model=str(tiny_model_dir), rewards=[inner], reward_workers=2)
        from grpo.rewards import build_reward_fns
        build_reward_fns(cfg, None, extra=inputs.rewards)


@pytest.mark.slow
def test_a_reward_model_path_among_the_reward_funcs(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from test_reward_model import save_model
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)
    rm = save_model(tmp_path / "rm", "gpt2", pad=True, chat=True)
    trainer = grpo.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[mod.correct, str(rm)],
                               args=_trl_args(tmp_path / "api", max_steps=2), train_dataset=Dataset.from_list(ROWS))
    trainer.train()
    for r in _metrics(tmp_path / "api"):
        assert r["reward/mean"] == pytest.approx(r["reward/correct/mean"] + 0.5 * r["reward/reward_model/mean"],
                                                 abs=1e-4)


@pytest.mark.slow
def test_a_loaded_model_and_tokenizer_train_as_their_path_does(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    mod, _ = _module(tmp_path, "trl_rewards", TRL_REWARDS)
    outs = []
    for given in ("path", "objects"):
        out = tmp_path / given
        kw = (dict(model=str(tiny_model_dir)) if given == "path" else
              dict(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   processing_class=AutoTokenizer.from_pretrained(tiny_model_dir)))
        grpo.GRPOTrainer(reward_funcs=[mod.correct, mod.near_length], args=_trl_args(out, max_steps=2),
                         train_dataset=Dataset.from_list(ROWS), **kw).train()
        outs.append(_metrics(out))
    assert len(outs[0]) == 2 and outs[0] == outs[1]
