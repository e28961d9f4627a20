"""--dataset: every loader on small files, column mapping, the held-out rule, and one-sentence errors."""

from __future__ import annotations

import csv
import json
import random

import pytest

from grpo.data import readers as data
from grpo.config import ConfigError, resolve
from grpo.data.tasks import build_task

ROWS = [{"question": f"q{i}?", "answer": str(i), "level": i % 3} for i in range(10)]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def cfg_for(source, **kw):
    return resolve(overrides={"model": "m", "dataset": str(source), "prompt_column": "question", "eval_size": 3,
                              **kw})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def error(cfg_or_source, **kw) -> str:
    cfg = cfg_or_source if not isinstance(cfg_or_source, (str,)) and hasattr(cfg_or_source, "dataset") \
        else cfg_for(cfg_or_source, **kw)
    with pytest.raises(ConfigError) as e:
        build_task(cfg)
    return str(e.value)


def all_rows(task):
    return [task.row(i, False) for i in range(task.train_size)], task.heldout(task.heldout_size)


# ------------------------------------------------------------------ each format
@pytest.mark.parametrize("fmt", ["jsonl", "json", "json_data", "csv", "parquet", "saved", "saved_dict"])
def test_each_format_gives_the_same_rows(tmp_path, fmt):
    if fmt == "jsonl":
        src = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif fmt == "json":
        src = tmp_path / "d.json"
        src.write_text(json.dumps(ROWS, indent=1))
    elif fmt == "json_data":
        src = tmp_path / "d.json"
        src.write_text(json.dumps({"data": ROWS}))
    elif fmt == "csv":
        src = write_csv(tmp_path / "d.csv", ROWS)
    elif fmt == "parquet":
        src = write_parquet(tmp_path / "d.parquet", ROWS)
    else:
        import datasets
        ds = datasets.Dataset.from_list(ROWS)
        src = tmp_path / "saved"
        (datasets.DatasetDict({"train": ds}) if fmt == "saved_dict" else ds).save_to_disk(str(src))
    task = build_task(cfg_for(src))
    train, held = all_rows(task)
    assert (task.train_size, task.heldout_size) == (7, 3)
    assert [r["prompt"] for r in train] == [f"q{i}?" for i in range(7)]
    assert [r["prompt"] for r in held] == ["q7?", "q8?", "q9?"]          # the last eval_size rows
    assert [r["answer"] for r in train] == [str(i) for i in range(7)]
    level = [r["level"] for r in train]                                  # extra column kept under its name
    assert level == ([str(i % 3) for i in range(7)] if fmt == "csv" else [i % 3 for i in range(7)])
    assert set(train[0]) == {"prompt", "answer", "level"}               # "question" became "prompt"
    assert "exact_match" in task.rewards and task.name == str(src)


def test_chat_messages_prompt_and_numeric_answer(tmp_path):
    rows = [{"messages": CHAT, "answer": 4, "id": i} for i in range(3)]
    rows[2]["messages"] = [{"role": "user", "content": "other"}]
    task = build_task(cfg_for(write_jsonl(tmp_path / "chat.jsonl", rows), prompt_column="messages", eval_size=1))
    row = task.row(0, False)
    assert row == {"prompt": CHAT, "answer": "4", "id": 0}               # numbers become text


def test_chat_messages_from_a_saved_dataset(tmp_path):
    import datasets
    datasets.Dataset.from_list([{"messages": CHAT, "gold": "4"}] * 2 + [{"messages": CHAT[1:], "gold": "5"}]) \
        .save_to_disk(str(tmp_path / "ds"))
    task = build_task(cfg_for(tmp_path / "ds", prompt_column="messages", answer_column="gold", eval_size=1))
    assert task.row(0, False)["prompt"] == CHAT and task.heldout(1)[0] == {"prompt": CHAT[1:], "answer": "5"}


