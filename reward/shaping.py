"""Composition and shaping of rewards: weighted sums, clipping, running normalisation, PAR.

PAR ("Reward Shaping to Mitigate Reward Hacking in RLHF", Fu et al. 2025): the shaped
reward is sigmoid(r - r_ref), where r_ref is a reference reward (in the paper, the reward
of reference-policy responses to the same prompt). It is bounded (0, 1) — so a reward
model's runaway scores cannot dominate — and centred: a response as good as the
reference gets 0.5, and the slope is steepest there and vanishes for large margins, which
is what blunts reward hacking. `par_reference: fixed` uses a constant r_ref (e.g. the
initial policy's mean reward); `group_mean` uses the mean raw reward of the other samples
of the same prompt in the batch (a stand-in for reference responses when a group is
sampled from one policy).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def weighted_sum(values: dict[str, float], weights: dict[str, float]) -> float:
    missing = [name for name in weights if name not in values]
    if missing:
        raise KeyError(f"no value for reward component(s) {missing}")
    return float(sum(weights[name] * values[name] for name in weights))


def clip(x: float, lo: Optional[float], hi: Optional[float]) -> float:
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"clip_min {lo} > clip_max {hi}")
    if lo is not None:
        x = max(lo, x)
    if hi is not None:
        x = min(hi, x)
    return x


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def par(reward: float, reference: float) -> float:
    """PAR shaping: sigmoid(reward - reference), in (0, 1), 0.5 at the reference."""
    return sigmoid(reward - reference)


class RunningNorm:
    """Whitens rewards with the running mean and std of every reward seen so far (Welford),
    updated with each batch before that batch is normalised."""

    def __init__(self, eps: float = 1e-8):
        self.count, self.mean, self.m2, self.eps = 0, 0.0, 0.0, eps

    def update(self, xs: list[float]) -> None:
        for x in xs:
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def __call__(self, x: float) -> float:
        return (x - self.mean) / (self.std + self.eps)


def group_means(keys: list, values: list[float]) -> list[float]:
    """For each sample, the mean of the *other* samples with the same key (its own value
    when it is alone): a reference that does not include the sample being shaped."""
    sums: dict = {}
    counts: dict = {}
    for key, x in zip(keys, values):
        sums[key] = sums.get(key, 0.0) + x
        counts[key] = counts.get(key, 0) + 1
    return [(sums[k] - x) / (counts[k] - 1) if counts[k] > 1 else float(x) for k, x in zip(keys, values)]


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int, factor: float) -> np.ndarray:
    """DAPO's soft overlong punishment (the only length penalty, in tokens): 0 up to max_len - buffer
    response tokens, then linear down to -factor at max_len."""
    if buffer <= 0:
        return np.zeros(len(lengths))
    start = max_len - buffer
    return -factor * np.clip((lengths - start) / buffer, 0.0, 1.0)
