"""Rule-based verifiers: one signature `fn(response: str, answer: str) -> float`.

Registered by name; `RewardConfig.verifier` picks the correctness verifier and
`format` is added with `RewardConfig.format_weight`.
"""

from __future__ import annotations

import re

from rollout.registry import Registry

VERIFIERS: Registry = Registry("verifier")

_INT = re.compile(r"^[+-]?\d+$")


def normalize_number(text: str) -> str | None:
    """'  0042 ' -> '42', '-7' -> '-7', '1,234' -> '1234'; None when not an integer."""
    text = text.strip().replace(",", "").replace(" ", "")
    if not _INT.match(text):
        return None
    return str(int(text))


def final_answer(response: str) -> str:
    """The text after the last '####' marker, else the whole response."""
    return response.rsplit("####", 1)[-1]


@VERIFIERS.register("arithmetic", "1.0 when the final integer answer equals the reference after normalisation")
def arithmetic(response: str, answer: str) -> float:
    got = normalize_number(final_answer(response))
    want = normalize_number(answer)
    if want is None:
        raise ValueError(f"reference answer {answer!r} is not an integer")
    return 1.0 if got is not None and got == want else 0.0


@VERIFIERS.register("format", "1.0 when the response is a bare integer answer (the task's format)")
def format_reward(response: str, answer: str) -> float:
    return 1.0 if normalize_number(final_answer(response)) is not None else 0.0