def test_columns_missing_in_some_rows_are_filled_with_none(tmp_path):
    rows = [{"question": "a"}, {"question": "b", "answer": "1", "note": "x"}, {"question": "c"}]
    task = build_task(cfg_for(write_jsonl(tmp_path / "d.jsonl", rows), eval_size=0))
    rows = [task.row(i, False) for i in range(3)]
    assert rows[0] == {"prompt": "a", "answer": None, "note": None}
    assert all(set(r) == {"prompt", "answer", "note"} for r in rows) and task.heldout_size == 0


def test_a_column_named_like_the_output_is_replaced_by_the_chosen_one(tmp_path):
    rows = [{"prompt": "raw", "question": "q", "answer": "old", "gold": "new"}] * 2
    task = build_task(cfg_for(write_jsonl(tmp_path / "d.jsonl", rows), answer_column="gold", eval_size=0))
    assert task.row(0, False) == {"prompt": "q", "answer": "new"}


def test_no_answer_column_means_no_answer_and_no_default_reward(tmp_path):
    task = build_task(cfg_for(write_jsonl(tmp_path / "d.jsonl", [{"question": "a"}, {"question": "b"}]),
                              eval_size=1))
    assert task.row(0, False) == {"prompt": "a"} and task.rewards == {}


def test_json_file_holding_json_lines_is_read_as_such(tmp_path):
    task = build_task(cfg_for(write_jsonl(tmp_path / "d.json", ROWS)))
    assert task.train_size == 7


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"question": "a"}\n\n{"question": "b"}\n\n{"question": 3}\n')
    assert error(p, eval_size=0).startswith(f"{p} line 5: ")


def test_csv_quoted_newlines_and_line_numbers(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('question,answer\n"two\nlines",1\n"",2\n')
    msg = error(p, eval_size=0)
    assert msg == f"{p} line 4: the prompt (column 'question') is empty"


# ------------------------------------------------------------------ held-out rule
def test_heldout_is_disjoint_and_duplicates_are_dropped_from_training(tmp_path):
    rows = [{"question": f"q{i % 8}", "answer": str(i)} for i in range(12)]   # q0..q3 appear twice
    task = build_task(cfg_for(write_jsonl(tmp_path / "d.jsonl", rows), eval_size=4))  # held: q0..q3 (rows 8-11)
    train, held = all_rows(task)
    assert [r["prompt"] for r in held] == ["q0", "q1", "q2", "q3"]
    assert [r["prompt"] for r in train] == ["q4", "q5", "q6", "q7"]
    assert task.info["overlap_dropped"] == 4
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    picks = task.sample_train(random.Random(0), 50)
    assert picks == task.sample_train(random.Random(0), 50)
    assert {r["prompt"] for r in picks} <= {"q4", "q5", "q6", "q7"}


def test_eval_split_as_a_second_file(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", ROWS)
    ev = write_jsonl(tmp_path / "test.jsonl", [{"question": "t1", "answer": "1"}, {"question": "q0?", "answer": "0"},
                                              {"question": "t3", "answer": "3"}])
    task = build_task(cfg_for(src, eval_split=str(ev)))
    train, held = all_rows(task)
    assert task.heldout_size == 3 and [r["prompt"] for r in held] == ["t1", "q0?", "t3"]
    assert [r["prompt"] for r in train] == [f"q{i}?" for i in range(1, 10)]   # q0? is held out, so dropped


def test_eval_split_of_a_saved_dataset_dict(tmp_path):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list([{"question": "t", "answer": "1", "level": 0}] * 5)}) \
        .save_to_disk(str(tmp_path / "dd"))
    task = build_task(cfg_for(tmp_path / "dd", eval_split="test", eval_size=2))
    assert (task.train_size, task.heldout_size) == (10, 5) and task.heldout(2)[1]["prompt"] == "t"
    assert "'test'" in task.info["heldout"]


