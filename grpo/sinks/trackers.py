"""Experiment trackers as sinks (`--report-to`): TensorBoard, Weights & Biases, MLflow, trackio.

Each imports its package when opened (they are optional installs: `pip install 'grpo[NAME]'`).
Every tracker gets the configuration, each step's finite numeric metrics at that step, each
held-out evaluation as `eval/<name>` at its step, and the final summary. A resumed run continues
the tracker's run where the tracker can (the ids are kept in <output_dir>/trackers.json).
"""

from __future__ import annotations

import json
import netrc
import os
import re
import time
from pathlib import Path

import yaml

from .base import Sink, flat_numbers


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in flat_numbers(metrics).items() if k != "step"}


class _Ids:
    """<output_dir>/trackers.json: the tracker run ids a resumed run continues."""

    def __init__(self, out: Path):
        self.path = Path(out) / "trackers.json"

    def get(self, name: str) -> str | None:
        return json.loads(self.path.read_text()).get(name) if self.path.is_file() else None

    def put(self, name: str, run_id: str) -> None:
        ids = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.path.write_text(json.dumps({**ids, name: run_id}, indent=2) + "\n")


def _completions_markdown(samples: list[dict]) -> str:
    """The logged completions as Markdown, grouped by prompt (TensorBoard renders its text as Markdown)."""
    parts, prompt = [], None
    for s in samples:
        if s["prompt"] != prompt:
            prompt = s["prompt"]
            parts.append(f"### prompt {s.get('group', '')}\n\n```\n{prompt}\n```")
        parts.append(f"**reward {s['reward']:.3f}, advantage {s['advantage']:+.3f}, {s['length']} tokens"
                     f"{', truncated' if s.get('truncated') else ''}**\n\n```\n{s['completion']}\n```")
    return "\n\n".join(parts)


class TensorBoardSink(Sink):
    """Event files in <output_dir>/tensorboard (`tensorboard --logdir <output_dir>`): scalars, the
    configuration and summary as text, and the logged completions as text at their step."""

    def __init__(self, out: Path, project: str, run_name: str, resuming: bool, log):
        self.dir, self.writer, self.log_line = Path(out) / "tensorboard", None, log

    def start(self, config: dict, step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter
        # on resume, events past the checkpoint's step (written before a crash) are dropped
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=step + 1 if step else None)
        if not step:
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        self.log_line(f"tensorboard: {self.dir} (view with: tensorboard --logdir {self.dir})")

    def log(self, metrics: dict, samples: list[dict]) -> None:
        for k, v in _numbers(metrics).items():
            self.writer.add_scalar(k, v, metrics["step"])
        if samples:
            self.writer.add_text("completions", _completions_markdown(samples), metrics["step"])
        self.writer.flush()

    def log_eval(self, step: int, when: str, result: dict) -> None:
        for k, v in flat_numbers(result, "eval/").items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self, summary: dict | None) -> None:
        if self.writer is None:
            return
        if summary is not None:
            self.writer.add_text("summary", "```json\n" + json.dumps(summary, indent=2) + "\n```", summary.get("steps", 0))
        self.writer.close()


