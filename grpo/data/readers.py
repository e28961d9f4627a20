"""Reading a dataset source into raw records, lazily, with the place of each: files by extension
(JSONL, JSON, CSV, Parquet), `datasets` folders saved to disk, and hub dataset names. Every
problem is a ConfigError of one sentence naming the file (or split) and the line or row (see
grpo/data/datasets.py for what becomes of the records)."""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable, Iterator

from ..config import ConfigError

FILE_TYPES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
              ".parquet": "parquet", ".pq": "parquet"}

Where = tuple[str, int]            # ("line", 7) or ("row", 3)
Records = Iterator[tuple[Where, Any]]


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def at(label: str, where: Where) -> str:
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
               else kind_of(data))
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
        raise ConfigError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            yield ("row", n), rec


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def first_line(e: BaseException) -> str:
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


def object_records(data: Any, label: str) -> Records:
    """Records of a dataset handed in from Python: a `datasets.Dataset`, a list of row mappings, a
    mapping of column -> list (a DataFrame's `to_dict("list")`), or a pandas DataFrame."""
    if hasattr(data, "iter") and hasattr(data, "column_names"):          # datasets.Dataset
        return _dataset_records(data)
    if hasattr(data, "keys") and all(hasattr(v, "column_names") for v in data.values()):   # DatasetDict
        raise ConfigError(f"{label}: a DatasetDict with splits {', '.join(data)}; pass one split, e.g. "
                          f"dataset[{next(iter(data), 'train')!r}]")
    if hasattr(data, "to_dict") and hasattr(data, "columns"):            # pandas.DataFrame
        data = data.to_dict("records")
    if isinstance(data, dict):
        columns = {k: list(v) for k, v in data.items()}
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise ConfigError(f"{label}: a mapping of columns whose lengths differ "
                              f"({', '.join(f'{k}: {len(v)}' for k, v in columns.items())})")
        data = [dict(zip(columns, values)) for values in zip(*columns.values())]
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise ConfigError(f"{label}: expected a datasets.Dataset, a list of rows or a mapping of columns, got "
                          f"{kind_of(data)}")
    return ((("row", i), rec) for i, rec in enumerate(data, 1))


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _read_folder(path: str, split: str, flag: str) -> tuple[str, Records]:
    import datasets
    if _is_saved_dataset(path):
        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:
            raise ConfigError(f"{path}: cannot read the saved `datasets` folder ({first_line(e)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ConfigError(f"{path}: no split {split!r} ({flag}); its splits are {', '.join(ds)}")
            return f"{path} split {split!r}", _dataset_records(ds[split])
        return path, _dataset_records(ds)
    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:
        raise ConfigError(f"{path}: a folder that is neither a `datasets` folder saved with save_to_disk nor "
                          f"one datasets.load_dataset can read at split {split!r} ({first_line(e)})") from None
    return f"{path} split {split!r}", _dataset_records(ds)


def _read_hub(name: str, split: str) -> tuple[str, Records]:
    import datasets
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        raise ConfigError(f"dataset {name!r}: not a file or folder here, and datasets.load_dataset could not "
                          f"load it from the Hugging Face hub at split {split!r} ({first_line(e)})") from None
    return f"{name} split {split!r}", _dataset_records(ds)


def looks_like_path(source: str) -> bool:
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
    if looks_like_path(source):
        raise ConfigError(f"{source}: file not found")
    return _read_hub(source, split)
