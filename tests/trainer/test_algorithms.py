import math

import numpy as np
import pytest
import torch

from rollout.registry import Registry
from trainer.algorithms import ADVANTAGES, KL_ESTIMATORS, LOSSES, AdvantageOptions, LossInputs
from trainer.types import LossSpec


def test_grpo_advantages_by_hand():
    adv = ADVANTAGES.get("grpo")(np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]), AdvantageOptions())
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    np.testing.assert_allclose(adv[0], [0.866025, -0.866025, -0.866025, 0.866025], rtol=1e-5)
    np.testing.assert_array_equal(adv[1], [0, 0, 0, 0])  # a tied group carries no signal


def test_grpo_without_std_is_centred_reward():
    adv = ADVANTAGES.get("grpo")(np.array([[1.1, 0.1, 0.0]]), AdvantageOptions(normalize_std=False))
    np.testing.assert_allclose(adv[0], [0.7, -0.3, -0.4], rtol=1e-6)


def test_grpo_rejects_flat_rewards():
    with pytest.raises(ValueError, match="groups, samples"):
        ADVANTAGES.get("grpo")(np.array([1.0, 0.0]), AdvantageOptions())


def inputs(log_ratio, adv, ref=None):
    lr = torch.tensor([log_ratio])
    old = torch.full_like(lr, -1.0)
    return LossInputs(old + lr, old, torch.tensor([adv]), torch.ones_like(lr),
                      None if ref is None else torch.tensor([ref]))


def test_grpo_loss_by_hand():
    x = inputs([0.1, 0.5, -0.5, 0.5], [1.0, 1.0, -1.0, -1.0])
    loss, m = LOSSES.get("grpo")(x, LossSpec(clip_eps=0.2))
    e = math.exp
    # ratio 1.105 (inside), 1.649 with A>0 (clipped to 1.2), 0.607 with A<0 (clipped to 0.8),
    # 1.649 with A<0 (unclipped: the pessimistic bound keeps the larger penalty)
    expected = [-e(0.1), -1.2, 0.8, e(0.5)]
    np.testing.assert_allclose(loss[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(m["clip_frac"][0].numpy(), [0, 1, 1, 0])


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    # ref - logp = [-0.5, 1.0]
    np.testing.assert_allclose(KL_ESTIMATORS.get("k1")(logp, ref).numpy(), [0.5, -1.0])
    np.testing.assert_allclose(KL_ESTIMATORS.get("k2")(logp, ref).numpy(), [0.125, 0.5])
    np.testing.assert_allclose(KL_ESTIMATORS.get("k3")(logp, ref).numpy(),
                               [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1], rtol=1e-6)
    assert (KL_ESTIMATORS.get("k3")(torch.randn(100), torch.randn(100)) >= 0).all()


def test_kl_penalty_enters_loss():
    x = inputs([0.0, 0.0], [1.0, -1.0], ref=[-1.0 + 0.3, -1.0 - 0.2])
    base, _ = LOSSES.get("grpo")(x, LossSpec())
    with_kl, m = LOSSES.get("grpo")(x, LossSpec(kl_coef=0.1, kl_estimator="k3"))
    k3 = [math.exp(0.3) - 0.3 - 1, math.exp(-0.2) + 0.2 - 1]
    np.testing.assert_allclose((with_kl - base)[0].numpy(), [0.1 * k for k in k3], atol=2e-7)
    np.testing.assert_allclose(m["kl"][0].numpy(), k3, rtol=1e-5)


def test_kl_without_reference_is_an_error():
    with pytest.raises(ValueError, match="reference logprobs"):
        LOSSES.get("grpo")(inputs([0.0], [1.0]), LossSpec(kl_coef=0.1))


def test_registry_refuses_duplicates_and_lists_names():
    reg = Registry("thing")
    reg.register("a", "first")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "again")(lambda: 2)
    with pytest.raises(KeyError, match="valid names: a"):
        reg.get("b")
