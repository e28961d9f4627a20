"""The user's own reward functions, run contained: in worker processes (worker.py), one completion
per call, each call with a timeout.

A call that takes longer than `timeout` seconds has its worker killed (with anything it started:
each worker leads its own process group) and replaced; a worker that exits or is killed while
scoring (os._exit, a segfault in a C extension, the kernel's OOM killer) is replaced too. Either
way the completion becomes a `Failure` that says what happened; scoring.py then stops the run or
scores it None, as `reward_failure` says. Workers start once, when the run's rewards are built,
and load the functions while the model loads; they live in their own session (Ctrl-C reaches the
run, which finishes its step, not them) and die with the process that started them.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable

from .checks import Failure, RewardError


LOAD_TIMEOUT = 300.0      # seconds a new worker may take to import the reward functions
CHUNK = 16                # completions handed to a worker at once, at most


def default_workers() -> int:
    """One worker per CPU core this process may use, shared among the machine's training processes
    (LOCAL_WORLD_SIZE), at least 1 and at most 8: while rewards are scored the trainer waits."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // max(1, local)))


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


class _Worker:
    def __init__(self, targets: dict, cwd: str):
        parent, child = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "grpo.rewards.worker", str(child.fileno()),
                                          str(os.getpid())], pass_fds=(child.fileno(),), env=env, cwd=cwd,
                                         start_new_session=True, stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(("load", targets, list(sys.path), cwd))
        self.ready = False
        self.jobs = deque()            # (job id, (name, prompts, completions, columns, index)), in order
        self.deadline = 0.0            # when the first of `jobs` has taken too long
        self.load_deadline = time.monotonic() + LOAD_TIMEOUT

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)       # the worker and whatever it started
        except (ProcessLookupError, PermissionError):
            pass
        self.conn.close()
        self.proc.wait()

    def ended(self) -> str:
        """How a worker whose connection closed ended: "exit code 3", "killed by signal 9, SIGKILL"."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "it closed its connection"
        finally:
            self.conn.close()
        return f"killed by signal {-code}, {_signal_name(-code)}" if code < 0 else f"exit code {code}"


class WorkerPool:
    """`size` workers serving the functions `targets` ({name: "module:function" or "file.py:function"})."""

    def __init__(self, targets: dict[str, str], size: int, timeout: float):
        self.targets, self.size, self.timeout = dict(targets), size, timeout
        self.cwd = os.getcwd()
        self.workers = [_Worker(self.targets, self.cwd) for _ in range(size)]
        self._jobs = 0
        self.replaced = 0
        _open_pools.add(self)

    def _replace(self, w: _Worker) -> None:
        self.workers[self.workers.index(w)] = _Worker(self.targets, self.cwd)
        self.replaced += 1

    def run(self, calls: list[tuple[str, list, list, dict]], stop_at_failure: bool = False) -> dict[str, list]:
        """Score every completion of each (name, prompts, completions, columns): {name: [float | None
        | Failure, ...]}, in order. With `stop_at_failure`, raise RewardError at the first failure
        (the workers busy at that moment are replaced).

        A free worker is handed a few completions at once (a chunk, fewer as the work runs out) and
        answers each as it finishes it, so a timeout or a crash is pinned to the completion it was
        on; the rest of its chunk goes back in the queue."""
        results = {name: [None] * len(completions) for name, _, completions, _ in calls}
        todo = deque((name, prompts, completions, columns, i) for name, prompts, completions, columns in calls
                     for i in range(len(completions)))
        try:
            while todo or any(w.jobs for w in self.workers):
                for w in self.workers:
                    if w.ready and not w.jobs and todo:
                        self._hand_out(w, todo)
                waiting = [w for w in self.workers if w.jobs or not w.ready]
                ends = [w.deadline if w.jobs else w.load_deadline for w in waiting]
                left = max(0.0, min(ends) - time.monotonic()) if ends else None
                ready = wait([w.conn for w in waiting], timeout=left)
                for w in waiting:
                    if w.conn in ready:
                        self._handle(w, todo, results, stop_at_failure)
                    elif not w.ready and time.monotonic() >= w.load_deadline:
                        raise RewardError(f"a reward worker did not finish loading {', '.join(self.targets.values())} "
                                          f"within {LOAD_TIMEOUT:g} s")
                    elif w.jobs and time.monotonic() >= w.deadline:
                        _, item = w.jobs.popleft()
                        self._requeue(w, todo)
                        w.kill()
                        self._replace(w)
                        self._fail(results, _failure(item, f"timed out after {self.timeout:g} s (reward_timeout)"),
                                   stop_at_failure)
        except BaseException:
            for w in list(self.workers):         # a stop (or Ctrl-C) mid-batch: no worker left mid-call
                if w.jobs:
                    w.kill()
                    self._replace(w)
            raise
        return results

    def _hand_out(self, w: _Worker, todo: deque) -> None:
        size = max(1, min(CHUNK, len(todo) // (2 * len(self.workers))))
        items = []
        for _ in range(size):
            item = todo.popleft()
            name, prompts, completions, columns, i = item
            self._jobs += 1
            w.jobs.append((self._jobs, item))
            items.append((self._jobs, name, prompts[i], completions[i], {k: v[i:i + 1] for k, v in columns.items()}))
        w.deadline = time.monotonic() + self.timeout
        try:
            w.conn.send(("call", items))
        except OSError:                              # it ended while idle: a new one takes the chunk
            self._requeue(w, todo)
            w.kill()
            self._replace(w)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            w.jobs.clear()
            raise RewardError(f"a completion cannot be sent to a reward worker ({e}); the data's columns must "
                              "be picklable, or use --reward-workers 0") from None

    def _requeue(self, w: _Worker, todo: deque) -> None:
        """Put the worker's unanswered completions back at the front of the queue."""
        while w.jobs:
            todo.appendleft(w.jobs.pop()[1])

    def _handle(self, w: _Worker, todo: deque, results: dict, stop_at_failure: bool) -> None:
        while True:
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg is None:                                  # the worker ended
                how = w.ended()
                self._replace(w)
                if not w.ready:
                    raise RewardError(f"a reward worker ended ({how}) while loading "
                                      f"{', '.join(self.targets.values())}")
                if w.jobs:
                    _, item = w.jobs.popleft()
                    self._requeue(w, todo)
                    self._fail(results, _failure(item, f"ended its worker process ({how})"), stop_at_failure)
                return
            kind = msg[0]
            if kind == "ready":
                w.ready = True
            elif kind == "load_error":
                raise RewardError(f"a reward worker could not load the reward functions: {msg[1]}")
            elif w.jobs and msg[1] == w.jobs[0][0]:
                _, item = w.jobs.popleft()
                w.deadline = time.monotonic() + self.timeout     # the next completion's own time starts now
                if kind == "done":
                    results[item[0]][item[4]] = msg[2]
                else:
                    self._fail(results, _failure(item, msg[2]), stop_at_failure)
            if not w.conn.poll():                # answers queue up: take them all before waiting again
                return

    @staticmethod
    def _fail(results: dict, failure: Failure, stop_at_failure: bool) -> None:
        results[failure.name][failure.index] = failure
        if stop_at_failure:
            raise RewardError(failure.message(hint=True))

    def close(self) -> None:
        """Stop every worker (asked first, killed after a second)."""
        _open_pools.discard(self)
        for w in self.workers:
            try:
                w.conn.send(("stop",))
            except OSError:
                pass
        end = time.monotonic() + 1.0
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self.workers = []


def _failure(item: tuple, what: str) -> Failure:
    name, prompts, completions, _, i = item
    return Failure(name, what, i, prompts[i], completions[i])


_open_pools: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for pool in list(_open_pools):
        pool.close()


class Contained:
    """A reward function run by a WorkerPool: callable like the function itself (a batch in, one
    value per completion out; a failure raises RewardError), and batched with the run's other
    contained functions by scoring.score."""

    def __init__(self, pool: WorkerPool, name: str, fn: Callable):
        self.pool, self.name, self.fn = pool, name, fn
        self.__doc__ = getattr(fn, "__doc__", None)
        self.wants_completion_ids = getattr(fn, "wants_completion_ids", False)

    def __call__(self, prompts, completions, **columns) -> list:
        return self.pool.run([(self.name, list(prompts), list(completions), columns)], stop_at_failure=True)[self.name]

    def __repr__(self) -> str:
        return f"Contained({self.pool.targets[self.name]!r})"
