"""Supervised and preference datasets for the offline modes (sft, reward_model, dpo).

Files: jsonl or csv (an error names the line), parquet, or a dataset directory written by
`datasets.save_to_disk` (rollout/data.py: read_rows; columns may be dotted paths into nested
records). Rows are:

  sft:         {prompt, completion} (keys configurable), or {messages: [{role, content}, ...]}
               where every assistant turn trains
  preference:  {prompt, chosen, rejected[, margin]}; chosen/rejected are strings or message
               lists (UltraFeedback style: the conversation, ending with the assistant's answer;
               the prompt may then be omitted and is taken from the chosen conversation)

Text becomes token ids here: with the tokenizer's chat template when it has one (and
`chat_template` is not False), else plain `prompt + completion + EOS`. A malformed row
raises DataError naming the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rollout.data import DataError, as_messages, as_text, column, read_rows, row_where
from rollout.render import Renderer


@dataclass(frozen=True)
class Example:
    """One supervised sequence: ids [L] and which of them train (completion tokens)."""

    ids: tuple[int, ...]
    trains: tuple[bool, ...]  # [L]


@dataclass(frozen=True)
class PreferencePair:
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]  # the completion only
    rejected_ids: tuple[int, ...]
    margin: float = 0.0  # how much better chosen is (Bradley-Terry margin), when the data says


@dataclass(frozen=True)
class Keys:
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: Optional[str] = None


def _split_answer(value: Any, prompt: Any, where: str, key: str) -> tuple[Any, str]:
    """(prompt, answer text) from a string answer or a conversation ending with the answer."""
    if not isinstance(value, list):
        return prompt, as_text(value, where, key)
    messages = as_messages(value, where, key)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: '{key}' must end with an assistant message, ends with '{messages[-1]['role']}'")
    return (messages[:-1] if prompt is None and len(messages) > 1 else prompt), messages[-1]["content"]


def load_sft(path: str | Path, renderer: Renderer, keys: Keys = Keys()) -> tuple[list[Example], int]:
    """Supervised examples and how many were dropped (prompt alone at or over max_length)."""
    out, dropped = [], 0
    for index, row in enumerate(read_rows(path)):
        where = row_where(path, index, row)
        if keys.messages in row and keys.prompt not in row:
            messages = as_messages(column(row, keys.messages, where), where, keys.messages)
            out.append(Example(*renderer.conversation(messages, where)))
            continue
        prompt = column(row, keys.prompt, where)
        completion = as_text(column(row, keys.completion, where), where, keys.completion)
        p = renderer.prompt_ids(prompt, where)
        if len(p) >= renderer.max_length:
            dropped += 1
            continue
        c = renderer.completion_ids(prompt, completion)[: renderer.max_length - len(p)]
        out.append(Example(tuple(p + c), (False,) * len(p) + (True,) * len(c)))
    return out, dropped


def load_pairs(path: str | Path, renderer: Renderer, keys: Keys = Keys()) -> tuple[list[PreferencePair], int]:
    """Preference pairs and how many were dropped (prompt alone at or over max_length, or
    chosen and rejected identical within max_length)."""
    out, dropped = [], 0
    for index, row in enumerate(read_rows(path)):
        where = row_where(path, index, row)
        prompt = row.get(keys.prompt)
        chosen_prompt, chosen = _split_answer(column(row, keys.chosen, where), prompt, where, keys.chosen)
        _, rejected = _split_answer(column(row, keys.rejected, where), prompt, where, keys.rejected)
        if chosen_prompt is None:
            raise DataError(f"{where}: no column '{keys.prompt}' (and '{keys.chosen}' is not a conversation)")
        margin = 0.0
        if keys.margin is not None:
            value = column(row, keys.margin, where)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DataError(f"{where}: '{keys.margin}' must be a number, got {type(value).__name__}")
            margin = float(value)
        p = renderer.prompt_ids(chosen_prompt, where)
        room = renderer.max_length - len(p)
        if room <= 0:
            dropped += 1
            continue
        c, r = (renderer.completion_ids(chosen_prompt, text)[:room] for text in (chosen, rejected))
        if c == r:  # identical (or identical once truncated): no preference to learn
            dropped += 1
            continue
        out.append(PreferencePair(tuple(p), tuple(c), tuple(r), margin))
    return out, dropped
