"""Text -> token ids, with the tokenizer's chat template when there is one to use.

Shared by the stages that turn rows into ids: the RL prompts (cluster/run.py), the SFT and
preference datasets (trainer/data.py) and the reward-model worker (reward/reward_model.py),
which must see a prompt and a response exactly as its training rendered them. It lives on
the ground floor so that none of them imports upward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from rollout.data import DataError, as_messages, as_text

# Written beside a reward model's exported weights: how its training rendered the rows.
RENDERING_FILE = "tandem_rendering.json"


class Renderer:
    """Text -> token ids, with the tokenizer's chat template when there is one to use."""

    def __init__(self, tokenizer, chat_template: Optional[bool] = None, max_length: int = 1024,
                 append_eos: bool = True, system_prompt: Optional[str] = None):
        has = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has:
            raise DataError("data.chat_template is true but the tokenizer has no chat template")
        self.tok, self.templated = tokenizer, has if chat_template is None else chat_template
        self.max_length, self.append_eos = max_length, append_eos
        # data.system_prompt: a system message first (a row's own system message wins); as plain
        # text, a line before the prompt, then a blank line.
        self.system_prompt = system_prompt

    def _chat(self, prompt: Any, where: str) -> list[dict]:
        """A prompt (text or messages) as the messages the template renders, system prompt first."""
        messages = as_messages(prompt, where, "prompt") if isinstance(prompt, list) else \
            [{"role": "user", "content": as_text(prompt, where, "prompt")}]
        return self._with_system(messages)

    def _with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt is None or messages[0]["role"] == "system":
            return messages
        return [{"role": "system", "content": self.system_prompt}, *messages]

    def _template(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _ids(self, text: str, specials: bool = False) -> list[int]:
        return list(self.tok(text, add_special_tokens=specials)["input_ids"])

    def prompt_ids(self, prompt: Any, where: str) -> list[int]:
        if not self.templated:
            if isinstance(prompt, list):
                raise DataError(f"{where}: the prompt is a message list but the tokenizer has no chat template")
            text = as_text(prompt, where, "prompt")
            return self._ids(text if self.system_prompt is None else f"{self.system_prompt}\n\n{text}", specials=True)
        return self._ids(self._template(self._chat(prompt, where), True))

    def continuation_ids(self, text: str) -> list[int]:
        """Text that continues a rendered prompt inside the model's turn (a hint): no special tokens."""
        return self._ids(text)

    def completion_ids(self, prompt: Any, completion: str) -> list[int]:
        """The completion's ids; with a template, its rendering after the prompt (end-of-turn included)."""
        if not self.templated:
            eos = [self.tok.eos_token_id] if self.append_eos else []
            return self._ids(completion) + eos
        messages = self._chat(prompt, "completion's prompt")
        head = self._template(messages, True)
        full = self._template([*messages, {"role": "assistant", "content": completion}], False)
        tail = full[len(head):] if full.startswith(head) else completion + (self.tok.eos_token or "")
        return self._ids(tail)

    def conversation(self, messages: list[dict], where: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """A multi-turn chat as (ids, trains): every assistant turn trains, the rest is context."""
        if not self.templated:
            raise DataError(f"{where}: a 'messages' row needs a tokenizer with a chat template")
        messages = self._with_system(messages)
        pieces, done = [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head, full = self._template(messages[:i], True), self._template(messages[: i + 1], False)
            if not (head.startswith(done) and full.startswith(head)):
                raise DataError(f"{where}: the chat template does not render turn {i} as an extension of the "
                                "turns before it; cannot tell which tokens are the assistant's")
            pieces += [(head[len(done):], False), (full[len(head):], True)]
            done = full
        if not any(trains for _, trains in pieces):
            raise DataError(f"{where}: no assistant message to train on")
        ids, trains = [], []
        for text, t in pieces:
            part = self._ids(text)
            ids += part
            trains += [t] * len(part)
        return tuple(ids[: self.max_length]), tuple(trains[: self.max_length])


def save_rendering(renderer: Renderer, directory: str | Path) -> None:
    """Record how `renderer` rendered a model's training rows, beside its exported weights."""
    Path(directory, RENDERING_FILE).write_text(json.dumps({"chat_template": renderer.templated,
                                                           "max_length": renderer.max_length,
                                                           "system_prompt": renderer.system_prompt}))


def load_rendering(directory: str | Path) -> dict:
    """What save_rendering wrote; {} for a checkpoint trained elsewhere (the defaults then apply:
    the tokenizer's chat template when it has one)."""
    path = Path(directory, RENDERING_FILE)
    return json.loads(path.read_text()) if path.is_file() else {}
