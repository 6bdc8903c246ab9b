"""Losses, KL estimators and aggregation modes against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from rollout.registry import Registry
from trainer.losses import AGGREGATIONS, KL_ESTIMATORS, LOSSES, LossInputs
from trainer.types import LossSpec

e = math.exp


def policy_inputs(log_ratio, adv, ref=None, entropy=None, mask=None):
    lr = torch.tensor([log_ratio], dtype=torch.float64)
    old = torch.full_like(lr, -1.0)
    return LossInputs(
        mask=torch.ones_like(lr) if mask is None else torch.tensor([mask], dtype=torch.float64),
        logprobs=old + lr, behaviour_logprobs=old, advantages=torch.tensor([adv], dtype=torch.float64),
        ref_logprobs=None if ref is None else torch.tensor([ref], dtype=torch.float64),
        entropy=None if entropy is None else torch.tensor([entropy], dtype=torch.float64),
    )


def test_ppo_clip_by_hand():
    x = policy_inputs([0.1, 0.5, -0.5, 0.5], [1.0, 1.0, -1.0, -1.0])
    loss, m = LOSSES.get("ppo_clip")(x, LossSpec(clip_eps=0.2))
    # ratio 1.105 (inside), 1.649 with A>0 (clipped to 1.2), 0.607 with A<0 (clipped to 0.8),
    # 1.649 with A<0 (unclipped: the pessimistic bound keeps the larger penalty)
    np.testing.assert_allclose(loss[0].numpy(), [-e(0.1), -1.2, 0.8, e(0.5)], rtol=1e-12)
    np.testing.assert_array_equal(m["clip_frac"][0].numpy(), [0, 1, 1, 0])


def test_clip_higher_is_asymmetric():
    x = policy_inputs([0.25, -0.25], [1.0, -1.0])
    loss, _ = LOSSES.get("ppo_clip")(x, LossSpec(clip_eps=0.2, clip_eps_high=0.28))
    # ratio 1.284 (A>0) clipped at 1.28, not 1.2; ratio 0.779 (A<0) clipped at the low side 0.8
    np.testing.assert_allclose(loss[0].numpy(), [-1.28, 0.8], rtol=1e-12)


def test_dual_clip_bounds_negative_advantages():
    x = policy_inputs([2.0, 2.0], [-1.0, 1.0])  # ratio e^2 = 7.39
    plain, _ = LOSSES.get("ppo_clip")(x, LossSpec(clip_eps=0.2))
    dual, _ = LOSSES.get("ppo_clip")(x, LossSpec(clip_eps=0.2, dual_clip=3.0))
    np.testing.assert_allclose(plain[0].numpy(), [e(2.0), -1.2], rtol=1e-12)
    np.testing.assert_allclose(dual[0].numpy(), [3.0, -1.2], rtol=1e-12)  # -max(-7.39, 3 * -1)


def test_gspo_uses_the_length_normalised_sequence_ratio():
    x = policy_inputs([0.1, 0.3, 0.9], [1.0, 1.0, 1.0], mask=[1.0, 1.0, 0.0])
    x.logprobs.requires_grad_(True)
    loss, m = LOSSES.get("gspo")(x, LossSpec(clip_eps=3e-4, clip_eps_high=4e-4))
    seq_ratio = e((0.1 + 0.3) / 2)  # the masked third token does not count
    np.testing.assert_allclose(m["ratio"][0, :2].numpy(), [seq_ratio, seq_ratio], rtol=1e-12)
    np.testing.assert_allclose(loss[0, :2].detach().numpy(), [-(1 + 4e-4)] * 2, rtol=1e-12)  # clipped high
    x2 = policy_inputs([0.0001, 0.0001], [1.0, 1.0])
    x2.logprobs.requires_grad_(True)
    loss2, _ = LOSSES.get("gspo")(x2, LossSpec(clip_eps=3e-4, clip_eps_high=4e-4))
    loss2.sum().backward()  # inside the clip range: d/dlogp of -s*A is -s*A per token
    np.testing.assert_allclose(x2.logprobs.grad[0].numpy(), [-e(0.0001)] * 2, rtol=1e-9)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])  # ref - logp = [-0.5, 1.0]
    np.testing.assert_allclose(KL_ESTIMATORS.get("k1")(logp, ref).numpy(), [0.5, -1.0])
    np.testing.assert_allclose(KL_ESTIMATORS.get("k2")(logp, ref).numpy(), [0.125, 0.5])
    k3 = [e(-0.5) + 0.5 - 1, e(1.0) - 1.0 - 1]
    np.testing.assert_allclose(KL_ESTIMATORS.get("k3")(logp, ref).numpy(), k3, rtol=1e-6)
    assert (KL_ESTIMATORS.get("k3")(torch.randn(100), torch.randn(100)) >= 0).all()
    big = KL_ESTIMATORS.get("k3_clamp")(torch.tensor([-30.0]), torch.tensor([0.0]))
    assert big.item() == 10.0 and KL_ESTIMATORS.get("k3")(torch.tensor([-30.0]), torch.tensor([0.0])).item() > 1e12


def test_kl_and_entropy_regularise_the_loss():
    x = policy_inputs([0.0, 0.0], [1.0, -1.0], ref=[-1.0 + 0.3, -1.0 - 0.2], entropy=[0.5, 2.0])
    base, _ = LOSSES.get("ppo_clip")(x, LossSpec())
    reg, m = LOSSES.get("ppo_clip")(x, LossSpec(kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01))
    k3 = [e(0.3) - 0.3 - 1, e(-0.2) + 0.2 - 1]
    np.testing.assert_allclose((reg - base)[0].numpy(), [0.1 * k3[0] - 0.005, 0.1 * k3[1] - 0.02], rtol=1e-9)
    np.testing.assert_allclose(m["kl"][0].numpy(), k3, rtol=1e-9)
    with pytest.raises(ValueError, match="reference logprobs"):
        LOSSES.get("ppo_clip")(policy_inputs([0.0], [1.0]), LossSpec(kl_coef=0.1))


def test_value_clip_by_hand():
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    x = LossInputs(mask=t([1.0, 1.0, 1.0]), values=t([1.0, 0.5, 0.0]), old_values=t([0.5, 0.5, 0.5]),
                   returns=t([0.0, 1.0, 0.6]))
    loss, m = LOSSES.get("value_clip")(x, LossSpec(value_clip=0.2))
    # row 0: unclipped (1-0)^2 = 1, clipped (0.7-0)^2 = 0.49 -> 0.5; row 1: both 0.25 -> 0.125;
    # row 2: unclipped 0.36, clipped (0.3-0.6)^2 = 0.09 -> max 0.36 -> 0.18
    np.testing.assert_allclose(loss[0].numpy(), [0.5, 0.125, 0.18], rtol=1e-12)


MASK = np.array([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=np.float32)
LOSS = np.array([[9, 1, 2, 3], [9, 4, 9, 9], [9, 9, 9, 9], [5, 6, 7, 8]], dtype=np.float32)


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", (1 + 2 + 3 + 4 + 5 + 6 + 7 + 8) / 8),
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1 + (5 + 6 + 7 + 8) / 4) / 3),
    ("seq-mean-token-sum", ((1 + 2 + 3) / 10 + 4 / 10 + (5 + 6 + 7 + 8) / 10) / 3),
])
def test_aggregation_modes(mode, expected):
    weights = AGGREGATIONS.get(mode)(MASK, 10)
    assert (LOSS * weights).sum() == pytest.approx(expected, rel=1e-6)
    assert np.all(weights[MASK == 0] == 0)


def test_registry_refuses_duplicates_and_lists_names():
    reg = Registry("thing")
    reg.register("a", "first")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "again")(lambda: 2)
    with pytest.raises(KeyError, match="valid names: a"):
        reg.get("b")


def test_readme_algorithm_table_names_every_entry():
    from pathlib import Path

    from trainer.algorithms import PAPERS, REGISTRIES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Algorithms"):readme.index("## The run directory")]
    for registry in REGISTRIES:
        for name in registry.names():
            assert f"`{name}`" in table, f"README's algorithm table lacks {registry.kind} '{name}'"
            assert name in PAPERS, f"trainer/algorithms.py PAPERS lacks '{name}'"
