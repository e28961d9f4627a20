"""Environment calls, contained: the `reset` and `step` calls of a turn run in up to `workers`
daemon threads, each thread taking the next call when it is done with one (a slow episode does
not hold up the others' environment time), each call within `timeout` seconds. A call that raises
or runs past its time stops the run with one line that names the environment, the method and the
episode; a call left running past its time is abandoned (its thread is a daemon, so it does not
keep the process alive).

Threads, not processes: an environment holds the episode's state in its object, which a process
boundary would have to copy at every turn. What runs in a thread cannot be killed, so a tool that
may hang belongs behind its own timeout (grpo/envs/tools.py:call_tool does that).
"""

from __future__ import annotations

import threading
import time

from ..errors import EnvironmentFailure


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def run_calls(calls: list, *, workers: int, timeout: float, method: str, name: str, describe) -> list:
    """The results of `calls` (functions of no argument), in order. Up to `workers` daemon threads
    take the calls in turn (a slow call holds up only its own thread); `describe(i)` says which
    episode call i belongs to, for the error."""
    n = len(calls)
    results: list = [None] * n
    errors: list = [None] * n
    started: list = [None] * n
    left = [n]
    lock = threading.Lock()
    all_done = threading.Event()
    order = iter(range(n))
    limit = timeout if timeout and timeout > 0 else None
    if n == 0:
        return results

    def work() -> None:
        while True:
            with lock:
                i = next(order, None)
                if i is None:
                    return
                started[i] = time.monotonic()
            try:
                results[i] = calls[i]()
            except BaseException as e:       # SystemExit included: reported, not a silent exit of a thread
                errors[i] = e
            with lock:
                started[i] = None            # finished
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

    for w in range(min(max(1, workers), n)):
        threading.Thread(target=work, name=f"env-{method}-{w}", daemon=True).start()
    while not all_done.wait(None if limit is None else 0.05):
        now = time.monotonic()
        with lock:
            late = next((i for i, t in enumerate(started) if t is not None and now - t > limit), None)
        if late is not None:
            raise EnvironmentFailure(f"environment {name}.{method} timed out after {limit:g} s (env_timeout) on "
                                     f"{describe(late)}")
    for i, e in enumerate(errors):
        if e is not None:
            raise EnvironmentFailure(f"environment {name}.{method} raised {type(e).__name__}: {e} on "
                                     f"{describe(i)}") from e
    return results


def episode_label(index: int, prompt: str, turn: int | None = None) -> str:
    return f"episode {index} (prompt {_short(prompt)}" + (f", turn {turn})" if turn else ")")
