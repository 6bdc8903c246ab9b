"""Records that cross the learner actor boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class LossSpec:
    """Which registered loss to run and its knobs; the learner knows nothing else."""

    name: str = "grpo"
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    temperature: float = 1.0  # logits are divided by it, as the engine did when sampling


@dataclass(frozen=True)
class TrainBatch:
    """Right-padded prompt+response rows. Per-token arrays are aligned with `input_ids`:
    entry [b, t] belongs to token input_ids[b, t] (position 0 is never a target)."""

    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64
    loss_mask: np.ndarray  # [B, T] float32, 1.0 on response tokens
    advantages: np.ndarray  # [B, T] float32
    behaviour_logprobs: np.ndarray  # [B, T] float32, from the engine that sampled
    global_tokens: int  # response tokens in the whole optimizer step (all ranks): token-mean divisor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index) -> "TrainBatch":
        """A shard of this step's batch: keeps the step-wide token divisor."""
        return TrainBatch(self.input_ids[index], self.attention_mask[index], self.loss_mask[index],
                          self.advantages[index], self.behaviour_logprobs[index], self.global_tokens)

    def minibatch(self, index) -> "TrainBatch":
        """Rows that form an optimizer step of their own: the divisor counts only them."""
        part = self.rows(index)
        return TrainBatch(part.input_ids, part.attention_mask, part.loss_mask, part.advantages,
                          part.behaviour_logprobs, int(part.loss_mask.sum()))


@dataclass(frozen=True)
class StepStats:
    """Token-weighted means over one optimizer step on one rank (summed over ranks by the group)."""

    loss_sum: float
    tokens: int
    sums: dict[str, float]  # metric name -> sum over this rank's response tokens
    grad_norm: Optional[float]
