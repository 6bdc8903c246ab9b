"""Records that cross the reward actor boundary, and the pool's settings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Optional

# Names of components served by dedicated actors rather than registered verifiers.
MODEL_COMPONENTS = ("reward_model", "judge")


@dataclass(frozen=True)
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
class RewardSpec:
    """Everything a RewardPool needs; mirrors `cluster.config.RewardConfig` field by field
    (reward/ may not import cluster/, so the config is passed in as keyword arguments)."""

    num_workers: int = 1
    verifier: str = "arithmetic"
    format_weight: float = 0.1
    timeout_s: float = 2.0
    fallback_score: float = 0.0
    max_workers: Optional[int] = None  # scale up to this many verifier workers under load
    max_retries: int = 1  # extra tries after a timeout or a lost worker (not after a verifier error)
    cache_size: int = 100_000  # results kept, keyed by (verifier setup, prompt, response, answer)
    batch_size: int = 8  # samples per worker call
    max_pending: int = 4096  # samples queued before submit() blocks (backpressure)
    components: dict[str, float] = field(default_factory=dict)  # extra named rewards -> weights
    verifier_options: dict[str, dict] = field(default_factory=dict)  # verifier -> keyword options
    plugins: list[str] = field(default_factory=list)  # modules imported by each worker to register verifiers
    clip_min: Optional[float] = None
    clip_max: Optional[float] = None
    normalize: Literal["none", "running"] = "none"
    shaping: Literal["none", "par"] = "none"
    par_reference: Literal["fixed", "group_mean"] = "fixed"
    par_reference_value: float = 0.0
    reward_model_path: Optional[str] = None
    reward_model_batch_size: int = 32
    reward_model_device: str = "cpu"
    judge_url: Optional[str] = None
    judge_model: str = "judge"
    judge_requests_per_s: float = 5.0
    judge_concurrency: int = 4
    judge_max_retries: int = 3
    judge_timeout_s: float = 30.0

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def weights(self) -> dict[str, float]:
        """All weighted components: the correctness verifier, format, and the extras."""
        out = {self.verifier: 1.0}
        if self.format_weight:
            out["format"] = out.get("format", 0.0) + self.format_weight
        for name, w in self.components.items():
            out[name] = out.get(name, 0.0) + w
        return out