def test_hub_name_goes_to_load_dataset(monkeypatch):
    import datasets
    calls = []

    def fake(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(ROWS if split == "train" else ROWS[:4])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = build_task(cfg_for("openai/gsm8k:main", eval_split="test"))
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert task.heldout_size == 4 and task.train_size == 6                  # q0..q3 are held out


def test_eval_size_zero_holds_nothing_out(tmp_path):
    task = build_task(cfg_for(write_jsonl(tmp_path / "d.jsonl", ROWS), eval_size=0))
    assert (task.train_size, task.heldout_size) == (10, 0)


# ------------------------------------------------------------------ errors
def test_malformed_json_line(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text('{"question": "a"}\n' * 6 + '{"question": "b",}\n')
    assert error(p) == f"{p} line 7: not valid JSON (Expecting property name enclosed in double quotes: column 18)"


def test_malformed_json_file(tmp_path):
    p = tmp_path / "data.json"
    p.write_text('[\n {"question": "a"},\n {"question" "b"}\n]')
    assert error(p) == f"{p} line 3: not valid JSON (Expecting ':' delimiter: column 14)"


def test_json_of_the_wrong_shape(tmp_path):
    p = tmp_path / "data.json"
    p.write_text('{"rows": []}')
    assert error(p) == f'{p}: expected a list of objects, or an object {{"data": [...]}}, got an object with keys rows'


def test_row_that_is_not_an_object(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text('{"question": "a"}\n["a", "b"]\n')
    assert error(p) == f"{p} line 2: expected an object of column: value, got a list ['a', 'b']"
    p = tmp_path / "data.json"
    p.write_text('[{"question": "a"}, 5]')
    assert error(p) == f"{p} row 2: expected an object of column: value, got a number 5"


def test_missing_prompt_column_names_row_columns_and_a_suggestion(tmp_path):
    p = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "answer": "1"}, {"promt": "b", "answer": "2"}])
    assert error(cfg_for(p, prompt_column="prompt")) == (
        f"{p} line 2: no prompt column 'prompt' (--prompt-column), the first row without it; "
        "its columns are promt, answer; did you mean --prompt-column promt?")
    p = write_parquet(tmp_path / "data.parquet", [{"problem": "a", "solution": "1"}])
    assert error(cfg_for(p, prompt_column="prompt")) == (
        f"{p} row 1: no prompt column 'prompt' (--prompt-column), the first row without it; "
        "its columns are problem, solution; did you mean --prompt-column problem?")


def test_prompt_of_the_wrong_type(tmp_path):
    p = write_jsonl(tmp_path / "data.jsonl", [{"question": "a"}, {"question": 42}])
    assert error(p) == (f"{p} line 2: the prompt (column 'question') must be text or a list of "
                        '{"role", "content"} messages, got a number 42')
    p = write_jsonl(tmp_path / "data.jsonl", [{"question": [{"role": "user", "text": "hi"}]}])
    assert error(p) == (f"{p} line 1: the prompt (column 'question') is a list, but item 1 is "
                        "{'role': 'user', 'text': 'hi'}, not a {\"role\": text, \"content\": text} message")
    p = write_jsonl(tmp_path / "data.jsonl", [{"question": None}])
    assert error(p).startswith(f"{p} line 1: the prompt (column 'question') must be text or a list")


def test_empty_dataset(tmp_path):
    for name, text in (("data.jsonl", "\n\n"), ("data.json", "[]"), ("data.csv", "question,answer\n")):
        (tmp_path / name).write_text(text)
        assert error(tmp_path / name) == f"{tmp_path / name}: no rows; the dataset is empty"


