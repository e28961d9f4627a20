"""Prompts from your own data: `--dataset PATH_OR_NAME` -> a Task (see docs/data.md).

Sources, chosen in this order:
  * an existing file, by extension: .jsonl/.ndjson (one JSON object a line), .json (a list of objects,
    or {"data": [...]}), .csv (a header line, then one row a line), .parquet/.pq;
  * an existing folder: a `datasets` Dataset or DatasetDict saved with `save_to_disk` (a DatasetDict is
    read at `dataset_split`), else any folder `datasets.load_dataset` understands;
  * anything else: a Hugging Face hub dataset name, `NAME` or `NAME:CONFIG`, read with
    `datasets.load_dataset(NAME, CONFIG, split=dataset_split)`.

Columns: `prompt_column` becomes the row's "prompt" (text, or a list of {"role", "content"} messages),
`answer_column` becomes "answer" (numbers turned into text), and every other column keeps its name, so
reward functions receive it as a keyword argument. Every row gets every column (None where a row lacks one).

Held-out rows: `eval_split` (a second split of a folder or hub dataset, or a second file) when given;
otherwise the last `eval_size` rows, which are then removed from training. Either way, training rows
whose prompt also appears among the held-out rows are dropped, so the two never overlap.

Every problem with the input is a ConfigError of one sentence naming the file (or split) and the line
or row: lines for JSONL and CSV files (physical lines, from 1), rows from 1 for everything else.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from ..config import ConfigError
from .readers import Records, Where, at, kind_of, looks_like_path, object_records, short, read_records

# Column names that would collide with the reward functions' positional arguments, or with the column
# the trainer adds (the token count of each completion).
RESERVED = ("prompts", "completions", "completion_length")
# Columns that commonly hold the prompt, suggested when `prompt_column` is missing.
PROMPT_LIKE = ("prompt", "question", "problem", "query", "instruction", "input", "messages", "conversation",
               "text")


# ------------------------------------------------------------------ rows
def _check_prompt(value: Any, label: str, where: Where, column: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{at(label, where)}: the prompt (column {column!r}) is empty")
        return value
    if isinstance(value, (list, tuple)) and value:
        for j, m in enumerate(value, 1):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ConfigError(f"{at(label, where)}: the prompt (column {column!r}) is a list, but item {j} "
                                  f'is {short(m)}, not a {{"role": text, "content": text}} message')
        return list(value)
    got = "an empty list" if isinstance(value, (list, tuple)) else f"{kind_of(value)} {short(value)}"
    raise ConfigError(f"{at(label, where)}: the prompt (column {column!r}) must be text or a list of "
                      f'{{"role", "content"}} messages, got {got}')


def _missing_prompt(rec: dict, label: str, where: Where, column: str) -> ConfigError:
    cols = [str(k) for k in rec]
    if not cols:
        return ConfigError(f"{at(label, where)}: no prompt column {column!r} (--prompt-column); the row has no "
                           "columns at all")
    near = difflib.get_close_matches(column, cols, n=1, cutoff=0.6)
    near = near or [c for c in PROMPT_LIKE if c in cols][:1]
    hint = f"; did you mean --prompt-column {near[0]}?" if near else ""
    return ConfigError(f"{at(label, where)}: no prompt column {column!r} (--prompt-column), the first row "
                       f"without it; its columns are {', '.join(cols)}{hint}")


def _answer(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def to_rows(label: str, records: Records, prompt_column: str = "prompt",
            answer_column: str | None = "answer") -> list[dict]:
    """Raw records -> training rows {"prompt", ["answer"], other columns...}, all with the same keys.

    A column literally named "prompt" (or "answer") that is not the chosen prompt (answer) column is
    replaced by the chosen one."""
    rows: list[dict] = []
    keys: dict[str, None] = {}
    for where, rec in records:
        if not isinstance(rec, dict):
            raise ConfigError(f"{at(label, where)}: expected an object of column: value, got {kind_of(rec)} "
                              f"{short(rec)}")
        if prompt_column not in rec:
            raise _missing_prompt(rec, label, where, prompt_column)
        row = {"prompt": _check_prompt(rec[prompt_column], label, where, prompt_column)}
        if answer_column is not None and answer_column in rec:
            row["answer"] = _answer(rec[answer_column])
        for k, v in rec.items():
            if k in (prompt_column, answer_column, "prompt", "answer"):
                continue
            if k in RESERVED:
                raise ConfigError(f"{at(label, where)}: column {k!r} clashes with the reward functions' "
                                  f"argument of that name, which the trainer fills; rename the column")
            row[k] = v
        for k in row:
            if k not in keys:
                keys[k] = None
        rows.append(row)
    if not rows:
        raise ConfigError(f"{label}: no rows; the dataset is empty")
    if any(len(r) != len(keys) for r in rows):
        for r in rows:
            for k in keys:
                r.setdefault(k, None)
    return rows


def load_rows(source: str, split: str = "train", prompt_column: str = "prompt",
              answer_column: str | None = "answer", flag: str = "--dataset-split") -> tuple[str, list[dict]]:
    """(label, rows) of one file, folder split or hub split."""
    label, records = read_records(source, split, flag)
    return label, to_rows(label, records, prompt_column, answer_column)


def prompt_key(prompt: Any) -> Any:
    """Hashable identity of a prompt, for keeping training rows out of the held-out set."""
    if isinstance(prompt, str):
        return prompt.strip()
    return tuple((m.get("role"), m.get("content", "").strip()) for m in prompt)


# ------------------------------------------------------------------ the task
def _same_place(a: str, b: str) -> bool:
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:
        return False


def split_rows(cfg) -> tuple[list[dict], list[dict], dict]:
    """(training rows, held-out rows, info) for a config with `dataset` set."""
    source, split = cfg.dataset, cfg.dataset_split
    if cfg.answer_column == cfg.prompt_column:
        raise ConfigError(f"answer_column and prompt_column are both {cfg.prompt_column!r}; they must differ")
    label, train = load_rows(source, split, cfg.prompt_column, cfg.answer_column)
    info: dict[str, Any] = {"source": label}
    held: list[dict] = []
    n_eval = cfg.eval_size
    if n_eval and cfg.eval_split:
        ev = cfg.eval_split
        ev_path = os.path.expanduser(ev)
        if os.path.exists(ev_path) or looks_like_path(ev):
            if os.path.exists(ev_path) and _same_place(ev, source) and not os.path.isdir(ev_path):
                raise ConfigError(f"eval_split {ev!r} is the training file itself; name a second file, or leave "
                                  "--eval-split empty to hold out the last eval_size rows")
            ev_label, held = load_rows(ev, split, cfg.prompt_column, cfg.answer_column)
        elif os.path.isfile(os.path.expanduser(source)):
            raise ConfigError(f"eval_split {ev!r}: {source} is a single file, so --eval-split must name a "
                              f"second file, and {ev!r} is not a file here")
        else:
            if os.path.isfile(os.path.join(os.path.expanduser(source), "state.json")):
                raise ConfigError(f"eval_split {ev!r}: {source} holds a single `datasets` Dataset without splits, "
                                  "so --eval-split must name a second file or folder, and it is not one here")
            if ev == split:
                raise ConfigError(f"eval_split {ev!r} is the training split itself (--dataset-split); name another "
                                  "split, or leave --eval-split empty to hold out the last eval_size rows")
            ev_label, held = load_rows(source, ev, cfg.prompt_column, cfg.answer_column, flag="--eval-split")
        if len(held) < n_eval:
            raise ConfigError(f"eval_size is {n_eval} but the held-out split {ev_label} has {len(held)} rows; "
                              f"lower --eval-size to {len(held)} or less")
        if "answer" in train[0] and "answer" not in held[0]:
            raise ConfigError(f"{ev_label}: no answer column {cfg.answer_column!r} (--answer-column), which the "
                              f"training rows of {label} have")
        info["heldout"] = f"{ev_label} ({len(held)} rows)"
    return _held_out(cfg, label, train, held, info)


def split_object_rows(cfg, data, eval_data=None) -> tuple[list[dict], list[dict], dict]:
    """(training rows, held-out rows, info) for datasets handed in from Python (readers.object_records):
    `eval_data` is the held-out split when given, else the last eval_size rows are held out."""
    label = "train_dataset"
    train = to_rows(label, object_records(data, label), cfg.prompt_column, cfg.answer_column)
    info: dict[str, Any] = {"source": f"{label} ({len(train)} rows)"}
    held: list[dict] = []
    if eval_data is not None and cfg.eval_size:
        held = to_rows("eval_dataset", object_records(eval_data, "eval_dataset"), cfg.prompt_column, cfg.answer_column)
        if len(held) < cfg.eval_size:
            raise ConfigError(f"eval_size is {cfg.eval_size} but eval_dataset has {len(held)} rows; lower eval_size "
                              f"to {len(held)} or less")
        info["heldout"] = f"eval_dataset ({len(held)} rows)"
    return _held_out(cfg, label, train, held, info)


def _held_out(cfg, label: str, train: list[dict], held: list[dict], info: dict) -> tuple[list[dict], list[dict], dict]:
    """The last eval_size training rows held out when no held-out split was given, and training rows
    whose prompt is among the held-out ones dropped."""
    n_eval = cfg.eval_size
    if not held and n_eval:
        if len(train) <= n_eval:
            raise ConfigError(f"{label} has {len(train)} rows, so holding out the last {n_eval} (eval_size) would "
                              "leave none to train on; lower --eval-size or give --eval-split")
        held = train[-n_eval:]
        del train[-n_eval:]
        info["heldout"] = f"the last {n_eval} rows of {label}"
    if held:
        seen = {prompt_key(r["prompt"]) for r in held}
        before = len(train)
        train = [r for r in train if prompt_key(r["prompt"]) not in seen]
        info["overlap_dropped"] = before - len(train)
        if not train:
            raise ConfigError(f"{label}: every training row's prompt also appears among the held-out rows "
                              f"({info['heldout']}), so none is left to train on")
    return train, held, info
