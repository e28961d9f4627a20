"""The sink interface, and `Sinks`: the run's sinks as one."""

from __future__ import annotations

import math


class Sink:
    """A place a run's record goes. Every method does nothing here; a sink overrides what it keeps."""

    def start(self, config: dict, step: int = 0) -> None:
        """`step`: the step the run continues from (0 for a new run)."""

    def log(self, metrics: dict, samples: list[dict]) -> None:
        pass

    def log_eval(self, step: int, when: str, result: dict) -> None:
        pass

    def close(self, summary: dict | None) -> None:
        """`summary`: the run's summary.json, or None when the run stopped early or failed."""


class Sinks(Sink):
    """Several sinks as one: each call goes to every sink in order; `close` reaches every sink even
    when one of them fails, and the first failure is raised after all are closed."""

    def __init__(self, sinks: list[Sink]):
        self.sinks = list(sinks)

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def start(self, config: dict, step: int = 0) -> None:
        for s in self.sinks:
            s.start(config, step)

    def log(self, metrics: dict, samples: list[dict]) -> None:
        for s in self.sinks:
            s.log(metrics, samples)

    def log_eval(self, step: int, when: str, result: dict) -> None:
        for s in self.sinks:
            s.log_eval(step, when, result)

    def close(self, summary: dict | None) -> None:
        error = None
        for s in self.sinks:
            try:
                s.close(summary)
            except Exception as e:          # close the others first: their files must not be lost
                error = error or e
        self.sinks = []
        if error is not None:
            raise error


def flat_numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict, keys joined with '/': {"eval": {"n": 8}} -> {"eval/n": 8}.
    Booleans, strings, lists and non-finite numbers are left out (trackers chart numbers)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_numbers(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = v
    return out
