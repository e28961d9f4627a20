"""Metrics sinks: the interface, and each tracker of --report-to read back with its own package's reader.

One short training run (a subprocess, as a user runs `grpo train --report-to ...`) logs to all four
trackers at once; the tests then open what each wrote with that tracker's own reader: TensorBoard's
EventAccumulator on the event files, the MLflow client on the local store, `wandb leet inspect
--json` on the offline run, trackio's SQLiteStorage on its local store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from grpo import sinks
from grpo.config import ConfigError, resolve
from grpo.sinks import Sink, Sinks, flat_numbers

STEPS = 3


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, tmp_path_factory):
    """A 3-step run with an evaluation every step, logged to every tracker; (output folder, trackio dir)."""
    root = tmp_path_factory.mktemp("tracked")
    out, trackio_dir = root / "run", root / "trackio"
    env = {**os.environ, "GRPO_CACHE": str(root / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TRACKIO_DIR": str(trackio_dir), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "grpo", "train", "--model", str(tiny_model_dir), "--max-steps", str(STEPS),
                           "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--eval-size", "8",
                           "--eval-every", "1", "--device", "cpu", "--report-to", "tensorboard,wandb",
                           "--report-to", "mlflow", "--report-to", "trackio", "--project", "grpo-test",
                           "--run-name", "tracked", "--output-dir", str(out)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, trackio_dir, proc


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _evals(out):
    return [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_step_eval_config_and_summary(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _, proc = tracked_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    rows = _metrics(out)
    reward = [(e.step, e.value) for e in acc.Scalars("reward/mean")]
    assert reward == [(r["step"], pytest.approx(r["reward/mean"], rel=1e-6, abs=1e-7)) for r in rows]
    assert [e.step for e in acc.Scalars("eval/mean_reward")] == [0, 1, 2, 3]
    assert acc.Scalars("eval/mean_reward")[-1].value == pytest.approx(_evals(out)[-1]["mean_reward"], rel=1e-6)
    tags = acc.Tags()["tensors"]
    assert {"config/text_summary", "summary/text_summary", "completions/text_summary"} <= set(tags)
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "group_size: 4" in config_text and "report_to:" in config_text
    summary_text = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"eval_after"' in summary_text
    assert f"tensorboard --logdir {out / 'tensorboard'}" in proc.stdout


@pytest.mark.slow
def test_mlflow_local_store_holds_params_metrics_and_summary(tracked_run):
    from mlflow.tracking import MlflowClient
    out, _, _ = tracked_run
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert client.get_experiment(run.info.experiment_id).name == "grpo-test"
    assert run.data.params["group_size"] == "4" and run.data.params["max_steps"] == str(STEPS)
    history = client.get_metric_history(run_id, "reward/mean")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], pytest.approx(r["reward/mean"])) for r in _metrics(out)]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/mean_reward")) == [0, 1, 2, 3]
    (out / "dl").mkdir()
    local = client.download_artifacts(run_id, "summary.json", str(out / "dl"))
    assert json.loads(open(local).read())["steps"] == STEPS


@pytest.mark.slow
def test_wandb_offline_run_read_back_with_wandb_itself(tracked_run):
    out, _, _ = tracked_run
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]
    run_dirs = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 1
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dirs[0])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    history = [r["history"] for r in records if r["type"] == "history"]
    steps = {h["item"]["_step"]: h["item"] for h in history}       # one record per step, keys as logged
    rows = _metrics(out)
    assert [steps[r["step"]]["reward/mean"] for r in rows] == [pytest.approx(r["reward/mean"]) for r in rows]
    assert steps[0]["eval/mean_reward"] == pytest.approx(_evals(out)[0]["mean_reward"])
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["display_name"] == "tracked" and run["project"] == "grpo-test"
    summary = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_dirs[0])],
                             capture_output=True, text=True, timeout=120)
    state = json.loads(summary.stdout)
    assert state["state"] == "finished" and state["config"]["group_size"] == 4
    assert state["summary"]["eval_after/mean_reward"] == pytest.approx(_evals(out)[-1]["mean_reward"])
    assert state["summary"]["completions"]["nrows"] == 8           # the logged group's completions, as a table


@pytest.mark.slow
def test_trackio_store_holds_every_step(tracked_run):
    out, trackio_dir, _ = tracked_run
    code = ("import json, trackio.sqlite_storage as s; "
            "print(json.dumps(s.SQLiteStorage.get_logs('grpo-test', 'tracked')))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRACKIO_DIR": str(trackio_dir)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    logs = json.loads(proc.stdout.strip().splitlines()[-1])
    by_step = {}
    for row in logs:
        by_step.setdefault(row["step"], {}).update(row)
    rows = _metrics(out)
    assert [by_step[r["step"]]["reward/mean"] for r in rows] == [pytest.approx(r["reward/mean"]) for r in rows]
    assert by_step[0]["eval/mean_reward"] == pytest.approx(_evals(out)[0]["mean_reward"])
    assert "summary/eval_after/mean_reward" in by_step[STEPS]


@pytest.mark.slow
def test_the_run_folder_files_are_written_beside_the_trackers(tracked_run):
    out, _, _ = tracked_run
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    assert [(r["step"], r["when"]) for r in _evals(out)] == [(0, "before"), (1, "during"), (2, "during"), (3, "after")]


# ------------------------------------------------------------------------------ the interface
class Recorder(Sink):
    def __init__(self, calls, fail_on_close=False):
        self.calls, self.fail = calls, fail_on_close

    def log(self, metrics, samples):
        self.calls.append(("log", metrics["step"]))

    def close(self, summary):
        self.calls.append(("close", summary))
        if self.fail:
            raise OSError("disk full")


def test_sinks_fan_out_and_close_every_sink_even_when_one_fails():
    calls = []
    group = Sinks([Recorder(calls, fail_on_close=True), Recorder(calls)])
    group.log({"step": 1}, [])
    with pytest.raises(OSError, match="disk full"):
        group.close({"steps": 1})
    assert calls == [("log", 1), ("log", 1), ("close", {"steps": 1}), ("close", {"steps": 1})]


def test_flat_numbers_keeps_finite_numbers_only():
    assert flat_numbers({"a": 1, "b": {"c": 0.5, "d": "x", "e": float("nan"), "f": True}, "g": [1]}) == {"a": 1, "b/c": 0.5}


def test_unknown_tracker_and_missing_package_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'.*tensorboard, wandb, mlflow, trackio, none"):
        resolve(overrides={"report_to": ["tensorbord"]})
    monkeypatch.setitem(sinks.TRACKERS, "wandb", ("WandbSink", "no_such_module_for_grpo", "wandb"))
    with pytest.raises(ConfigError, match=r"wandb needs the no_such_module_for_grpo package: pip install 'grpo\[wandb\]'"):
        resolve(overrides={"report_to": ["wandb"]})
    assert resolve(overrides={"report_to": ["none"]}).report_to == ["none"]


@pytest.mark.slow
def test_a_resumed_mlflow_sink_continues_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient
    from grpo.sinks.trackers import MlflowSink
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    first = MlflowSink(tmp_path, "p", "r", resuming=False, log=lambda *a: None)
    first.start({"lr": 0.1})
    first.log({"step": 1, "loss": 1.0}, [])
    first.close(None)                                   # stopped early
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(first.run_id).info.status == "KILLED"
    again = MlflowSink(tmp_path, "p", "r", resuming=True, log=lambda *a: None)
    again.start({"lr": 0.1}, step=1)
    again.log({"step": 2, "loss": 0.5}, [])
    again.close({"steps": 2})
    assert again.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "loss")) == [1, 2]


def test_a_resumed_tensorboard_sink_drops_the_steps_past_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from grpo.sinks.trackers import TensorBoardSink
    first = TensorBoardSink(tmp_path, "p", "r", resuming=False, log=lambda *a: None)
    first.start({"lr": 0.1})
    for step in (1, 2, 3):                              # steps 2 and 3 were logged, then the run crashed
        first.log({"step": step, "loss": float(step)}, [])
    first.close(None)
    again = TensorBoardSink(tmp_path, "p", "r", resuming=True, log=lambda *a: None)
    again.start({"lr": 0.1}, step=1)                   # the checkpoint was at step 1
    for step in (2, 3):
        again.log({"step": step, "loss": 10.0 * step}, [])
    again.close({"steps": 3})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 20.0), (3, 30.0)]
