"""From admitted groups to the step's training batches: reward shaping, KL in the reward,
critic values, advantages (registry), and the loss weights of each optimizer step.

With a preference loss (online DPO) the groups become pairs instead: the best and the worst
sample of each group by reward, as adjacent rows, with the reference policy's logprobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from cluster.buffer import Group
from cluster.config import AlgorithmConfig, Config
from trainer.advantages import ADVANTAGES, AdvantageInputs, AdvantageOptions
from trainer.batching import build_batch
from trainer.group import LearnerGroup
from trainer.losses import AGGREGATIONS, KL_ESTIMATORS, OFF_POLICY_LOSSES, PREFERENCE_LOSSES, REFERENCE_LOSSES
from trainer.preference import best_worst_pairs, pad_pairs, pair_weights
from trainer.types import LossSpec, TrainBatch


class KLController:
    """Fixed coefficient, or adaptive towards `kl_target` (Ziegler et al. 2019): the
    coefficient moves by at most 20% x (steps / horizon) per update."""

    def __init__(self, a: AlgorithmConfig):
        self.coef, self.target, self.horizon = a.kl_coef, a.kl_target, a.kl_horizon

    def update(self, observed_kl: Optional[float], steps: int = 1) -> None:
        if self.target is None or observed_kl is None or self.coef == 0:
            return
        error = float(np.clip(observed_kl / self.target - 1.0, -0.2, 0.2))
        self.coef *= 1.0 + error * steps / self.horizon


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int, factor: float) -> np.ndarray:
    """DAPO's soft overlong punishment: 0 up to max_len - buffer, then linear down to -factor."""
    if buffer <= 0:
        return np.zeros(len(lengths))
    start = max_len - buffer
    return -factor * np.clip((lengths - start) / buffer, 0.0, 1.0)


def explained_variance(returns: np.ndarray, values: np.ndarray, mask: np.ndarray) -> float:
    r, v = returns[mask == 1], values[mask == 1]
    var = r.var()
    return float(1.0 - (r - v).var() / var) if var > 0 else float("nan")


@dataclass
class StepBatches:
    policy: Optional[TrainBatch]  # None: nothing to learn this step (online DPO, every group tied)
    critic: Optional[TrainBatch]
    metrics: dict


