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

import csv
import difflib
import json
import os
from typing import Any, Iterable, Iterator

from .config import ConfigError

FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
              ".parquet": "parquet", ".pq": "parquet"}
# Column names that would collide with the reward functions' positional arguments, or with the column
# the trainer adds (the token count of each completion).
RESERVED = ("prompts", "completions", "completion_length")
# Columns that commonly hold the prompt, suggested when `prompt_column` is missing.
PROMPT_LIKE = ("prompt", "question", "problem", "query", "instruction", "input", "messages", "conversation",
               "text")

Where = tuple[str, int]            # ("line", 7) or ("row", 3)
Records = Iterator[tuple[Where, Any]]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _at(label: str, where: Where) -> str:
    return f"{label} {where[0]} {where[1]}"


# ------------------------------------------------------------------ file readers
def _open_binary(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _decoded_lines(path: str, fh) -> Iterator[tuple[int, str]]:
    for n, raw in enumerate(fh, 1):
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} line {n}: not valid UTF-8 text ({e.reason} at byte {e.start + 1} of the "
                              "line)") from None


def _jsonl_records(path: str, lines: Iterable[tuple[int, str]]) -> Records:
    for n, line in lines:
        if not line.strip():
            continue
        try:
            yield ("line", n), json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} line {n}: not valid JSON ({e.msg}: column {e.colno})") from None


def read_jsonl(path: str) -> Records:
    """(("line", n), value) for each non-blank line of a JSON Lines file."""
    fh = _open_binary(path)
    with fh:
        yield from _jsonl_records(path, _decoded_lines(path, fh))


def read_json(path: str) -> Records:
    """(("row", n), value) for each item of a JSON list, or of {"data": [...]}.

    A .json file that is really JSON Lines (one object a line) is read as such."""
    fh = _open_binary(path)
    with fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line, col = raw[:e.start].count(b"\n") + 1, e.start - raw.rfind(b"\n", 0, e.start)
        raise ConfigError(f"{path} line {line}: not valid UTF-8 text ({e.reason} at byte {col} of the "
                          "line)") from None
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _first_line_is_object(text):
            yield from _jsonl_records(path, enumerate(text.splitlines(), 1))
            return
        raise ConfigError(f"{path} line {e.lineno}: not valid JSON ({e.msg}: column {e.colno})") from None
    del text
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        got = (f"an object with keys {', '.join(map(str, list(data)[:8]))}" if isinstance(data, dict)
               else _kind(data))
        raise ConfigError(f'{path}: expected a list of objects, or an object {{"data": [...]}}, got {got}')
    for i, item in enumerate(data, 1):
        yield ("row", i), item


def _first_line_is_object(text: str) -> bool:
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def read_csv(path: str) -> Records:
    """(("line", n), {column: text}) for each row after the header; n is the row's first line."""
    fh = _open_binary(path)
    with fh:
        numbered = _decoded_lines(path, fh)
        current = [0]

        def lines():
            for n, line in numbered:
                current[0] = n
                yield line

        reader = csv.reader(lines())
        header, header_line, start = None, 0, 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ConfigError(f"{path} line {current[0]}: not valid CSV ({e})") from None
            where = ("line", start)
            start = current[0] + 1
            if not fields:
                continue
            if header is None:
                header, header_line = fields, where[1]
                seen = set()
                for name in header:
                    if name in seen:
                        raise ConfigError(f"{path} line {header_line}: the header names column {name!r} twice")
                    seen.add(name)
                continue
            if len(fields) != len(header):
                raise ConfigError(f"{path} line {where[1]}: {len(fields)} fields, but the header (line "
                                  f"{header_line}) names {len(header)} columns")
            yield where, dict(zip(header, fields))


