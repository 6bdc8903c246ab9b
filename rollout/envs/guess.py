"""The `guess_number` environment: later turns depend on feedback. The row's answer is a secret
integer; each model turn is a guess, answered '+' (the secret is higher), '-' (lower) or '#'
(not a number). A right guess ends the episode; the outcome verifier then reads that guess.
`turn_penalty` is subtracted for every wrong guess (a per-turn reward), so fewer turns pay."""

from __future__ import annotations

import re

from rollout.envs.base import ENVS, Step


class GuessNumber:
    def __init__(self, secret: int, turn_penalty: float):
        self.secret, self.penalty = secret, turn_penalty

    def reset(self) -> str:
        return ""

    def step(self, action: str) -> Step:
        text = action.strip()
        if re.fullmatch(r"-?\d{1,9}", text) is None:
            return Step(observation="#", reward=-self.penalty)
        guess = int(text)
        if guess == self.secret:
            return Step(done=True)
        return Step(observation="+" if self.secret > guess else "-", reward=-self.penalty)


@ENVS.register("guess_number", "guess the row's answer (an integer); each wrong guess is told higher (+) or lower (-)")
def guess_number(prompt: str, answer: str, turn_penalty: float = 0.0) -> GuessNumber:
    return GuessNumber(int(answer), turn_penalty)
