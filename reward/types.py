"""Records that cross the reward actor boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True, kw_only=True)
class RewardResult:
    group_id: int
    sample_index: int
    reward: float  # composed, clipped, normalised, shaped reward (or the fallback score)
    correct: bool
    format_ok: bool
    failure: Optional[str] = None  # "timeout: ..." / "error: ..." when the fallback was used
    latency_s: float = 0.0  # compute time of this sample's components
    raw_reward: Optional[float] = None  # weighted sum before clipping/normalisation/shaping
    components: tuple[tuple[str, float], ...] = ()  # (name, value) of each named reward
    attempts: int = 1  # tries it took (retries after timeouts or lost workers)
    cached: bool = False  # served from the pool's result cache


@dataclass(frozen=True)
class ComponentScore:
    """One component's value for one sample, as a worker reports it."""

    name: str
    value: Optional[float]  # None on failure
    failure: Optional[str] = None
    latency_s: float = 0.0


@dataclass(frozen=True)
class WorkerReply:
    """A reward worker's answer to one call."""

    scores: list[tuple[ComponentScore, ...]]  # [n samples][components of this worker]
    tainted: bool = False  # a verifier thread overran and was abandoned: replace this worker
    pid: int = 0
