"""From admitted groups to the step's training batches: reward shaping, KL in the reward,
critic values, advantages (registry), and the loss weights of each optimizer step.

With a preference loss (online DPO) the groups become pairs instead: the best and the worst
sample of each group by reward, as adjacent rows, with the reference policy's logprobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from cluster.config import AlgorithmConfig, Config
from cluster.rl.gate import Group
from cluster.shapes import rows_per_step
from reward.shaping import overlong_penalty
from trainer.advantages import ADVANTAGES, AdvantageInputs, AdvantageOptions
from trainer.batches import build_batch, pad_pairs, turn_rewards
from trainer.group import LearnerGroup
from trainer.losses import AGGREGATIONS, KL_ESTIMATORS, loss_kind
from trainer.preference import best_worst_pairs, pair_weights
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
    """What every algorithm family shares: the KL coefficient, the split of a step's rows into
    optimizer steps, and the loss spec. A family (chosen once, `make_experience`) turns groups
    into batches and weighs the rows of one optimizer step."""

    def __init__(self, cfg: Config, learners: LearnerGroup, critic: Optional[LearnerGroup]):
        self.cfg, self.learners, self.critic = cfg, learners, critic
        self.kind = loss_kind(cfg.algorithm.loss)
        self.kl = KLController(cfg.algorithm)

    def make(self, groups: list[Group]) -> StepBatches:
        raise NotImplementedError

    def weighted(self, batch: TrainBatch) -> TrainBatch:
        """The rows of one optimizer step, with the loss weights over exactly them."""
        raise NotImplementedError

    def split(self, rows: int, step: int) -> list[np.ndarray]:
        """Row indices of each optimizer step of this batch, shuffled (seeded per step) so each
        mini-batch and rank shard mixes groups."""
        rng = np.random.default_rng([self.cfg.run.seed, step])
        return np.array_split(rng.permutation(rows), self.cfg.trainer.updates_per_batch)

    def policy_spec(self, temperature: Optional[float] = None) -> LossSpec:
        a = self.cfg.algorithm
        return LossSpec(name=a.loss, clip_eps=a.clip_eps, clip_eps_high=a.clip_eps_high, dual_clip=a.dual_clip,
                        kl_coef=self.kl.coef if a.kl_in == "loss" else 0.0, kl_estimator=a.kl_estimator,
                        entropy_coef=a.entropy_coef, temperature=self.cfg.rollout.temperature if temperature is None else temperature,
                        beta=a.beta, label_smoothing=a.label_smoothing, simpo_gamma=a.simpo_gamma,
                        orpo_lambda=a.orpo_lambda, is_cap=a.is_cap, is_band=tuple(a.is_band),
                        token_keep_frac=a.token_keep_frac)

    def needs_proximal(self) -> bool:
        """With several updates per batch, a loss that reads pi_old / pi_prox gets the learner's own
        logprobs from before the batch's first update: the engine's logprobs differ from the
        learner's by numerics, which would otherwise count as policy change (and as clipping)."""
        return self.kind.proximal and self.cfg.trainer.updates_per_batch > 1

    def critic_spec(self) -> LossSpec:
        return LossSpec(name="value_clip", value_clip=self.cfg.critic.value_clip)


