"""Preference weights and metrics: one loss weight per pair, pair accuracy, implicit rewards.

A pair (prompt, chosen, rejected) is rows 2i (prompt + chosen) and 2i + 1 (prompt + rejected)
of a TrainBatch (trainer/batches.py: pair_batch); loss_mask marks the answer tokens. The
registered pair losses (trainer/losses.py) return each pair's loss on its rows' tokens, and `pair_weights` puts
1 / (pairs in the step) on one token of each pair, so the learner's sum(per_token * weight)
is the mean pair loss of the optimizer step, however the step is sharded or micro-batched.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def pair_weights(mask: np.ndarray) -> np.ndarray:
    """Weight 1 / (live pairs) on column 0 of each live pair's chosen row; filler pairs (no
    loss_mask on either row) weigh nothing. Column 0 is arbitrary: pair losses are constant
    over their rows' tokens."""
    live = (mask.reshape(-1, 2, mask.shape[1]).sum(axis=(1, 2)) > 0)  # [P]
    weights = np.zeros(mask.shape, dtype=np.float32)
    weights[0::2, 0] = live / max(int(live.sum()), 1)
    return weights


def sequence_logprobs(token_logprobs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sum of the answer tokens' logprobs per row [B]."""
    return (token_logprobs * mask).sum(axis=1)


def implicit_reward_stats(policy: np.ndarray, reference: np.ndarray, beta: float) -> dict[str, float]:
    """DPO's implicit reward beta * log pi/pi_ref on held-out pairs, from per-row sequence
    logprobs [B] (rows chosen/rejected alternate): mean margin chosen - rejected, and the
    fraction of pairs where chosen wins (the 'win rate' of the implicit reward model)."""
    reward = beta * (policy - reference)
    margin = reward[0::2] - reward[1::2]
    return {"margin": float(margin.mean()), "accuracy": float((margin > 0).mean()),
            "chosen_reward": float(reward[0::2].mean()), "rejected_reward": float(reward[1::2].mean())}


def pair_accuracy(scores: np.ndarray, ties: float = 0.5) -> float:
    """Fraction of pairs whose chosen row scores above its rejected row (a tie counts `ties`)."""
    chosen, rejected = scores[0::2], scores[1::2]
    return float(np.mean(np.where(chosen > rejected, 1.0, np.where(chosen == rejected, ties, 0.0))))


def best_worst_pairs(rewards: Sequence[float], min_gap: float = 0.0) -> Optional[tuple[int, int]]:
    """Online DPO: (index of the best, index of the worst) sample of a group, or None when the
    rewards do not separate them by more than `min_gap` (no preference to learn). Ties pick
    the lowest index, so the choice is reproducible."""
    r = np.asarray(rewards, dtype=np.float64)
    best, worst = int(np.argmax(r)), int(np.argmin(r))
    if r[best] - r[worst] <= min_gap:
        return None
    return best, worst
