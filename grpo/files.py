"""Files every stage writes the same way: the project's cache folder, a folder written whole or
not at all, one JSON line. Imports nothing of the package: any module may use it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """The project's cache folder: `$GRPO_CACHE`, else ~/.cache/grpo (the demo model, de-quantised
    GGUF files, the compiled kernel)."""
    return Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo"))


@contextlib.contextmanager
def atomic_folder(final: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden folder beside `final`; when the block ends without an error, that folder
    becomes `final` in one rename, so no reader ever sees it half-written and a crash leaves only
    the hidden folder, which is removed. `replace`: an existing `final` is removed first (a
    checkpoint written again); otherwise, when another process renamed its own folder into place
    first (two ranks building the same cache entry), theirs is kept."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        if replace and final.exists():
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if replace or not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_line(indent: int | None = None, **fields) -> str:
    """`fields` as one JSON line (newline included), or indented JSON without the newline."""
    return json.dumps(fields, indent=indent) + ("\n" if indent is None else "")
