"""Losses, KL estimators and loss-aggregation modes: one signature each, registered by name.

  loss(LossInputs, LossSpec) -> (per-token loss [B, T], per-token metrics {name: [B, T]})
  kl(logprobs [B, T], ref_logprobs [B, T]) -> per-token KL estimate [B, T]
  aggregation(mask [B, T], max_len) -> per-token weights [B, T] (the step's loss is sum(loss * weight))

The learner computes sum(per_token * weight) over its rows; the controller chose the
weights for the whole optimizer step, so micro-batching and sharding cannot change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from rollout.registry import Registry
from trainer.types import LossSpec


@dataclass(frozen=True)
class LossKind:
    """What a loss trains and what it needs, declared where the loss is registered.

    trains: "policy" (RL on rollouts), "critic" (a value model), "preference" (a policy from
    chosen/rejected pairs: rows 2i / 2i+1 of a batch are pair i), "reward_model" (a sequence
    classifier, model_kind "reward"), "supervised" (token NLL)."""

    trains: Literal["policy", "critic", "preference", "reward_model", "supervised"]
    needs_reference: bool = False  # needs the frozen reference policy's logprobs whatever kl_coef says
    off_policy: bool = False  # corrects for a stale behaviour policy with importance weights
    # Reads pi_old / pi_prox: with trainer.updates_per_batch > 1 the controller sends the learner's
    # own logprobs from before the batch's first update (LossInputs.proximal_logprobs).
    proximal: bool = False


POLICY = LossKind("policy", proximal=True)

LOSSES: Registry[Callable] = Registry("loss", traits=LossKind, papers=True)
KL_ESTIMATORS: Registry[Callable] = Registry("KL estimator", papers=True)
AGGREGATIONS: Registry[Callable] = Registry("loss aggregation", papers=True)


def loss_kind(name: str) -> LossKind:
    return LOSSES.entry(name).traits


def losses_that(trains: str) -> list[str]:
    """Names of the registered losses that train `trains` (a LossKind.trains value)."""
    return LOSSES.names(lambda e: e.traits.trains == trains)


@dataclass(kw_only=True)
class LossInputs:
    mask: torch.Tensor  # [B, T] 1.0 on response tokens
    logprobs: Optional[torch.Tensor] = None  # [B, T] current policy, log_softmax(logits / T)
    behaviour_logprobs: Optional[torch.Tensor] = None  # [B, T] from the engine that sampled
    advantages: Optional[torch.Tensor] = None  # [B, T]
    ref_logprobs: Optional[torch.Tensor] = None  # [B, T] frozen reference policy
    entropy: Optional[torch.Tensor] = None  # [B, T] policy entropy (with gradient when entropy_coef > 0)
    values: Optional[torch.Tensor] = None  # [B, T] critic, current
    old_values: Optional[torch.Tensor] = None  # [B, T] critic when the rollouts were scored
    returns: Optional[torch.Tensor] = None  # [B, T] critic targets
    scores: Optional[torch.Tensor] = None  # [B] reward model's scalar per sequence
    margins: Optional[torch.Tensor] = None  # [B] required reward margin of the row's pair (Bradley-Terry)
    # [B, T] the learner's policy at the step's start (several updates per batch; pi_old / pi_prox).
    proximal_logprobs: Optional[torch.Tensor] = None


# ---- KL estimators (Schulman, "Approximating KL divergence") ----

@KL_ESTIMATORS.register("k1", "log-ratio log(pi/pi_ref); unbiased, high variance",
                        paper="Schulman 2020, Approximating KL Divergence")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2", "0.5 * log-ratio^2; low variance, biased",
                        paper="Schulman 2020, Approximating KL Divergence")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3", "exp(ref - logp) - (ref - logp) - 1; unbiased, non-negative",
                        paper="Schulman 2020, Approximating KL Divergence")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


@KL_ESTIMATORS.register("k3_clamp", "k3 with the log-ratio and the estimate clamped to [-10, 10] (low-variance KL)",
                        paper="Schulman 2020; clamped low-variance form")
def kl_k3_clamp(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    delta = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(delta) - delta - 1.0, -10.0, 10.0)


# ---- aggregation modes ----

@AGGREGATIONS.register("token-mean", "every response token of the step weighs the same (DAPO)",
                       paper="Yu et al. 2025, DAPO (token-level loss)")
def token_mean(mask: np.ndarray, max_len: int) -> np.ndarray:
    return (mask / max(mask.sum(), 1.0)).astype(np.float32)


@AGGREGATIONS.register("seq-mean-token-mean", "mean over each sequence's tokens, then over sequences (GRPO paper)",
                       paper="Shao et al. 2024, DeepSeekMath (GRPO objective)")
def seq_mean_token_mean(mask: np.ndarray, max_len: int) -> np.ndarray:
    lengths = mask.sum(axis=1, keepdims=True)
    rows = max((lengths > 0).sum(), 1)
    return (np.divide(mask, lengths, out=np.zeros_like(mask), where=lengths > 0) / rows).astype(np.float32)


@AGGREGATIONS.register("seq-mean-token-sum", "token sum per sequence over a constant (max length), mean over sequences (Dr.GRPO)",
                       paper="Liu et al. 2025, Dr.GRPO")
def seq_mean_token_sum(mask: np.ndarray, max_len: int) -> np.ndarray:
    rows = max((mask.sum(axis=1) > 0).sum(), 1)
    return (mask / (rows * max_len)).astype(np.float32)


def prioritise_tokens(weights: torch.Tensor, x: LossInputs, keep_frac: float) -> torch.Tensor:
    """Token-level down-sampling (D3S, Wang et al. 2025): of the response tokens, only the
    ceil(keep_frac x n) with the largest |advantage| x entropy keep their loss weight, scaled
    so the weights' sum is unchanged (the step's loss keeps its scale); the others weigh 0."""
    live = (x.mask > 0) & (weights != 0)
    n = int(live.sum())
    if keep_frac >= 1 or n == 0:
        return weights
    score = (x.advantages.abs() * x.entropy).detach().masked_fill(~live, -1.0)
    keep = torch.zeros_like(live)
    keep.view(-1)[torch.topk(score.view(-1), math.ceil(keep_frac * n)).indices] = True
    kept = weights * keep
    return kept * (weights.sum() / kept.sum()) if kept.sum() != 0 else kept


# ---- policy losses ----

def _regularise(per_token: torch.Tensor, x: LossInputs, spec: LossSpec, metrics: dict) -> torch.Tensor:
    """KL to the reference in the loss, and the entropy bonus, for every policy loss."""
    if spec.kl_coef > 0:
        if x.ref_logprobs is None:
            raise ValueError(f"loss '{spec.name}' with kl_coef > 0 needs reference logprobs")
        kl = KL_ESTIMATORS.get(spec.kl_estimator)(x.logprobs, x.ref_logprobs)
        per_token = per_token + spec.kl_coef * kl
        metrics["kl"] = kl.detach()
    if spec.entropy_coef:
        if x.entropy is None:
            raise ValueError(f"loss '{spec.name}' with entropy_coef needs the policy entropy")
        per_token = per_token - spec.entropy_coef * x.entropy
    return per_token


def _clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, spec: LossSpec) -> tuple[torch.Tensor, dict]:
    """PPO's pessimistic objective min(r A, clip(r) A) with clip-higher and dual-clip, and its metrics."""
    high = spec.clip_eps if spec.clip_eps_high is None else spec.clip_eps_high
    surrogate = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - spec.clip_eps, 1.0 + high) * advantages
    objective = torch.minimum(surrogate, clipped)
    if spec.dual_clip:
        # Dual-clip PPO: for negative advantages, never let the objective fall below c * A.
        objective = torch.where(advantages < 0, torch.maximum(objective, spec.dual_clip * advantages), objective)
    return objective, {"clip_frac": (clipped < surrogate).float().detach(), "ratio": ratio.detach()}