def read_parquet(path: str) -> Records:
    """(("row", n), {column: value}) for each row of a Parquet file, read in batches."""
    import pyarrow.parquet as pq
    fh = _open_binary(path)            # clear messages for a missing or unreadable file
    fh.close()
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise ConfigError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            yield ("row", n), rec


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -------------------------------------------------------- datasets folders and hub
def _dataset_records(ds) -> Records:
    n = 0
    for batch in ds.iter(batch_size=1024):
        keys = list(batch)
        for values in zip(*batch.values()):
            n += 1
            yield ("row", n), dict(zip(keys, values))


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _read_folder(path: str, split: str, flag: str) -> tuple[str, Records]:
    import datasets
    if _is_saved_dataset(path):
        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:
            raise ConfigError(f"{path}: cannot read the saved `datasets` folder ({_first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ConfigError(f"{path}: no split {split!r} ({flag}); its splits are {', '.join(ds)}")
            return f"{path} split {split!r}", _dataset_records(ds[split])
        return path, _dataset_records(ds)
    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:
        raise ConfigError(f"{path}: a folder that is neither a `datasets` folder saved with save_to_disk nor "
                          f"one datasets.load_dataset can read at split {split!r} ({_first_line(e)})") from None
    return f"{path} split {split!r}", _dataset_records(ds)


def _read_hub(name: str, split: str) -> tuple[str, Records]:
    import datasets
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        raise ConfigError(f"dataset {name!r}: not a file or folder here, and datasets.load_dataset could not "
                          f"load it from the Hugging Face hub at split {split!r} ({_first_line(e)})") from None
    return f"{name} split {split!r}", _dataset_records(ds)


def _looks_like_path(source: str) -> bool:
    ext = os.path.splitext(source)[1].lower()
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
            or ext in FILE_TYPES or ext in (".txt", ".tsv", ".gz", ".zip", ".xlsx"))


def read_records(source: str, split: str = "train", flag: str = "--dataset-split") -> tuple[str, Records]:
    """(label, records) for a file, a folder or a hub name; `split` applies to folders and hub names.

    `label` is what error messages name; records yield ((unit, number), raw value) lazily."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return _read_folder(path, split, flag)
    if os.path.exists(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in FILE_TYPES:
            kind = f"{ext!r}" if ext else "(no extension)"
            raise ConfigError(f"{source}: unknown file type {kind}; expected .jsonl, .json, .csv or .parquet, "
                              "a `datasets` folder saved with save_to_disk, or a hub dataset name")
        return source, READERS[FILE_TYPES[ext]](path)
    if _looks_like_path(source):
        raise ConfigError(f"{source}: file not found")
    return _read_hub(source, split)


# ------------------------------------------------------------------ rows
def _check_prompt(value: Any, label: str, where: Where, column: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{_at(label, where)}: the prompt (column {column!r}) is empty")
        return value
    if isinstance(value, (list, tuple)) and value:
        for j, m in enumerate(value, 1):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ConfigError(f"{_at(label, where)}: the prompt (column {column!r}) is a list, but item {j} "
                                  f'is {_short(m)}, not a {{"role": text, "content": text}} message')
        return list(value)
    got = "an empty list" if isinstance(value, (list, tuple)) else f"{_kind(value)} {_short(value)}"
    raise ConfigError(f"{_at(label, where)}: the prompt (column {column!r}) must be text or a list of "
                      f'{{"role", "content"}} messages, got {got}')


def _missing_prompt(rec: dict, label: str, where: Where, column: str) -> ConfigError:
    cols = [str(k) for k in rec]
    if not cols:
        return ConfigError(f"{_at(label, where)}: no prompt column {column!r} (--prompt-column); the row has no "
                           "columns at all")
    near = difflib.get_close_matches(column, cols, n=1, cutoff=0.6)
    near = near or [c for c in PROMPT_LIKE if c in cols][:1]
    hint = f"; did you mean --prompt-column {near[0]}?" if near else ""
    return ConfigError(f"{_at(label, where)}: no prompt column {column!r} (--prompt-column), the first row "
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
            raise ConfigError(f"{_at(label, where)}: expected an object of column: value, got {_kind(rec)} "
                              f"{_short(rec)}")
        if prompt_column not in rec:
            raise _missing_prompt(rec, label, where, prompt_column)
        row = {"prompt": _check_prompt(rec[prompt_column], label, where, prompt_column)}
        if answer_column is not None and answer_column in rec:
            row["answer"] = _answer(rec[answer_column])
        for k, v in rec.items():
            if k in (prompt_column, answer_column, "prompt", "answer"):
                continue
            if k in RESERVED:
                raise ConfigError(f"{_at(label, where)}: column {k!r} clashes with the reward functions' "
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
        if os.path.exists(ev_path) or _looks_like_path(ev):
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
    elif n_eval:
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


def dataset_task(cfg):
    """The Task of `cfg.dataset`: rows as read, held-out rows as described in the module docstring, and
    `exact_match` as the default reward when the data has an answer column (none otherwise)."""
    from .tasks import Task, exact_match
    train, held, info = split_rows(cfg)

    def row(index: int, heldout: bool) -> dict:
        return dict((held if heldout else train)[index])

    rewards = {"exact_match": exact_match} if "answer" in train[0] else {}
    return Task(name=cfg.dataset, train_size=len(train), heldout_size=len(held), row=row, rewards=rewards,
                info=info)
