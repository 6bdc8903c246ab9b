"""Datasets, read with row-level errors: the rows of jsonl, parquet, csv files or `save_to_disk`
directories (read_rows, shared with the offline modes' trainer/data.py), and the RL prompts:
{prompt, answer} rows under configurable, possibly nested, columns."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    id: int  # row index in its file, stable across runs
    text: str  # the prompt as the reward side reads it (a chat prompt: its last user message)
    answer: str
    # A chat prompt as given ({role, content} messages), rendered by the chat template; () for text.
    messages: tuple[dict, ...] = ()
    # [P] the token ids the engines generate after: the text rendered by the policy's tokenizer
    # (chat template or plain text with its special tokens), set by render_prompts.
    ids: tuple[int, ...] = ()
    # A partial solution (data.hint_key; "" for none) and its ids as a continuation of the prompt:
    # algorithm.hint_rescue generates after ids + hint_ids and trains the hint as the response's start.
    hint: str = ""
    hint_ids: tuple[int, ...] = ()


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) for every non-blank line; a line that is not a JSON object is an
    error naming the file and line."""
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def as_text(value: Any, where: str, key: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string or a message list, got {type(value).__name__}")
    return value


def as_messages(value: Any, where: str, key: str) -> list[dict]:
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: '{key}'[{i}] must be a {{role, content}} message with string values")
    if not value:
        raise DataError(f"{where}: '{key}' is an empty message list")
    return [{"role": m["role"], "content": m["content"]} for m in value]


WHERE = "__where__"  # a row's file and line, where its format has lines


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a jsonl, parquet or csv file, or of a `datasets.save_to_disk` directory (its
    'train' split when it holds several). Rows from jsonl and csv carry their line under
    WHERE, so that an error names it; other rows are named by their index (row_where)."""
    path = Path(path)
    if path.is_dir():
        rows = _read_dataset_dir(path)
    elif not path.is_file():
        raise DataError(f"dataset not found: {path}")
    elif path.suffix == ".parquet":
        import datasets

        try:
            rows = datasets.Dataset.from_parquet(str(path), keep_in_memory=True).to_list()
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors vary by corruption
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    elif path.suffix in (".jsonl", ".json"):
        rows = [row | {WHERE: f"{path}:{lineno}"} for lineno, row in read_jsonl(path)]
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise DataError(f"{path}: unknown dataset format (use .jsonl, .parquet, .csv or a dataset directory)")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _read_dataset_dir(path: Path) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a bad directory
        raise DataError(f"{path}: not a dataset directory written by datasets.save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {sorted(ds)}); "
                            "point at one split's directory")
        ds = ds["train"]
    return ds.to_list()


def _read_csv(path: Path) -> list[dict]:
    """Rows of a csv file with a header line; every value is a string (quoted fields may span lines)."""
    import csv

    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for row in reader:
            if None in row:  # more fields than the header names
                raise DataError(f"{path}:{reader.line_num}: {len(reader.fieldnames or []) + len(row[None])} fields; "
                                f"the header names {len(reader.fieldnames or [])}")
            rows.append(row | {WHERE: f"{path}:{reader.line_num}"})
    return rows


def row_where(path: str | Path, index: int, row: dict) -> str:
    """Where a row came from, for its errors: 'file:line', or 'file: row N' (1-based)."""
    return row.pop(WHERE, None) or f"{path}: row {index + 1}"


def column(row: dict, key: str, where: str) -> Any:
    """The row's value for a column `key`; a dotted key reaches into nested records (verl-style
    parquet: `reward_model.ground_truth`). A column that is not there is an error naming the row
    and the columns it has; a null value is an error too."""
    value: Any = row
    for part in ([key] if key in row else key.split(".")):
        if not isinstance(value, dict) or part not in value:
            columns = sorted(k for k in row if k != WHERE)
            raise DataError(f"{where}: no column '{key}' (columns: {', '.join(columns)})")
        value = value[part]
    if value is None:
        raise DataError(f"{where}: '{key}' is null")
    return value


def load_prompts(path: str | Path, prompt_key: str = "prompt", answer_key: str = "answer",
                 hint_key: str | None = None) -> list[Prompt]:
    """RL prompts: every row has a prompt (a string, or a list of {role, content} messages) and a
    reference answer (a string or a number; whatever the verifier reads) under the given columns,
    and with `hint_key` a hint (a string, "" for none)."""
    prompts: list[Prompt] = []
    for index, row in enumerate(read_rows(path)):
        where = row_where(path, index, row)
        prompt, answer = column(row, prompt_key, where), column(row, answer_key, where)
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise DataError(f"{where}: '{answer_key}' must be a string or a number, got {type(answer).__name__}")
        if isinstance(prompt, list):
            messages = tuple(as_messages(prompt, where, prompt_key))
            text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        elif isinstance(prompt, (str, int)) and not isinstance(prompt, bool):
            messages, text = (), str(prompt)
        else:
            raise DataError(f"{where}: '{prompt_key}' must be a string or a message list, got {type(prompt).__name__}")
        hint = "" if hint_key is None else column(row, hint_key, where)
        if not isinstance(hint, str):
            raise DataError(f"{where}: '{hint_key}' must be a string (\"\" for no hint), got {type(hint).__name__}")
        prompts.append(Prompt(id=len(prompts), text=text, answer=str(answer), messages=messages, hint=hint))
    return prompts


def render_prompts(prompts: list[Prompt], render: Callable[[Any, str], Sequence[int]],
                   path: str | Path, continuation: Callable[[str], Sequence[int]] | None = None) -> list[Prompt]:
    """Each prompt with its token ids, `render(text or messages, where)` (`where` names the file
    and row for its errors), and its hint's, `continuation(hint)`; a prompt that renders to
    nothing is an error too."""
    out = []
    for p in prompts:
        where = f"{path}: row {p.id + 1}"
        ids = tuple(int(i) for i in render(list(p.messages) or p.text, where))
        if not ids:
            raise DataError(f"{where}: the prompt renders to no tokens")
        hint_ids = tuple(int(i) for i in continuation(p.hint)) if p.hint and continuation else ()
        out.append(replace(p, ids=ids, hint_ids=hint_ids))
    return out


class PromptSource:
    """Endless shuffled passes over the training prompts, reproducible from a seed."""

    def __init__(self, prompts: list[Prompt], seed: int):
        self._prompts = prompts
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self.epoch = 0

    def state(self) -> dict:
        """Where the passes stand (JSON-able, for a checkpoint): restored, the source deals the
        same prompts next as this one would."""
        version, internal, gauss = self._rng.getstate()
        return {"prompts": len(self._prompts), "epoch": self.epoch, "order": list(self._order),
                "rng": [version, list(internal), gauss]}

    def restore(self, state: dict) -> None:
        if state["prompts"] != len(self._prompts):
            raise DataError(f"the checkpoint's prompt source dealt from {state['prompts']} prompts; the dataset now "
                            f"has {len(self._prompts)}: resuming would train on other prompts")
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._order, self.epoch = list(state["order"]), state["epoch"]

    def next_batch(self, n: int) -> list[Prompt]:
        batch = []
        while len(batch) < n:
            if not self._order:
                self._order = list(range(len(self._prompts)))
                self._rng.shuffle(self._order)
                self.epoch += 1
            batch.append(self._prompts[self._order.pop()])
        return batch


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    tmp.replace(path)
