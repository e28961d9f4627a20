"""Stopping a run on request: SIGINT (Ctrl-C) or SIGTERM ends it after the current step, with a
checkpoint when checkpointing is on; a second signal stops it at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from ..errors import Stopped  # noqa: F401  (re-exported)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum, frame) -> None:
        if self.signum is not None:             # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum
        if os.environ.get("RANK", "0") == "0":   # one line for the run, not one per process
            name = signal.Signals(signum).name
            print(f"\ngrpo: {name}: stopping after this step (send it again to stop at once)", flush=True)


@contextlib.contextmanager
def stop_on_signals():
    """Inside: SIGINT and SIGTERM set the yielded StopRequest instead of ending the process (main
    thread only; elsewhere nothing is installed)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