class GroupExperience(ExperienceMaker):
    """Policy losses: every sample of a group trains, with its advantage (registry)."""

    def __init__(self, cfg: Config, learners: LearnerGroup, critic: Optional[LearnerGroup]):
        super().__init__(cfg, learners, critic)
        a = cfg.algorithm
        self.advantage = ADVANTAGES.get(a.advantage)
        self.opts = AdvantageOptions(normalize_std=a.normalize_std, std_scope=a.std_scope,
                                     group_baseline=a.group_baseline, gamma=a.gamma, lam=a.lam,
                                     fp_rate=a.verifier_fp_rate, fn_rate=a.verifier_fn_rate)
        self.aggregate = AGGREGATIONS.get(a.loss_agg)

    def make(self, groups: list[Group]) -> StepBatches:
        a, temp = self.cfg.algorithm, self.cfg.rollout.temperature
        rollouts = [r for g in groups for r in g.rollouts]
        batch = build_batch(rollouts, pad_id=0, mask_truncated=a.mask_truncated)
        lengths = np.array([len(r.response_ids) for r in rollouts])
        scores = np.array([r.reward for g in groups for r in g.rewards])
        scores = scores + overlong_penalty(lengths, self.cfg.rollout.max_new_tokens, a.overlong_buffer,
                                           a.overlong_penalty)
        metrics: dict = {"score_mean": float(scores.mean())}
        # Multi-turn: each rewarded turn's reward on its last token (summed by sequence-level estimators).
        token_rewards = turn_rewards(rollouts, batch.loss_mask.shape[1])
        if token_rewards is not None:
            metrics["turn_reward_mean"] = float(token_rewards.sum() / len(rollouts))
        if a.kl_in == "reward" and self.kl.coef > 0:
            ref = self.learners.reference_logprobs(batch, temp)
            kl = KL_ESTIMATORS.get(a.kl_estimator)(torch.from_numpy(batch.behaviour_logprobs),
                                                   torch.from_numpy(ref)).numpy() * batch.loss_mask
            token_rewards = -self.kl.coef * kl + (0.0 if token_rewards is None else token_rewards)
            metrics["kl"] = float(kl.sum() / max(batch.loss_mask.sum(), 1))
        values = self.critic.values(batch) if self.critic else None
        group_ids = np.repeat([g.group_id for g in groups], [len(g.rollouts) for g in groups])
        adv, returns = self.advantage(AdvantageInputs(scores=scores, groups=group_ids, mask=batch.loss_mask,
                                                      token_rewards=token_rewards, values=values), self.opts)
        metrics["moving_groups"] = moving_groups(adv * batch.loss_mask, [len(g.rollouts) for g in groups])
        critic_batch = None
        if self.critic:
            critic_batch = batch.replace(returns=returns, old_values=values * batch.loss_mask)
            metrics["explained_var"] = explained_variance(returns, values, batch.loss_mask)
        return StepBatches(batch.replace(advantages=adv), critic_batch, metrics)

    def weighted(self, batch: TrainBatch) -> TrainBatch:
        return batch.replace(loss_weights=self.aggregate(batch.loss_mask, self.cfg.rollout.max_new_tokens))


class PairExperience(ExperienceMaker):
    """Online DPO (a preference loss in run.mode rl): each group's best and worst sample by
    reward become a chosen/rejected pair of adjacent rows; a pair never splits."""

    def make(self, groups: list[Group]) -> StepBatches:
        """A group whose rewards tie teaches nothing; zero-weight filler pairs keep the step's row count."""
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
        if self.kind.needs_reference:
            batch = batch.replace(ref_logprobs=self.learners.reference_logprobs(batch, 1.0))
        return StepBatches(batch, None, metrics)

    def split(self, rows: int, step: int) -> list[np.ndarray]:
        pairs = super().split(rows // 2, step)
        return [np.stack([2 * p, 2 * p + 1], axis=1).ravel() for p in pairs]

    def weighted(self, batch: TrainBatch) -> TrainBatch:
        return batch.replace(loss_weights=pair_weights(batch.loss_mask))

    def policy_spec(self, temperature: Optional[float] = None) -> LossSpec:
        # Preference losses compare the policy itself (temperature 1) with its reference.
        return super().policy_spec(1.0)


def moving_groups(advantages: np.ndarray, sizes: list[int], tol: float = 1e-6) -> list[bool]:
    """Per group (rows in order, `sizes` each): has a row whose (masked) advantage is non-zero
    somewhere. `tol`: a tied group's advantages are zero up to rounding (its mean is not
    exactly its members' value)."""
    moving = np.abs(advantages).max(axis=1) > tol
    bounds = np.cumsum([0, *sizes])
    return [bool(moving[a:b].any()) for a, b in zip(bounds[:-1], bounds[1:])]


def make_experience(cfg: Config, learners: LearnerGroup, critic: Optional[LearnerGroup]) -> ExperienceMaker:
    """The algorithm family, picked once from the loss's kind."""
    family = PairExperience if loss_kind(cfg.algorithm.loss).trains == "preference" else GroupExperience
    return family(cfg, learners, critic)
