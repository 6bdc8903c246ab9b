"""Algorithm registries: advantage estimators, policy losses, KL estimators.

Each entry is one function with its registry's signature:
  advantage(rewards [G, n] numpy, AdvantageOptions) -> advantages [G, n]
  loss(LossInputs, LossSpec) -> (per-token loss [B, T], per-token metrics {name: [B, T]})
  kl(logprobs [B, T], ref_logprobs [B, T]) -> per-token KL estimate [B, T]
The learner aggregates per-token losses over the mask (token-mean over the step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from rollout.registry import Registry
from trainer.types import LossSpec

ADVANTAGES: Registry[Callable] = Registry("advantage estimator")
LOSSES: Registry[Callable] = Registry("loss")
KL_ESTIMATORS: Registry[Callable] = Registry("KL estimator")


@dataclass(frozen=True)
class AdvantageOptions:
    normalize_std: bool = True
    eps: float = 1e-6


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] current policy, log_softmax(logits / T)
    behaviour_logprobs: torch.Tensor  # [B, T] from the engine that sampled
    advantages: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] 1.0 on response tokens
    ref_logprobs: Optional[torch.Tensor] = None  # [B, T] frozen reference policy


@ADVANTAGES.register("grpo", "group-relative: (r - mean(group)) / (std(group) + eps); std optional (Dr.GRPO)")
def grpo_advantages(rewards: np.ndarray, opts: AdvantageOptions) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"grpo needs rewards shaped [groups, samples>=2], got {rewards.shape}")
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if opts.normalize_std:
        # Unbiased (ddof=1) group std, as in TRL and verl.
        centred = centred / (rewards.std(axis=1, ddof=1, keepdims=True) + opts.eps)
    return centred.astype(np.float32)


@KL_ESTIMATORS.register("k1", "log-ratio log(pi/pi_ref); unbiased, high variance")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2", "0.5 * log-ratio^2; low variance, biased")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3", "exp(ref - logp) - (ref - logp) - 1; unbiased, non-negative (Schulman)")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


@LOSSES.register("grpo", "PPO clipped surrogate on per-token advantages, optional KL to the reference in the loss")
def grpo_loss(x: LossInputs, spec: LossSpec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    log_ratio = x.logprobs - x.behaviour_logprobs
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - spec.clip_eps, 1.0 + spec.clip_eps)
    per_token = -torch.minimum(ratio * x.advantages, clipped * x.advantages)
    metrics = {
        "clip_frac": ((ratio * x.advantages) > (clipped * x.advantages)).float().detach(),
        "ratio": ratio.detach(),
    }
    if spec.kl_coef > 0:
        if x.ref_logprobs is None:
            raise ValueError("loss 'grpo' with kl_coef > 0 needs reference logprobs")
        kl = KL_ESTIMATORS.get(spec.kl_estimator)(x.logprobs, x.ref_logprobs)
        per_token = per_token + spec.kl_coef * kl
        metrics["kl"] = kl.detach()
    return per_token, metrics