class ExperienceMaker:
    def __init__(self, cfg: Config, learners: LearnerGroup, critic: Optional[LearnerGroup]):
        self.cfg, self.learners, self.critic = cfg, learners, critic
        a = cfg.algorithm
        self.advantage = ADVANTAGES.get(a.advantage)
        self.opts = AdvantageOptions(normalize_std=a.normalize_std, std_scope=a.std_scope,
                                     group_baseline=a.group_baseline, gamma=a.gamma, lam=a.lam)
        self.aggregate = AGGREGATIONS.get(a.loss_agg)
        self.kl = KLController(a)
        self.preference = a.loss in PREFERENCE_LOSSES

    def make(self, groups: list[Group]) -> StepBatches:
        if self.preference:
            return self._pairs(groups)
        a, temp = self.cfg.algorithm, self.cfg.rollout.temperature
        rollouts = [r for g in groups for r in g.rollouts]
        batch = build_batch(rollouts, pad_id=0, mask_truncated=a.mask_truncated)
        lengths = np.array([len(r.response_ids) for r in rollouts])
        scores = np.array([r.reward for g in groups for r in g.rewards])
        scores = scores + overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, a.overlong_buffer,
                                           a.overlong_penalty)
        metrics: dict = {"score_mean": float(scores.mean())}
        token_rewards = None
        if a.kl_in == "reward" and self.kl.coef > 0:
            ref = self.learners.reference_logprobs(batch, temp)
            kl = KL_ESTIMATORS.get(a.kl_estimator)(torch.from_numpy(batch.behaviour_logprobs),
                                                   torch.from_numpy(ref)).numpy() * batch.loss_mask
            token_rewards = -self.kl.coef * kl
            metrics["kl"] = float(kl.sum() / max(batch.loss_mask.sum(), 1))
        values = self.critic.values(batch) if self.critic else None
        group_ids = np.repeat([g.group_id for g in groups], [len(g.rollouts) for g in groups])
        adv, returns = self.advantage(AdvantageInputs(scores, group_ids, batch.loss_mask, token_rewards, values),
                                      self.opts)
        critic_batch = None
        if self.critic:
            critic_batch = batch.replace(returns=returns, old_values=values * batch.loss_mask)
            metrics["explained_var"] = explained_variance(returns, values, batch.loss_mask)
        return StepBatches(batch.replace(advantages=adv), critic_batch, metrics)

    def _pairs(self, groups: list[Group]) -> StepBatches:
        """Online DPO: each group's best and worst sample (by reward) form a pair. A group whose
        rewards tie teaches nothing; zero-weight filler pairs keep the step's row count."""
        from cluster.roles import rows_per_step

        picked, gaps = [], []
        for g in groups:
            pick = best_worst_pairs([r.reward for r in g.rewards])
            if pick is not None:
                picked += [g.rollouts[pick[0]], g.rollouts[pick[1]]]
                gaps.append(g.rewards[pick[0]].reward - g.rewards[pick[1]].reward)
        metrics = {"pairs": len(gaps), "pair_reward_gap": float(np.mean(gaps)) if gaps else 0.0}
        if not picked:
            return StepBatches(None, None, metrics)
        # Behaviour logprobs stay for logging (logprob_diff); the DPO losses do not read them.
        batch = pad_pairs(build_batch(picked, pad_id=0), rows_per_step(self.cfg))
        if self.cfg.algorithm.loss in REFERENCE_LOSSES:
            batch = batch.replace(ref_logprobs=self.learners.reference_logprobs(batch, 1.0))
        return StepBatches(batch, None, metrics)

    def split(self, rows: int, step: int) -> list[np.ndarray]:
        """Row indices of each optimizer step of this batch, shuffled (seeded per step) so each
        mini-batch and rank shard mixes groups; a preference pair's two rows stay together."""
        rng = np.random.default_rng([self.cfg.run.seed, step])
        updates = self.cfg.trainer.updates_per_batch
        if not self.preference:
            return np.array_split(rng.permutation(rows), updates)
        return [np.stack([2 * p, 2 * p + 1], axis=1).ravel() for p in np.array_split(rng.permutation(rows // 2), updates)]

    def weighted(self, batch: TrainBatch) -> TrainBatch:
        """The rows of one optimizer step, with the aggregation mode's weights over exactly them."""
        if self.preference:
            return batch.replace(loss_weights=pair_weights(batch.loss_mask))
        return batch.replace(loss_weights=self.aggregate(batch.loss_mask, self.cfg.rollout.max_new_tokens))

    def policy_spec(self) -> LossSpec:
        a = self.cfg.algorithm
        # Preference losses compare the policy itself (temperature 1) with its reference.
        temperature = 1.0 if self.preference else self.cfg.rollout.temperature
        return LossSpec(a.loss, a.clip_eps, a.clip_eps_high, a.dual_clip,
                        self.kl.coef if a.kl_in == "loss" else 0.0, a.kl_estimator, a.entropy_coef,
                        temperature=temperature, beta=a.beta, label_smoothing=a.label_smoothing,
                        simpo_gamma=a.simpo_gamma, orpo_lambda=a.orpo_lambda, is_cap=a.is_cap)

    def needs_proximal(self) -> bool:
        """Off-policy losses with several updates per batch need the proximal policy's logprobs
        (the policy before the batch's first update); with one update it is the current policy."""
        return self.cfg.algorithm.loss in OFF_POLICY_LOSSES and self.cfg.trainer.updates_per_batch > 1

    def critic_spec(self) -> LossSpec:
        return LossSpec("value_clip", value_clip=self.cfg.critic.value_clip)