def test_missing_unreadable_and_unknown_files(tmp_path):
    assert error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    p = tmp_path / "data.txt"
    p.write_text("hello")
    assert error(p) == (f"{p}: unknown file type '.txt'; expected .jsonl, .json, .csv or .parquet, "
                        "a `datasets` folder saved with save_to_disk, or a hub dataset name")
    p = tmp_path / "bad.parquet"
    p.write_text("not parquet")
    assert error(p).startswith(f"{p}: not a readable Parquet file (")
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"question": "a"}\n{"question": "caf\xe9"}\n')
    assert error(p) == f"{p} line 2: not valid UTF-8 text (invalid continuation byte at byte 18 of the line)"
    p = tmp_path / "latin1.json"
    p.write_bytes(b'[{"question": "a"},\n {"question": "caf\xe9"}]')
    assert error(p) == f"{p} line 2: not valid UTF-8 text (invalid continuation byte at byte 19 of the line)"


def test_csv_errors(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("question,answer\na,1\nb,2,extra\n")
    assert error(p) == f"{p} line 3: 3 fields, but the header (line 1) names 2 columns"
    p.write_text("question,question\na,1\n")
    assert error(p) == f"{p} line 1: the header names column 'question' twice"


def test_heldout_errors(tmp_path):
    p = write_jsonl(tmp_path / "data.jsonl", ROWS[:3])
    assert error(p) == (f"{p} has 3 rows, so holding out the last 3 (eval_size) would leave none to train on; "
                        "lower --eval-size or give --eval-split")
    big = write_jsonl(tmp_path / "big.jsonl", ROWS)
    assert error(big, eval_split=str(p), eval_size=5) == (
        f"eval_size is 5 but the held-out split {p} has 3 rows; lower --eval-size to 3 or less")
    assert error(big, eval_split="test") == (
        f"eval_split 'test': {big} is a single file, so --eval-split must name a second file, "
        "and 'test' is not a file here")
    assert error(big, eval_split=str(big)).startswith("eval_split")
    noans = write_jsonl(tmp_path / "noans.jsonl", [{"question": "x"}] * 3)
    assert error(big, eval_split=str(noans)) == (
        f"{noans}: no answer column 'answer' (--answer-column), which the training rows of {big} have")


def test_saved_dataset_errors(tmp_path):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    assert error(tmp_path / "dd", dataset_split="validation") == (
        f"{tmp_path / 'dd'}: no split 'validation' (--dataset-split); its splits are train")
    assert error(tmp_path / "dd", eval_split="test") == (
        f"{tmp_path / 'dd'}: no split 'test' (--eval-split); its splits are train")
    assert error(tmp_path / "dd", eval_split="train") == (
        "eval_split 'train' is the training split itself (--dataset-split); name another split, "
        "or leave --eval-split empty to hold out the last eval_size rows")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert error(tmp_path / "single", eval_split="test") == (
        f"eval_split 'test': {tmp_path / 'single'} holds a single `datasets` Dataset without splits, so "
        "--eval-split must name a second file or folder, and it is not one here")


def test_reserved_column_names(tmp_path):
    p = write_jsonl(tmp_path / "data.jsonl", [{"question": "a", "completions": "x"}])
    assert error(p, eval_size=0) == (f"{p} line 1: column 'completions' clashes with the reward functions' "
                                     "argument of that name, which the trainer fills; rename the column")


def test_hub_failure_is_one_sentence(monkeypatch):
    import datasets

    def fake(*a, **k):
        raise ConnectionError("no internet\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert error("someone/thing") == ("dataset 'someone/thing': not a file or folder here, and "
                                      "datasets.load_dataset could not load it from the Hugging Face hub at split "
                                      "'train' (ConnectionError: no internet)")


def test_rows_are_read_lazily_by_the_readers(tmp_path):
    label, records = data.read_records(str(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert next(records) == (("line", 1), ROWS[0])


def test_unreadable_file(tmp_path, monkeypatch):
    import builtins
    p = write_jsonl(tmp_path / "data.jsonl", ROWS)
    real_open = builtins.open

    def deny(file, *a, **k):
        if str(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    assert error(p) == f"{p}: cannot read the file (Permission denied)"
