"""`grpo train --nproc N`: N training processes on this machine, started and stopped together.

Each process gets the variables torch.distributed's env:// rendezvous reads (MASTER_ADDR,
MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE), as torchrun would set them; several machines use
torchrun itself (docs/scaling.md). The workers run in a session of their own, so a terminal's
Ctrl-C reaches this launcher alone, which passes each SIGINT or SIGTERM to every worker once:
the first stops the run after its step (rank 0 prints where it stopped), a second stops it at
once, as in a single process. When a worker fails, the others are stopped too (they would wait
for it forever in their next collective). A worker's one-line error goes to a file of the
launcher's, which prints each different line once, not once per process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRACE_S = 10.0       # after a worker fails: how long the others get to exit before they are killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In each worker (Linux): SIGTERM when the launcher dies, even by SIGKILL, so none is orphaned."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(nproc: int, argv: list[str]) -> int:
    """Run `grpo <argv>` in `nproc` processes; the run's exit code (128 + signal when stopped by one)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc)}
    errors = Path(tempfile.mkdtemp(prefix="grpo-errors-"))
    procs = [subprocess.Popen([sys.executable, "-m", "grpo", *argv], start_new_session=True,
                              preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r),
                                   "GRPO_ERROR_FILE": str(errors / f"rank-{r}")}) for r in range(nproc)]
    sent: list[int] = []

    def forward(signum, frame=None):
        sent.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return _wait(procs, sent, forward)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:                 # whatever happened here, no worker outlives the launcher
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        _print_errors(errors, argv[0] if argv else "train", nproc)
        shutil.rmtree(errors, ignore_errors=True)


def _print_errors(folder: Path, command: str, nproc: int) -> None:
    """Each different error line of the workers once; a line only some processes had names them."""
    said: dict[str, list[int]] = {}
    for r in range(nproc):
        f = folder / f"rank-{r}"
        if f.exists():
            said.setdefault(f.read_text().strip(), []).append(r)
    for message, ranks in said.items():
        which = "" if len(ranks) == nproc else \
            f"(process{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {nproc}) "
        print(f"grpo {command}: error: {which}{message}", file=sys.stderr)


def _wait(procs, sent: list[int], forward) -> int:
    failed, failed_at = None, None
    while True:
        try:
            codes = [p.poll() for p in procs]
            if failed is None and not sent and any(c not in (None, 0) for c in codes):
                failed, failed_at = next(c for c in codes if c not in (None, 0)), time.monotonic()
                for p in procs:                         # the others stop too (not a user's request)
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
            if all(c is not None for c in codes):
                if failed is not None:
                    return failed
                return 128 + sent[0] if sent and any(codes) else 0      # no worker failed on its own
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
        except KeyboardInterrupt:
            forward(signal.SIGINT)
