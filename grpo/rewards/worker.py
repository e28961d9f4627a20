"""A reward worker process (started by contained.py as `python -m grpo.rewards.worker FD PARENT`):
loads the run's own reward functions, then scores one completion per request until told to stop.

The protocol, pickled messages on the socket FD (multiprocessing.connection framing):
  parent -> worker   ("load", {name: target}, sys_path, cwd)   once, first
                     ("call", [(job, name, prompt, completion, columns), ...])   columns: lists of one;
                     a chunk of completions, each scored by its own call, in order
                     ("stop",)
  worker -> parent   ("ready",) | ("load_error", message)       after "load"
                     ("done", job, float | None) | ("failed", job, what)   per completion, as each is done
Kept free of torch (and of everything a reward function does not import itself), so a worker
costs a Python interpreter and the user's imports.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from multiprocessing.connection import Connection


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the process that started it ends (Linux), however it ends."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:              # it ended before the line above took effect
        os._exit(0)


def _load(target: str):
    """The function of `target`; `trl:TARGET`, a function written for TRL's trainer, wrapped (trl_style.py)."""
    from .trl_style import PREFIX, TRLStyle
    from .user import load_attribute, load_function
    if target.startswith(PREFIX):
        name, fn = load_attribute(target[len(PREFIX):])
        return TRLStyle(fn, name)
    return load_function(target)[1]


def serve(conn: Connection) -> None:
    from ..config import ConfigError
    from .checks import BatchFailed, values_of

    _, targets, sys_path, cwd = conn.recv()
    os.chdir(cwd)
    sys.path[:] = sys_path
    try:
        fns = {name: _load(target) for name, target in targets.items()}
    except ConfigError as e:
        conn.send(("load_error", str(e)))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        for job, name, prompt, completion, columns in msg[1]:
            try:
                (value,) = values_of(name, fns[name], [prompt], [completion], columns)
                reply = ("failed", job, value.what) if hasattr(value, "what") else ("done", job, value)
            except BatchFailed as e:
                reply = ("failed", job, str(e))
            except BaseException as e:      # SystemExit, KeyboardInterrupt from the user's code
                reply = ("failed", job, f"raised {type(e).__name__}: {e}")
            conn.send(reply)

def main(argv: list[str]) -> None:
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the run decides when to stop, not Ctrl-C
    try:
        serve(Connection(fd))
    except (EOFError, OSError):             # the run closed the connection (it ended, or stopped this worker)
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
