"""Prompt datasets: jsonl files of {prompt, answer} rows, read with row-level errors."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    id: int  # row index in its file, stable across runs
    text: str
    answer: str
    # [P] the token ids the engines generate after: the text rendered by the policy's tokenizer
    # (chat template or plain text with its special tokens), set by render_prompts.
    ids: tuple[int, ...] = ()


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


def load_prompts(path: str | Path, prompt_key: str = "prompt", answer_key: str = "answer") -> list[Prompt]:
    """Every row must be a JSON object with string `prompt_key` and `answer_key`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    prompts: list[Prompt] = []
    for lineno, row in read_jsonl(path):
        for key in (prompt_key, answer_key):
            if key not in row:
                raise DataError(f"{path}:{lineno}: missing key '{key}' (keys: {sorted(row)})")
            if not isinstance(row[key], (str, int)):
                raise DataError(f"{path}:{lineno}: '{key}' must be a string, got {type(row[key]).__name__}")
        prompts.append(Prompt(id=len(prompts), text=str(row[prompt_key]), answer=str(row[answer_key])))
    if not prompts:
        raise DataError(f"{path}: no rows")
    return prompts


def render_prompts(prompts: list[Prompt], render: Callable[[str, str], Sequence[int]], path: str | Path) -> list[Prompt]:
    """Each prompt with its token ids, `render(text, where)` (`where` names the file and row
    for its errors); a prompt that renders to nothing is an error too."""
    out = []
    for p in prompts:
        where = f"{path}: row {p.id + 1}"
        ids = tuple(int(i) for i in render(p.text, where))
        if not ids:
            raise DataError(f"{where}: the prompt renders to no tokens")
        out.append(replace(p, ids=ids))
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
