"""Records that cross the rollout actor boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 16
    seed: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    group_id: int  # unique per request in a run; all samples of it form one group
    prompt_id: int
    prompt: str
    answer: str
    num_samples: int  # group size: responses sampled for this prompt


@dataclass(frozen=True)
class Rollout:
    """One sampled response.

    `logprobs[i]` is log p(response_ids[i]) under the sampling policy's
    temperature-scaled distribution (log_softmax(logits / T), before top-p);
    `versions[i]` is the policy version that produced token i.
    """

    group_id: int
    prompt_id: int
    sample_index: int  # index within its group
    prompt: str
    answer: str
    prompt_ids: tuple[int, ...]  # [P], starts with BOS
    response_ids: tuple[int, ...]  # [R], includes EOS when finished
    response_text: str
    logprobs: tuple[float, ...]  # [R]
    versions: tuple[int, ...]  # [R]
    finish_reason: Literal["stop", "length"]

    @property
    def min_version(self) -> int:
        return min(self.versions) if self.versions else -1
