"""Advantage estimators: one signature, registered by name.

  estimator(AdvantageInputs, AdvantageOptions) -> (advantages [B, T], returns [B, T] | None)

Per-token arrays follow TrainBatch's alignment: entry [b, t] belongs to token t of
row b, and `mask` is 1.0 on response tokens. A sample's outcome `score` is earned
at its last response token; `token_rewards` (e.g. a KL penalty placed in the
reward) add per-token rewards on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from rollout.registry import Registry



@dataclass(frozen=True)
class AdvantageKind:
    """What an estimator needs from the run: a critic's values, or groups of samples per prompt
    (always, or only when the boolean option named by `groups_when` is set)."""

    needs_critic: bool = False
    needs_groups: bool = False
    groups_when: Optional[str] = None  # an AdvantageOptions field

    def grouped(self, opts: "AdvantageOptions") -> bool:
        return self.needs_groups or (self.groups_when is not None and bool(getattr(opts, self.groups_when)))


ADVANTAGES: Registry[Callable] = Registry("advantage estimator", traits=AdvantageKind, papers=True)


@dataclass(frozen=True, kw_only=True)
class AdvantageInputs:
    scores: np.ndarray  # [B] outcome reward per sample
    groups: np.ndarray  # [B] int, samples of one prompt share a group id
    mask: np.ndarray  # [B, T] 1.0 on response tokens
    token_rewards: Optional[np.ndarray] = None  # [B, T] extra per-token rewards (0 where unused)
    values: Optional[np.ndarray] = None  # [B, T] critic value of the state before each token


@dataclass(frozen=True)
class AdvantageOptions:
    normalize_std: bool = True  # grpo: divide by std (off = Dr.GRPO); gae: whiten advantages
    std_scope: str = "group"  # grpo: "group" std or "batch" std
    group_baseline: bool = True  # reinforce_pp: subtract the group mean score first
    gamma: float = 1.0
    lam: float = 1.0
    eps: float = 1e-6
    fp_rate: float = 0.0  # noisy_*: the verifier's false-positive rate rho_0, P(says correct | wrong)
    fn_rate: float = 0.0  # noisy_*: its false-negative rate rho_1, P(says wrong | correct)


def _sequence_scores(x: AdvantageInputs) -> np.ndarray:
    """Outcome score plus the sum of any per-token rewards, per sample [B]."""
    scores = np.asarray(x.scores, dtype=np.float64)
    if x.token_rewards is not None:
        scores = scores + (x.token_rewards * x.mask).sum(axis=1)
    return scores


def _broadcast(per_sample: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (per_sample[:, None] * mask).astype(np.float32)


def _group_stats(values: np.ndarray, groups: np.ndarray):
    """Per-sample mean, unbiased std and size of the sample's group."""
    mean, std, size = np.zeros_like(values), np.zeros_like(values), np.zeros_like(values)
    for g in np.unique(groups):
        idx = groups == g
        if idx.sum() < 2:
            raise ValueError(f"group {g} has {idx.sum()} sample; group estimators need at least 2")
        mean[idx], std[idx], size[idx] = values[idx].mean(), values[idx].std(ddof=1), idx.sum()
    return mean, std, size


def _last_token_rewards(x: AdvantageInputs) -> np.ndarray:
    """[B, T] rewards: token_rewards everywhere, plus the score on each row's last response token."""
    rewards = np.zeros(x.mask.shape) if x.token_rewards is None else x.token_rewards * x.mask
    rewards = rewards.astype(np.float64)
    lengths = x.mask.sum(axis=1)
    last = x.mask.shape[1] - 1 - np.argmax(x.mask[:, ::-1], axis=1)
    rows = np.nonzero(lengths > 0)[0]
    rewards[rows, last[rows]] += x.scores[rows]
    return rewards


def _model_tokens_first(mask: np.ndarray) -> np.ndarray:
    """Per row, the positions of its trained tokens first, in order ([B, T] indices). Gathered by
    it, a multi-turn trajectory's model tokens sit side by side (its observations, which never
    train, out of the way), so the recursions below step from a turn's last token to the next
    turn's first: the outcome reaches every turn, and a critic's value bootstraps across the
    observation. A one-turn row's response is contiguous already: gathering only shifts it."""
    return np.argsort(mask == 0, axis=1, kind="stable")


def _gather(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, order, axis=1)


