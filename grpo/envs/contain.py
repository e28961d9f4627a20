"""Environment calls, contained: each `reset` and `step` of a turn runs in a daemon thread, up to
`workers` of them at once (one slow episode does not hold up the others' environment time), each
within `timeout` seconds. A call that raises or runs past its time stops the run with one line
that names the environment, the method and the episode; a call left running past its time is
abandoned (its thread is a daemon, so it does not keep the process alive).

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
    """The results of `calls` (functions of no argument), in order. `describe(i)` says which
    episode call i belongs to, for the error."""
    n = len(calls)
    results: list = [None] * n
    errors: list = [None] * n
    done = [threading.Event() for _ in range(n)]
    started = [0.0] * n
    slots = threading.Semaphore(max(1, workers))
    limit = timeout if timeout and timeout > 0 else None

    def work(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as e:           # SystemExit included: reported, not a silent exit of a thread
            errors[i] = e
        finally:
            slots.release()
            done[i].set()

    def fail(i: int, what: str) -> EnvironmentFailure:
        return EnvironmentFailure(f"environment {name}.{method} {what} on {describe(i)}")

    def timed_out(i: int) -> EnvironmentFailure:
        return fail(i, f"timed out after {limit:g} s (env_timeout)")

    for i in range(n):
        while not slots.acquire(timeout=0.05 if limit else None):
            # every slot is busy: one of the running calls may be past its time
            now = time.monotonic()
            late = [j for j in range(i) if not done[j].is_set() and now - started[j] > limit]
            if late:
                raise timed_out(late[0])
        started[i] = time.monotonic()
        threading.Thread(target=work, args=(i,), name=f"env-{method}-{i}", daemon=True).start()
    for i in range(n):
        if not done[i].wait(None if limit is None else max(0.0, started[i] + limit - time.monotonic())):
            raise timed_out(i)
        if errors[i] is not None:
            e = errors[i]
            raise fail(i, f"raised {type(e).__name__}: {e}") from e
    return results


def episode_label(index: int, prompt: str, turn: int | None = None) -> str:
    return f"episode {index} (prompt {_short(prompt)}" + (f", turn {turn})" if turn else ")")
