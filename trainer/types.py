"""Records that cross the learner actor boundary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True, kw_only=True)
class LossSpec:
    """Which registered loss to run and its knobs; the learner knows nothing else."""

    name: str = "ppo_clip"
    clip_eps: float = 0.2  # ratio clip (the low side when clip_eps_high is set)
    clip_eps_high: Optional[float] = None  # DAPO clip-higher; None = symmetric
    dual_clip: float = 0.0  # dual-clip constant c > 1 for negative advantages; 0 = off
    kl_coef: float = 0.0  # KL-to-reference penalty in the loss
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0  # entropy bonus
    value_clip: float = 0.2  # critic losses
    temperature: float = 1.0  # logits are divided by it, as the engine did when sampling
    is_cap: float = 2.0  # off-policy losses (decoupled_ppo, tis, seq_mis): truncation cap C of importance weights
    # icepop / seq_mis: importance weights (token, or a sequence's geometric mean) outside [low, high]
    # are masked out of the loss instead of truncated.
    is_band: tuple[float, float] = (0.5, 2.0)
    # Preference losses (trainer/losses.py: dpo, cdpo, ipo, simpo, orpo, bradley_terry).
    beta: float = 0.1  # DPO/IPO/cDPO: strength of the KL anchor; SimPO: reward scale
    label_smoothing: float = 0.0  # cDPO: assumed probability that a pair's label is flipped
    simpo_gamma: float = 0.5  # SimPO: target reward margin
    orpo_lambda: float = 0.1  # ORPO: weight of the odds-ratio term next to the chosen NLL
    # Token prioritisation (D3S): the fraction of a micro-batch's response tokens that train, those
    # with the largest |advantage| x entropy (trainer/losses.py: prioritise_tokens); 1 = all.
    token_keep_frac: float = 1.0


@dataclass(frozen=True)
class TrainBatch:
    """Right-padded prompt+response rows. Per-token arrays are aligned with `input_ids`:
    entry [b, t] belongs to token input_ids[b, t] (position 0 is never a target)."""

    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64
    loss_mask: np.ndarray  # [B, T] float32, 1.0 on response tokens that train
    # [B, T] float32: each token's weight in its optimizer step's loss (the aggregation mode,
    # chosen by the controller over the whole step, all ranks and micro-batches together).
    loss_weights: np.ndarray
    advantages: Optional[np.ndarray] = None  # [B, T] float32 (policy)
    behaviour_logprobs: Optional[np.ndarray] = None  # [B, T] float32, from the engine that sampled
    proximal_logprobs: Optional[np.ndarray] = None  # [B, T] float32, proximal policy at step start; None if one update
    returns: Optional[np.ndarray] = None  # [B, T] float32 (critic targets)
    old_values: Optional[np.ndarray] = None  # [B, T] float32 (critic when the batch was scored)
    # Preference batches: rows 2i (chosen) and 2i+1 (rejected) form pair i; a pair never splits
    # across ranks or micro-batches. Filler pairs (to keep the step's row count) have no loss_mask.
    ref_logprobs: Optional[np.ndarray] = None  # [B, T] float32, frozen reference policy (cached offline)
    margins: Optional[np.ndarray] = None  # [B] float32, reward-model margin of the row's pair
    # [B, T] int64, set for packed rows (several examples per row): positions restart at 0 for
    # each example, and attention stays within an example (transformers' packed-sequence masks).
    position_ids: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def rows(self, index) -> "TrainBatch":
        """The rows at `index` (a shard or micro-batch), weights unchanged."""
        return TrainBatch(**{name: a[index] for name, a in self.arrays().items()})

    def replace(self, **changes) -> "TrainBatch":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StepStats:
    """Sums over one optimizer step on one rank (the group turns them into token means)."""

    loss: float  # sum(per-token loss * weight): this rank's share of the step loss
    tokens: int
    sums: dict[str, float]  # metric name -> sum over this rank's response tokens
    grad_norm: Optional[float]
    # Per-sequence metrics (a loss's [B] outputs, e.g. pair accuracy): sums over the rows that
    # have response tokens, and how many such rows there were.
    row_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    rows: int = 0
    # Maxima over this rank's response tokens (trainer/learner.py: MAX_METRICS), e.g. the largest
    # importance weight, which a token mean hides.
    maxes: dict[str, float] = dataclasses.field(default_factory=dict)
    # The loss or the gradient was not finite: no parameter moved (the same on every rank).
    skipped: bool = False
    lr: float = 0.0  # the learning rate this step applied (trainer/schedules.py)
