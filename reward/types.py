"""Records that cross the reward actor boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class RewardResult:
    group_id: int
    sample_index: int
    reward: float  # correctness + format_weight * format (or the fallback score)
    correct: bool
    format_ok: bool
    failure: Optional[str] = None  # "timeout: ..." / "error: ..." when the fallback was used
    latency_s: float = 0.0