def _old_logprobs(x: LossInputs) -> torch.Tensor:
    """pi_old of the PPO ratio: the learner's own logprobs from before the batch's first update when
    the controller sent them (several updates per batch), else the engine's that sampled."""
    return x.behaviour_logprobs if x.proximal_logprobs is None else x.proximal_logprobs


@LOSSES.register("ppo_clip", "PPO clipped surrogate; clip-higher (DAPO) via clip_eps_high, dual-clip via dual_clip",
                 paper="Schulman et al. 2017 (PPO); Yu et al. 2025 DAPO (clip-higher); Ye et al. 2020 (dual-clip)",
                 options=LossSpec, traits=POLICY)
def ppo_clip(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    objective, metrics = _clipped_surrogate(torch.exp(x.logprobs - _old_logprobs(x)), x.advantages, spec)
    return _regularise(-objective, x, spec, metrics), metrics


def _importance_weights(target: torch.Tensor, x: LossInputs, spec: LossSpec, metrics: dict) -> torch.Tensor:
    """min(pi_target / pi_behaviour, is_cap), detached: truncation bounds the variance a stale or
    mismatched sampler (another policy version, or the engine's own numerics) adds."""
    weight = torch.exp(target.detach() - x.behaviour_logprobs)
    metrics["is_weight"] = weight.detach()  # untruncated, so the logs show how far off-policy the data is
    metrics["is_truncated"] = (weight > spec.is_cap).float().detach()
    return torch.clamp(weight, max=spec.is_cap).detach()


@LOSSES.register("decoupled_ppo", "PPO clipped to the proximal policy, times min(pi_prox / pi_behaviour, is_cap); with "
                 "trainer.updates_per_batch 1 the proximal policy is the current one and this equals tis",
                 paper="Hilton et al. 2022, Batch size-invariance for policy optimization (decoupled PPO); "
                       "Fu et al. 2025, AReaL (asynchronous RL)",
                 options=LossSpec, traits=LossKind("policy", off_policy=True, proximal=True))
def decoupled_ppo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # The trust region is around the proximal policy (the learner's own at the step's start), not
    # around the stale engine that sampled; the importance weight carries the off-policy correction.
    return _decoupled(x, spec, lambda prox, metrics: _importance_weights(prox, x, spec, metrics))


def _decoupled(x: LossInputs, spec: LossSpec, weights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped to the proximal policy, times the detached importance weights that
    `weights(prox, metrics)` gives (truncated, or masked by a band)."""
    prox = _proximal(x)
    objective, metrics = _clipped_surrogate(torch.exp(x.logprobs - prox), x.advantages, spec)
    return _regularise(-weights(prox, metrics) * objective, x, spec, metrics), metrics


@LOSSES.register("tis", "truncated importance sampling: policy gradient weighted by min(pi / pi_behaviour, is_cap)",
                 paper="Yao et al. 2025, Your Efficient RL Framework Secretly Brings You Off-Policy RL Training "
                       "(TIS); Espeholt et al. 2018, IMPALA (truncated importance weights)",
                 options=LossSpec, traits=LossKind("policy", off_policy=True))
def tis(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    metrics: dict[str, torch.Tensor] = {}
    weight = _importance_weights(x.logprobs, x, spec, metrics)
    # Value w A, gradient w A grad(logp): the REINFORCE / GRPO gradient, reweighted to the current policy.
    per_token = -weight * x.advantages * torch.exp(x.logprobs - x.logprobs.detach())
    return _regularise(per_token, x, spec, metrics), metrics


def _proximal(x: LossInputs) -> torch.Tensor:
    """The learner's policy at the step's start: sent with several updates per batch, else the
    current one (one update per step: logprobs.detach() is exact)."""
    return x.logprobs.detach() if x.proximal_logprobs is None else x.proximal_logprobs


def _masked_weights(log_w: torch.Tensor, x: LossInputs, spec: LossSpec, metrics: dict,
                    sequence: bool) -> torch.Tensor:
    """Detached importance weights pi_prox / pi_behaviour with the band rule: a token whose weight
    (or, with `sequence`, a sequence whose geometric-mean weight) leaves [low, high] is masked
    out, not truncated, so a token the engine and the learner disagree on teaches nothing."""
    low, high = spec.is_band
    weight = torch.exp(log_w.detach())
    if sequence:
        lengths = x.mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        geo = torch.exp((log_w.detach() * x.mask).sum(dim=1, keepdim=True) / lengths)
        keep = ((geo >= low) & (geo <= high)).to(weight.dtype).expand_as(weight)
        weight = torch.clamp(weight, max=spec.is_cap)  # inside a kept sequence, truncated as in tis
    else:
        keep = ((weight >= low) & (weight <= high)).to(weight.dtype)
    metrics["is_weight"] = torch.exp(log_w.detach())
    metrics["is_masked"] = 1.0 - keep
    return weight * keep


@LOSSES.register("icepop", "PPO clipped to the proximal policy, times pi_prox / pi_behaviour where that token "
                 "weight lies in algorithm.is_band, and 0 (token masked) where it does not",
                 paper="Ling Team 2025, Every Step Evolves: Scaling Reinforcement Learning for Trillion-Scale "
                       "Thinking Model (IcePop)",
                 options=LossSpec, traits=LossKind("policy", off_policy=True, proximal=True))
def icepop(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _decoupled(x, spec, lambda prox, m: _masked_weights(prox - x.behaviour_logprobs, x, spec, m, sequence=False))


@LOSSES.register("seq_mis", "sequence-level masked importance sampling: decoupled PPO whose whole sequence is "
                 "dropped when its geometric-mean weight pi_prox / pi_behaviour leaves algorithm.is_band",
                 paper="Liu et al. 2025, When Speed Kills Stability: Demystifying RL Collapse from the "
                       "Training-Inference Mismatch (sequence-level masked IS)",
                 options=LossSpec, traits=LossKind("policy", off_policy=True, proximal=True))
def seq_mis(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _decoupled(x, spec, lambda prox, m: _masked_weights(prox - x.behaviour_logprobs, x, spec, m, sequence=True))


@LOSSES.register("cispo", "CISPO: the policy gradient of every token, weighted by its PPO ratio clipped to "
                 "[1 - clip_eps, 1 + clip_eps_high] and detached (no token loses its gradient)",
                 paper="MiniMax 2025, MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention "
                       "(CISPO)",
                 options=LossSpec, traits=POLICY)
def cispo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    high = spec.clip_eps if spec.clip_eps_high is None else spec.clip_eps_high
    ratio = torch.exp(x.logprobs.detach() - _old_logprobs(x))
    weight = torch.clamp(ratio, 1.0 - spec.clip_eps, 1.0 + high)
    metrics = {"clip_frac": (weight != ratio).float(), "ratio": ratio}
    # Value w A, gradient w A grad(logp): REINFORCE reweighted by the clipped, detached ratio.
    per_token = -weight * x.advantages * torch.exp(x.logprobs - x.logprobs.detach())
    return _regularise(per_token, x, spec, metrics), metrics


@LOSSES.register("gspo", "GSPO: sequence-level importance ratio (length-normalised), clipped per sequence",
                 paper="Zheng et al. 2025, Group Sequence Policy Optimization",
                 options=LossSpec, traits=POLICY)
def gspo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lengths = x.mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    seq_log_ratio = ((x.logprobs - _old_logprobs(x)) * x.mask).sum(dim=1, keepdim=True) / lengths
    # GSPO-token form: the value is the sequence ratio on every token, the gradient flows per token.
    ratio = torch.exp(seq_log_ratio.detach() + x.logprobs - x.logprobs.detach())
    high = spec.clip_eps if spec.clip_eps_high is None else spec.clip_eps_high
    surrogate = ratio * x.advantages
    clipped = torch.clamp(ratio, 1.0 - spec.clip_eps, 1.0 + high) * x.advantages
    metrics = {"clip_frac": (clipped < surrogate).float().detach(), "ratio": ratio.detach()}
    return _regularise(-torch.minimum(surrogate, clipped), x, spec, metrics), metrics


@LOSSES.register("value_clip", "critic: 0.5 * max((V - R)^2, (clip(V, V_old +- value_clip) - R)^2)",
                 paper="Schulman et al. 2017 (PPO value clipping)",
                 options=LossSpec, traits=LossKind("critic"))
def value_clip(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    clipped = x.old_values + torch.clamp(x.values - x.old_values, -spec.value_clip, spec.value_clip)
    unclipped_loss = (x.values - x.returns) ** 2
    clipped_loss = (clipped - x.returns) ** 2
    metrics = {"value_clip_frac": (clipped_loss > unclipped_loss).float().detach(),
               "value": x.values.detach()}
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), metrics


# ---- supervised and preference losses ----
# A pair loss is one value per pair; it is returned on every token of the pair's rows and the
# controller's weights (trainer/preference.py: pair_weights) pick one token per pair, so the step
# loss is the mean over pairs while the learner stays a plain sum(per_token * weight).
# Metrics of shape [B] are per sequence (each pair's value on both its rows).

@LOSSES.register("sft", "supervised fine-tuning: negative log-likelihood of the completion tokens",
                 paper="supervised fine-tuning (token NLL on completions); Ouyang et al. 2022 (InstructGPT, SFT stage)",
                 options=LossSpec, traits=LossKind("supervised"))
def sft(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return -x.logprobs, {}


def _on_rows(pair_values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[P] pair values -> [B, T]: pair i's value on every token of rows 2i and 2i+1."""
    return pair_values.repeat_interleave(2)[:, None].expand_as(like)


def _pairs(per_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if per_row.shape[0] % 2:
        raise ValueError(f"a preference batch has chosen/rejected row pairs; got {per_row.shape[0]} rows")
    return per_row[0::2], per_row[1::2]


def _log_ratios(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log pi/pi_ref of the chosen and the rejected answer of each pair [P]."""
    if x.ref_logprobs is None:
        raise ValueError(f"loss '{spec.name}' needs reference logprobs (batch.ref_logprobs)")
    return _pairs(((x.logprobs - x.ref_logprobs) * x.mask).sum(dim=1))


def _dpo_family(x: LossInputs, spec: LossSpec, pair_loss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    chosen, rejected = _log_ratios(x, spec)
    loss = pair_loss(chosen - rejected)
    metrics = {"reward_margin": spec.beta * (chosen - rejected), "reward_accuracy": (chosen > rejected).float(),
               "chosen_reward": spec.beta * chosen, "rejected_reward": spec.beta * rejected}
    return _on_rows(loss, x.mask), {k: v.detach().repeat_interleave(2) for k, v in metrics.items()}


@LOSSES.register("dpo", "DPO: -log sigmoid(beta * (log-ratio chosen - log-ratio rejected)), ratios to the reference",
                 paper="Rafailov et al. 2023, Direct Preference Optimization",
                 options=LossSpec, traits=LossKind("preference", needs_reference=True))
def dpo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _dpo_family(x, spec, lambda h: -F.logsigmoid(spec.beta * h))


@LOSSES.register("cdpo", "conservative DPO: DPO with labels flipped with probability label_smoothing",
                 paper="Mitchell 2023, A note on DPO with noisy preferences (conservative DPO)",
                 options=LossSpec, traits=LossKind("preference", needs_reference=True))
def cdpo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    eps = spec.label_smoothing
    return _dpo_family(x, spec, lambda h: -(1 - eps) * F.logsigmoid(spec.beta * h) - eps * F.logsigmoid(-spec.beta * h))


@LOSSES.register("ipo", "IPO: (log-ratio chosen - log-ratio rejected - 1 / (2 beta))^2, sequence log-ratios",
                 paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human "
                       "Preferences (IPO)",
                 options=LossSpec, traits=LossKind("preference", needs_reference=True))
def ipo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _dpo_family(x, spec, lambda h: (h - 1.0 / (2.0 * spec.beta)) ** 2)


def _mean_logprobs(x: LossInputs) -> torch.Tensor:
    """Length-normalised sequence logprob [B]; an empty (filler) row counts one token, stays finite."""
    return (x.logprobs * x.mask).sum(dim=1) / x.mask.sum(dim=1).clamp(min=1.0)


@LOSSES.register("simpo", "SimPO (reference-free): -log sigmoid(beta * (mean logp chosen - mean logp rejected) - gamma)",
                 paper="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
                 options=LossSpec, traits=LossKind("preference"))
def simpo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    chosen, rejected = _pairs(_mean_logprobs(x))
    margin = spec.beta * (chosen - rejected)
    metrics = {"reward_margin": margin, "reward_accuracy": (chosen > rejected).float()}
    loss = -F.logsigmoid(margin - spec.simpo_gamma)
    return _on_rows(loss, x.mask), {k: v.detach().repeat_interleave(2) for k, v in metrics.items()}


@LOSSES.register("orpo", "ORPO (reference-free): NLL of chosen - lambda * log sigmoid(log odds chosen - log odds rejected)",
                 paper="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model",
                 options=LossSpec, traits=LossKind("preference"))
def orpo(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # Odds of the length-normalised likelihood p: log(p / (1 - p)); p < 1 kept away from 1 for finiteness.
    mean_logp = _mean_logprobs(x).clamp(max=-1e-6)
    log_odds = mean_logp - torch.log1p(-torch.exp(mean_logp))
    chosen_odds, rejected_odds = _pairs(log_odds)
    nll_chosen = -_pairs(mean_logp)[0]
    odds_term = F.logsigmoid(chosen_odds - rejected_odds)
    metrics = {"log_odds_ratio": chosen_odds - rejected_odds, "reward_accuracy": (chosen_odds > rejected_odds).float(),
               "nll_chosen": nll_chosen}
    loss = nll_chosen - spec.orpo_lambda * odds_term
    return _on_rows(loss, x.mask), {k: v.detach().repeat_interleave(2) for k, v in metrics.items()}


@LOSSES.register("bradley_terry", "reward model: -log sigmoid(score chosen - score rejected - margin)",
                 paper="Bradley & Terry 1952; Ouyang et al. 2022 (reward model); Touvron et al. 2023 (Llama 2 margin)",
                 options=LossSpec, traits=LossKind("reward_model"))
def bradley_terry(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if x.scores is None:
        raise ValueError("loss 'bradley_terry' needs reward-model scores (learner model_kind 'reward')")
    chosen, rejected = _pairs(x.scores)
    margin = torch.zeros_like(chosen) if x.margins is None else _pairs(x.margins)[0]
    loss = -F.logsigmoid(chosen - rejected - margin)
    metrics = {"accuracy": (chosen > rejected).float(), "score_margin": chosen - rejected, "chosen_score": chosen}
    return _on_rows(loss, x.mask), {k: v.detach().repeat_interleave(2) for k, v in metrics.items()}