def _wandb_key_known() -> bool:
    """An API key in WANDB_API_KEY or ~/.netrc (as `wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink(Sink):
    """A Weights & Biases run in <output_dir>/wandb. Mode: WANDB_MODE when set, else online when an
    API key is known and offline otherwise (upload later with `wandb sync`); never a login prompt."""

    def __init__(self, out: Path, project: str, run_name: str, resuming: bool, log):
        self.out, self.project, self.name, self.log_line = Path(out), project, run_name, log
        self.ids, self.run = _Ids(out), None
        self.run_id = self.ids.get("wandb") if resuming else None

    def start(self, config: dict, step: int = 0) -> None:
        import wandb
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key_known() else "offline")
        self.run = wandb.init(project=self.project, name=self.name, dir=str(self.out), mode=mode, config=config,
                              id=self.run_id, resume="allow" if self.run_id else None)
        self.ids.put("wandb", self.run.id)
        where = f"offline, {self.run.dir.rsplit('/files', 1)[0]}; upload with: wandb sync" if mode == "offline" else mode
        self.log_line(f"wandb: run {self.run.id} ({where})")

    def log(self, metrics: dict, samples: list[dict]) -> None:
        import wandb
        row = _numbers(metrics)
        if samples:
            cols = ["group", "prompt", "completion", "reward", "advantage", "length", "truncated"]
            row["completions"] = wandb.Table(columns=cols, data=[[s.get(c) for c in cols] for s in samples])
        self.run.log(row, step=metrics["step"])

    def log_eval(self, step: int, when: str, result: dict) -> None:
        self.run.log(flat_numbers(result, "eval/"), step=step)

    def close(self, summary: dict | None) -> None:
        if self.run is None:
            return
        if summary is not None:
            self.run.summary.update(flat_numbers(summary))
        self.run.finish(exit_code=0 if summary is not None else 1)


_MLFLOW_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")


class MlflowSink(Sink):
    """An MLflow run: at MLFLOW_TRACKING_URI when set, else in a local store in the run folder
    (<output_dir>/mlflow.db, artifacts in <output_dir>/mlartifacts: `mlflow ui --backend-store-uri
    sqlite:///<output_dir>/mlflow.db`). The experiment is `project`; the configuration is logged
    as parameters and config.json, the summary as summary.json."""

    def __init__(self, out: Path, project: str, run_name: str, resuming: bool, log):
        self.out, self.project, self.name, self.log_line = Path(out).resolve(), project, run_name, log
        self.ids, self.client, self.run_id = _Ids(out), None, None
        self.resume_id = self.ids.get("mlflow") if resuming else None

    def start(self, config: dict, step: int = 0) -> None:
        from mlflow.tracking import MlflowClient
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.out / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        if self.resume_id:
            self.run_id = self.resume_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(self.project)
            local = (self.out / "mlartifacts").as_uri() if "MLFLOW_TRACKING_URI" not in os.environ else None
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.project, artifact_location=local)
            self.run_id = self.client.create_run(exp_id, run_name=self.name).info.run_id
            self.ids.put("mlflow", self.run_id)
            self._params(config)
            self.client.log_dict(self.run_id, config, "config.json")
        self.log_line(f"mlflow: run {self.run_id} at {uri}")

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in config.items() if v is not None]
        for i in range(0, len(params), 100):          # the store takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_MLFLOW_KEY.sub("_", k), float(v), ts, step)
                                                    for k, v in values.items()])

    def log(self, metrics: dict, samples: list[dict]) -> None:
        self._metrics(_numbers(metrics), metrics["step"])

    def log_eval(self, step: int, when: str, result: dict) -> None:
        self._metrics(flat_numbers(result, "eval/"), step)

    def close(self, summary: dict | None) -> None:
        if self.run_id is None:
            return
        if summary is not None:
            self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, status="FINISHED" if summary is not None else "KILLED")


class TrackioSink(Sink):
    """A trackio run in trackio's local store (TRACKIO_DIR, else its default folder; `trackio show
    --project PROJECT`). The summary's numbers are logged as `summary/<name>` at the last step."""

    def __init__(self, out: Path, project: str, run_name: str, resuming: bool, log):
        self.project, self.name, self.resuming, self.log_line = project, run_name, resuming, log
        self.run = None

    def start(self, config: dict, step: int = 0) -> None:
        import trackio
        self.run = trackio.init(project=self.project, name=self.name, config=config, embed=False,
                                resume="allow" if self.resuming else "never")

    def log(self, metrics: dict, samples: list[dict]) -> None:
        self.run.log(_numbers(metrics), step=metrics["step"])

    def log_eval(self, step: int, when: str, result: dict) -> None:
        self.run.log(flat_numbers(result, "eval/"), step=step)

    def close(self, summary: dict | None) -> None:
        if self.run is None:
            return
        if summary is not None:
            self.run.log(flat_numbers(summary, "summary/"), step=summary["steps"])     # the last step
        self.run.finish()