def _scatter(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(a)
    np.put_along_axis(out, order, a, axis=1)
    return out


def _whiten(a: np.ndarray, mask: np.ndarray, eps: float) -> np.ndarray:
    n = mask.sum()
    mean = (a * mask).sum() / n
    var = (((a - mean) * mask) ** 2).sum() / max(n - 1, 1)
    return (a - mean) / (np.sqrt(var) + eps) * mask


@ADVANTAGES.register("grpo", "GRPO: (r - group mean) / group std; batch std or no std (Dr.GRPO) by option",
                     paper="Shao et al. 2024, DeepSeekMath (GRPO); "
                           "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr.GRPO)",
                     options=AdvantageOptions, traits=AdvantageKind(needs_groups=True))
def grpo(x: AdvantageInputs, o: AdvantageOptions):
    scores = _sequence_scores(x)
    mean, std, _ = _group_stats(scores, x.groups)
    centred = scores - mean
    if o.normalize_std:
        if o.std_scope == "batch":
            centred = centred / (scores.std(ddof=1) + o.eps)
        elif o.std_scope == "group":
            # Unbiased (ddof=1) group std, as in TRL and verl; a tied group stays at 0.
            centred = centred / (std + o.eps)
        else:
            raise ValueError(f"std_scope must be 'group' or 'batch', got {o.std_scope!r}")
    return _broadcast(centred, x.mask), None


@ADVANTAGES.register("rloo", "RLOO: r minus the mean of the other samples of the same prompt",
                     paper="Ahmadian et al. 2024, Back to Basics: REINFORCE-style optimization (RLOO)",
                     options=AdvantageOptions, traits=AdvantageKind(needs_groups=True))
def rloo(x: AdvantageInputs, o: AdvantageOptions):
    scores = _sequence_scores(x)
    mean, _, size = _group_stats(scores, x.groups)
    return _broadcast(size / (size - 1) * (scores - mean), x.mask), None


@ADVANTAGES.register("reinforce_pp", "REINFORCE++: per-token return-to-go, normalised over the whole batch",
                     paper="Hu 2025, REINFORCE++", options=AdvantageOptions,
                     traits=AdvantageKind(groups_when="group_baseline"))
def reinforce_pp(x: AdvantageInputs, o: AdvantageOptions):
    scores = np.asarray(x.scores, dtype=np.float64)
    if o.group_baseline:  # REINFORCE++-baseline: centre the outcome within its group first
        scores = scores - _group_stats(scores, x.groups)[0]
    order = _model_tokens_first(x.mask)
    rewards = _gather(_last_token_rewards(AdvantageInputs(scores=scores, groups=x.groups, mask=x.mask,
                                                          token_rewards=x.token_rewards)), order)
    returns = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + o.gamma * running
        returns[:, t] = running
    returns = _scatter(returns, order) * x.mask
    return _whiten(returns, x.mask, o.eps).astype(np.float32), None


def _binary_scores(x: AdvantageInputs, name: str) -> np.ndarray:
    """The verifier's 0/1 outcomes: the noise model is a channel on binary rewards."""
    scores = np.asarray(x.scores, dtype=np.float64)
    bad = np.nonzero((scores != 0.0) & (scores != 1.0))[0]
    if len(bad) or x.token_rewards is not None:
        what = f"row {bad[0]} scored {scores[bad[0]]}" if len(bad) else "per-token rewards (kl_in: reward) were added"
        raise ValueError(f"advantage '{name}' needs binary rewards, 0 or 1 ({what}): set reward.format_weight 0, "
                         "no reward.components and algorithm.kl_in 'loss'")
    return scores


# Noisy verifiers (Cai et al. 2025): the observed reward r~ flips a clean r in {0, 1} with rates
# rho_0 (0 -> 1) and rho_1 (1 -> 0). With any baseline, the noisy policy gradient is in
# expectation (1 - rho_0 - rho_1) x the clean one. Under GRPO's std normalisation an affine
# change of the reward cancels, so the corrections are estimators of their own, not reward
# transforms (tests/trainer/test_advantages.py checks both expectations by enumeration).
NOISY_PAPER = "Cai et al. 2025, Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect Verifiers"


@ADVANTAGES.register("noisy_backward", "backward correction: r^ = (r~ - fp_rate) / (1 - fp_rate - fn_rate), an "
                     "unbiased clean reward, minus its group mean (no std): the clean gradient in expectation",
                     paper=NOISY_PAPER, options=AdvantageOptions, traits=AdvantageKind(needs_groups=True))
def noisy_backward(x: AdvantageInputs, o: AdvantageOptions):
    unbiased = (_binary_scores(x, "noisy_backward") - o.fp_rate) / (1.0 - o.fp_rate - o.fn_rate)
    return _broadcast(unbiased - _group_stats(unbiased, x.groups)[0], x.mask), None


@ADVANTAGES.register("noisy_forward", "forward correction: each sample's score-function weight is r~ - 1 + fn_rate "
                     "(fn_rate if judged correct, fn_rate - 1 if not): in expectation along the clean gradient, "
                     "needing only the false-negative rate", paper=NOISY_PAPER, options=AdvantageOptions,
                     traits=AdvantageKind())
def noisy_forward(x: AdvantageInputs, o: AdvantageOptions):
    return _broadcast(_binary_scores(x, "noisy_forward") - 1.0 + o.fn_rate, x.mask), None


@ADVANTAGES.register("gae", "GAE(gamma, lambda) from a critic's values (PPO); returns are the critic's targets",
                     paper="Schulman et al. 2016, High-Dimensional Continuous Control Using GAE",
                     options=AdvantageOptions, traits=AdvantageKind(needs_critic=True))
def gae(x: AdvantageInputs, o: AdvantageOptions):
    if x.values is None:
        raise ValueError("advantage 'gae' needs critic values (algorithm.critic)")
    order = _model_tokens_first(x.mask)
    rewards, values, mask = _gather(_last_token_rewards(x), order), _gather(x.values * x.mask, order), \
        _gather(x.mask, order)
    adv = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        next_value = next_value * (mask[:, t + 1] if t + 1 < rewards.shape[1] else 0.0)
        delta = rewards[:, t] + o.gamma * next_value - values[:, t]
        # Padding after a response resets the recursion; prompt positions are masked out below.
        running = (delta + o.gamma * o.lam * running) * mask[:, t]
        adv[:, t] = running
    adv, values = _scatter(adv, order), _scatter(values, order)
    returns = (adv + values) * x.mask
    if o.normalize_std:
        adv = _whiten(adv, x.mask, o.eps)
    return (adv * x.mask).astype(np.float32), returns.astype(np.float32)
