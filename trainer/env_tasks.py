"""The multi-turn recipes' tasks for the tiny model (model.bootstrap_spec.task), each a set of
prompt rows, warm-up trajectories and the warm-up's stopping metric.

The warm-ups teach the format only; reinforcement learning has to teach the policy to use the
environment. Warm-up trajectories are played against the environment itself (its observations,
encoded as an engine encodes them, never train), so they look exactly like RL's (rollout/envs/).

- `tool_addition` (recipes/tool_quickstart.yaml): 4-digit addition, which a 0.5M-parameter
  model does not learn in its head within a CPU budget, with the `tool_use` environment's
  calculator: "<s>1234+5678=" -> model "#1234+5678</s>" -> observation "6912=" -> model
  "6912</s>". A fraction `tool_rate` of the warm-up examples call the tool and the rest answer
  directly, whatever the problem, so the policy starts out mostly answering in its head (and
  wrong). Stopping rule: the accuracy of a forced call (the first turn made to start with '#').
- `guess_number` (recipes/guess_number.yaml): find a secret digit 0-9 from higher / lower
  answers: "<s>#=" -> model "5</s>" -> "+" -> model "8</s>" -> "-" -> model "7</s>". The warm-up's
  guesses are drawn at random (no repeats), ignoring the feedback, so it teaches the format and
  not the search. Stopping rule: the rate of well-formed first guesses.
"""

from __future__ import annotations

import random

import torch

from rollout.envs.episode import Observations
from rollout.envs.guess import guess_number
from rollout.envs.tool_use import tool_use

Example = tuple[list[int], list[float]]  # (ids, trains)
GUESS_PROMPT, GUESS_RANGE, GUESS_TURNS = "#=", 10, 4  # recipes/guess_number.yaml: rollout.max_turns 4


class _Trajectory:
    """A warm-up example built turn by turn: model turns train, observations do not."""

    def __init__(self, tokenizer, prompt: str):
        self.tok, self.obs = tokenizer, Observations(tokenizer)
        self.ids = list(tokenizer(prompt)["input_ids"])
        self.trains = [0.0] * len(self.ids)

    def turn(self, text: str) -> None:
        piece = list(self.tok(text, add_special_tokens=False)["input_ids"]) + [self.tok.eos_token_id]
        self.ids += piece
        self.trains += [1.0] * len(piece)

    def observe(self, text: str) -> None:
        piece = self.obs.ids(text)
        self.ids += piece
        self.trains += [0.0] * len(piece)

    def example(self) -> Example:
        return self.ids, self.trains


# ---- tool_addition ----

def tool_rows(spec, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Disjoint (train, eval, warm-up validation) problems a+b with max_digits-digit operands
    (drawn, not enumerated: 10^8 pairs at 4 digits); a+b and b+a land in the same split."""
    rng = random.Random(seed)
    lo, hi = 10 ** (spec.max_digits - 1), 10**spec.max_digits - 1
    seen: set[tuple[int, int]] = set()
    splits = []
    for size in (spec.num_train_prompts, spec.num_eval_prompts, spec.sft_val_prompts):
        rows = []
        while len(rows) < size:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if (min(a, b), max(a, b)) not in seen:
                seen.add((min(a, b), max(a, b)))
                rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
        splits.append(rows)
    return splits[0], splits[1], splits[2]


def tool_example(tokenizer, row: dict, call: bool) -> Example:
    t = _Trajectory(tokenizer, row["prompt"])
    if call:
        action = "#" + row["prompt"].rstrip("=")
        t.turn(action)
        t.observe(tool_use(row["prompt"], row["answer"]).step(action).observation)
    t.turn(row["answer"])
    return t.example()


@torch.no_grad()
def _greedy(model, tokenizer, seqs: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Each sequence's greedy continuation up to EOS (included) or max_new_tokens."""
    width, pad, eos = max(map(len, seqs)), tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad)[:, width:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def forced_tool_accuracy(model, tokenizer, rows: list[dict]) -> float:
    """Greedy accuracy when the first turn is made to start with '#' (a call): how well the policy
    uses the tool once it calls it, whatever it would choose."""
    hash_id = tokenizer("#", add_special_tokens=False)["input_ids"][0]
    starts = [list(tokenizer(r["prompt"])["input_ids"]) + [hash_id] for r in rows]
    seqs, observations = [], Observations(tokenizer)
    for row, start, call in zip(rows, starts, _greedy(model, tokenizer, starts, 12)):
        action = tokenizer.decode([hash_id] + call, skip_special_tokens=True)
        seqs.append(start + call + observations.ids(tool_use(row["prompt"], row["answer"]).step(action).observation))
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in _greedy(model, tokenizer, seqs, 8)]
    return sum(t.strip() == r["answer"] for t, r in zip(texts, rows)) / len(rows)


# ---- guess_number ----

def guess_rows(spec, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Every row is the same prompt; the answer (the secret) is drawn uniformly from 0-9. There
    is nothing to hold out: evaluation plays fresh episodes of the same game."""
    rng = random.Random(seed)

    def rows(n):
        return [{"prompt": GUESS_PROMPT, "answer": str(rng.randrange(GUESS_RANGE))} for _ in range(n)]

    return rows(spec.num_train_prompts), rows(spec.num_eval_prompts), rows(spec.sft_val_prompts)


def guess_example(tokenizer, row: dict, rng: random.Random, max_turns: int) -> Example:
    t = _Trajectory(tokenizer, row["prompt"])
    env = guess_number(row["prompt"], row["answer"])
    for turn, guess in enumerate(rng.sample(range(GUESS_RANGE), max_turns)):
        t.turn(str(guess))
        step = env.step(str(guess))
        if step.done or turn == max_turns - 1:
            break
        t.observe(step.observation)
    return t.example()


def well_formed_guesses(model, tokenizer, rows: list[dict]) -> float:
    """The fraction of greedy first guesses that are one digit and end the turn."""
    firsts = _greedy(model, tokenizer, [list(tokenizer(r["prompt"])["input_ids"]) for r in rows], 3)
    text = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return sum(len(f) == 2 and f[-1] == tokenizer.eos_token_id and text(f).isdigit() for f in firsts) / len(rows)


# ---- what the bootstrap calls ----

def make_rows(spec, seed: int):
    return (tool_rows if spec.task == "tool_addition" else guess_rows)(spec, seed)


def examples(tokenizer, rows: list[dict], rng: random.Random, spec) -> list[Example]:
    if spec.task == "tool_addition":
        return [tool_example(tokenizer, row, rng.random() < spec.tool_rate) for row in rows]
    return [guess_example(tokenizer, row, rng, GUESS_TURNS) for row in rows]


def validation_accuracy(model, tokenizer, rows: list[dict], spec) -> float:
    return (forced_tool_accuracy if spec.task == "tool_addition" else well_formed_guesses)(model, tokenizer, rows)
