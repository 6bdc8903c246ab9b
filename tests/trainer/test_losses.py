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
    reg.register("b", "temporary")(lambda: 3)
    reg.unregister("b")
    assert reg.names() == ["a"]
    with pytest.raises(KeyError, match="unknown thing 'b'"):
        reg.unregister("b")


def test_registry_refuses_an_entry_without_its_traits_or_paper():
    from trainer.losses import LossKind

    reg = Registry("thing", traits=LossKind, papers=True)
    with pytest.raises(TypeError, match="traits=LossKind"):
        reg.register("a", "no traits", paper="p")
    with pytest.raises(ValueError, match="paper"):
        reg.register("a", "no paper", traits=LossKind("policy"))
    reg.register("a", "ok", paper="p", traits=LossKind("critic"))(lambda: 1)
    assert reg.names(lambda e: e.traits.trains == "critic") == ["a"] and reg.names(lambda e: False) == []


def test_readme_algorithm_table_names_every_entry():
    from pathlib import Path

    from trainer.algorithms import REGISTRIES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Algorithms"):readme.index("## The run directory")]
    for registry in REGISTRIES:
        for name in registry.names():
            assert f"`{name}`" in table, f"README's algorithm table lacks {registry.kind} '{name}'"


# ---- off-policy corrections (decoupled_ppo, tis) ----

def off_policy_inputs(logp, behaviour, adv, proximal=None):
    """logprobs [1, T] as a leaf with a gradient; behaviour and proximal as given (constants)."""
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return LossInputs(mask=torch.ones(1, len(logp), dtype=torch.float64), logprobs=t(logp).requires_grad_(True),
                      behaviour_logprobs=t(behaviour), advantages=t(adv),
                      proximal_logprobs=None if proximal is None else t(proximal))


def loss_and_grad(name, x, spec):
    loss, metrics = LOSSES.get(name)(x, spec)
    (grad,) = torch.autograd.grad(loss.sum(), x.logprobs)
    return loss.detach()[0].numpy(), grad[0].numpy(), metrics


def test_off_policy_losses_are_registered_as_such():
    assert LOSSES.names(lambda e: e.traits.off_policy) == ["decoupled_ppo", "icepop", "seq_mis", "tis"]
    assert LossSpec().is_cap == 2.0


@pytest.mark.parametrize("spec", [LossSpec(clip_eps=0.2), LossSpec(clip_eps=0.2, clip_eps_high=0.28, dual_clip=3.0)])
def test_decoupled_ppo_on_policy_is_ppo_clip(spec):
    logp = [-1.0, -0.6, -1.5, -0.5, 1.0 - 3.0]
    adv = [1.0, 1.0, -1.0, -1.0, -1.0]
    # behaviour == proximal == logprobs: weight 1, ratio 1 -> exactly PPO's loss -A and gradient -A.
    for proximal in (None, logp):
        ppo = loss_and_grad("ppo_clip", off_policy_inputs(logp, logp, adv), spec)
        dec = loss_and_grad("decoupled_ppo", off_policy_inputs(logp, logp, adv, proximal), spec)
        np.testing.assert_array_equal(dec[0], ppo[0])
        np.testing.assert_array_equal(dec[1], ppo[1])
        np.testing.assert_array_equal(dec[0], [-a for a in adv])
        np.testing.assert_array_equal(dec[2]["is_weight"][0].numpy(), [1.0] * 5)
    # behaviour == proximal, logprobs moved off it (ratios 1.105, 1.649, 0.607, 1.649, e^2 with the
    # A signs above): clipped, clip-higher and dual-clipped tokens all match PPO in value and gradient.
    old = [-1.0] * 5
    moved = [-1.0 + 0.1, -1.0 + 0.5, -1.0 - 0.5, -1.0 + 0.5, -1.0 + 2.0]
    ppo = loss_and_grad("ppo_clip", off_policy_inputs(moved, old, adv), spec)
    dec = loss_and_grad("decoupled_ppo", off_policy_inputs(moved, old, adv, proximal=old), spec)
    np.testing.assert_array_equal(dec[0], ppo[0])
    np.testing.assert_array_equal(dec[1], ppo[1])
    np.testing.assert_array_equal(dec[2]["clip_frac"][0].numpy(), ppo[2]["clip_frac"][0].numpy())
    assert ppo[2]["clip_frac"].sum() >= 2 and (ppo[1] == 0).sum() >= 2  # the clip range was reached


def test_decoupled_ppo_one_update_weighs_the_policy_gradient_by_the_truncated_weight():
    # proximal=None (one optimizer update per step): ratio 1, so the objective is w_t * A and its
    # gradient w_t * A * grad(logp). logprobs come from logits here, so grad(logp) is a real vector.
    torch.manual_seed(0)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([0, 3, 1, 4])
    logp = torch.log_softmax(logits, dim=-1)[torch.arange(4), tokens][None]
    log_w = torch.tensor([[0.3, 1.0, -0.5, math.log(2.0) + 1e-6]], dtype=torch.float64)  # prox - behaviour
    adv = torch.tensor([[1.0, -2.0, 0.5, 1.5]], dtype=torch.float64)
    x = LossInputs(mask=torch.ones_like(adv), logprobs=logp, behaviour_logprobs=logp.detach() - log_w, advantages=adv)
    loss, m = LOSSES.get("decoupled_ppo")(x, LossSpec(clip_eps=0.2, is_cap=2.0))
    w_t = np.array([e(0.3), 2.0, e(-0.5), 2.0])  # e^1 = 2.72 and 2 + 2e-6 truncate to the cap
    np.testing.assert_allclose(loss[0].detach().numpy(), -w_t * adv[0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(m["is_weight"][0].numpy(), np.exp(log_w[0].numpy()), rtol=1e-12)
    np.testing.assert_array_equal(m["is_truncated"][0].numpy(), [0, 1, 0, 1])
    np.testing.assert_array_equal(m["ratio"][0].numpy(), [1.0] * 4)
    # Token by token: d loss / d logp_t = -w_t A_t ...
    (per_token_grad,) = torch.autograd.grad(loss.sum(), logp, retain_graph=True)
    np.testing.assert_allclose(per_token_grad[0].numpy(), -w_t * adv[0].numpy(), rtol=1e-12)
    # ... and through the model: the same as the hand-built -sum_t w_t A_t logp_t.
    (got,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
    (expected,) = torch.autograd.grad(-(torch.tensor(w_t) * adv[0] * logp[0]).sum(), logits)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)
    assert expected.abs().min() > 0  # every logit moves: not a vacuous comparison


def test_decoupled_ppo_clips_to_the_proximal_policy_and_scales_by_the_weight():
    prox = [-1.0, -1.0, -1.0, -1.0]
    behaviour = [-1.2, -2.5, -0.7, -1.0]  # w = e^0.2, e^1.5 (truncated to 2), e^-0.3, 1
    logp = [-1.0 + 0.5, -1.0 + 0.1, -1.0 + 0.5, -1.0 - 0.5]  # ratio to prox: 1.649, 1.105, 1.649, 0.607
    adv = [1.0, 1.0, -1.0, 1.0]
    loss, grad, m = loss_and_grad("decoupled_ppo", off_policy_inputs(logp, behaviour, adv, prox), LossSpec(clip_eps=0.2))
    w_t = np.array([e(0.2), 2.0, e(-0.3), 1.0])
    # token 0: A > 0 beyond 1 + eps -> w * 1.2 * A, no gradient; token 1 inside; token 2: A < 0, the
    # pessimistic bound keeps the unclipped ratio; token 3: below 1 - eps with A > 0 stays unclipped.
    objective = np.array([1.2, e(0.1), -e(0.5), e(-0.5)])
    np.testing.assert_allclose(loss, -w_t * objective, rtol=1e-12)
    np.testing.assert_allclose(grad, [0.0, -w_t[1] * e(0.1), w_t[2] * e(0.5), -w_t[3] * e(-0.5)], rtol=1e-12)
    assert grad[0] == 0.0
    np.testing.assert_array_equal(m["clip_frac"][0].numpy(), [1, 0, 0, 0])
    np.testing.assert_allclose(m["ratio"][0].numpy(), [e(0.5), e(0.1), e(0.5), e(-0.5)], rtol=1e-12)
    np.testing.assert_allclose(m["is_weight"][0].numpy(), [e(0.2), e(1.5), e(-0.3), 1.0], rtol=1e-12)
    np.testing.assert_array_equal(m["is_truncated"][0].numpy(), [0, 1, 0, 0])
    # A larger cap lets token 1's weight through untruncated.
    loss5, _, m5 = loss_and_grad("decoupled_ppo", off_policy_inputs(logp, behaviour, adv, prox),
                                 LossSpec(clip_eps=0.2, is_cap=5.0))
    np.testing.assert_allclose(loss5[1], -e(1.5) * e(0.1), rtol=1e-12)
    np.testing.assert_array_equal(m5["is_truncated"][0].numpy(), [0, 0, 0, 0])


def test_tis_by_hand():
    logp = [-0.5, -1.0, -2.0, -0.1]
    behaviour = [-0.8, -3.0, -1.0, -0.1]  # w = e^0.3, e^2 (truncated to 1.5), e^-1, 1
    adv = [2.0, 1.0, -1.0, -0.5]
    x = off_policy_inputs(logp, behaviour, adv)
    loss, grad, m = loss_and_grad("tis", x, LossSpec(is_cap=1.5))
    w_t = np.array([e(0.3), 1.5, e(-1.0), 1.0])
    np.testing.assert_allclose(loss, -w_t * np.array(adv), rtol=1e-12)  # value w_t * A
    np.testing.assert_allclose(grad, -w_t * np.array(adv), rtol=1e-12)  # gradient w_t * A * grad(logp)
    np.testing.assert_allclose(m["is_weight"][0].numpy(), [e(0.3), e(2.0), e(-1.0), 1.0], rtol=1e-12)
    np.testing.assert_array_equal(m["is_truncated"][0].numpy(), [0, 1, 0, 0])
    # The KL penalty and entropy bonus apply as for every policy loss.
    x = off_policy_inputs(logp, behaviour, adv)
    x.ref_logprobs = torch.tensor([logp], dtype=torch.float64)  # KL 0 at the reference
    x.entropy = torch.tensor([[1.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    reg, _, _ = loss_and_grad("tis", x, LossSpec(is_cap=1.5, kl_coef=0.1, entropy_coef=0.01))
    np.testing.assert_allclose(reg - loss, [-0.01, -0.02, 0.0, 0.0], rtol=1e-9, atol=1e-15)


# ---- GSPO against PPO, and pi_old from the learner ----

def test_gspo_gradient_is_the_sequence_ratio_on_every_token_not_the_token_ratios():
    # Per-token log-ratios +0.5 and -0.5: the sequence ratio is exp(0) = 1 (inside GSPO's clip
    # range), while PPO's token ratios e^0.5 and e^-0.5 differ (and one is clipped).
    x = policy_inputs([0.5, -0.5], [1.0, 1.0])
    x.logprobs.requires_grad_(True)
    loss, m = LOSSES.get("gspo")(x, LossSpec(clip_eps=3e-4, clip_eps_high=4e-4))
    loss.sum().backward()
    np.testing.assert_allclose(m["ratio"][0].numpy(), [1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(x.logprobs.grad[0].numpy(), [-1.0, -1.0], rtol=1e-12)
    y = policy_inputs([0.5, -0.5], [1.0, 1.0])
    y.logprobs.requires_grad_(True)
    ppo, _ = LOSSES.get("ppo_clip")(y, LossSpec(clip_eps=0.2))
    ppo.sum().backward()
    # PPO: token 0's ratio 1.65 is clipped (no gradient), token 1's gradient is -e^-0.5.
    np.testing.assert_allclose(y.logprobs.grad[0].numpy(), [0.0, -e(-0.5)], rtol=1e-12)


@pytest.mark.parametrize("name", ["ppo_clip", "gspo"])
def test_pi_old_is_the_learners_proximal_policy_when_sent(name):
    # The engine's behaviour logprobs are 0.3 off the learner's own (numerics); pi_old = the
    # learner's proximal logprobs makes the ratio exactly 1 at the first update.
    x = policy_inputs([0.3, 0.3], [1.0, -1.0])
    x.proximal_logprobs = x.logprobs.detach().clone()
    _, m = LOSSES.get(name)(x, LossSpec(clip_eps=0.2))
    np.testing.assert_allclose(m["ratio"][0].numpy(), [1.0, 1.0], rtol=1e-12)
    assert float(m["clip_frac"].sum()) == 0.0
    _, engine = LOSSES.get(name)(policy_inputs([0.3, 0.3], [1.0, -1.0]), LossSpec(clip_eps=0.2))
    np.testing.assert_allclose(engine["ratio"][0].numpy(), [e(0.3), e(0.3)], rtol=1e-12)


def test_loss_kinds_are_declared_at_registration():
    from trainer.losses import loss_kind, losses_that

    assert losses_that("preference") == ["cdpo", "dpo", "ipo", "orpo", "simpo"]
    assert LOSSES.names(lambda e: e.traits.needs_reference) == ["cdpo", "dpo", "ipo"]
    assert losses_that("critic") == ["value_clip"] and losses_that("reward_model") == ["bradley_terry"]
    assert LOSSES.names(lambda e: e.traits.proximal) == ["cispo", "decoupled_ppo", "gspo", "icepop", "ppo_clip",
                                                         "seq_mis"]
    assert loss_kind("tis").off_policy and not loss_kind("tis").proximal
    assert "equals tis" in LOSSES.entry("decoupled_ppo").description


# ---- mismatch corrections: masked importance sampling (icepop, seq_mis) and cispo ----

def test_icepop_masks_tokens_whose_weight_leaves_the_band():
    prox = [-1.0] * 4
    behaviour = [-1.2, -2.5, -0.2, -1.0]  # w = e^0.2 (in), e^1.5 = 4.48 (above 2), e^-0.8 = 0.45 (below 0.5), 1
    logp = [-1.0 + 0.1, -1.0 + 0.1, -1.0 + 0.1, -1.0 - 0.5]  # ratio to prox: 1.105, 1.105, 1.105, 0.607
    adv = [1.0, 1.0, -1.0, 1.0]
    loss, grad, m = loss_and_grad("icepop", off_policy_inputs(logp, behaviour, adv, prox), LossSpec(clip_eps=0.2))
    w_t = np.array([e(0.2), 0.0, 0.0, 1.0])  # the out-of-band tokens are masked, not truncated (tis would keep 2)
    objective = np.array([e(0.1), e(0.1), -e(0.1), e(-0.5)])
    np.testing.assert_allclose(loss, -w_t * objective, rtol=1e-12)
    np.testing.assert_allclose(grad, -w_t * objective, rtol=1e-12)  # d(r)/d(logp) = r inside the clip range
    assert grad[1] == 0.0 and grad[2] == 0.0
    np.testing.assert_array_equal(m["is_masked"][0].numpy(), [0, 1, 1, 0])
    np.testing.assert_allclose(m["is_weight"][0].numpy(), [e(0.2), e(1.5), e(-0.8), 1.0], rtol=1e-12)
    # A wider band lets token 1 through with its full weight.
    wide, _, _ = loss_and_grad("icepop", off_policy_inputs(logp, behaviour, adv, prox),
                               LossSpec(clip_eps=0.2, is_band=(0.1, 5.0)))
    np.testing.assert_allclose(wide[1], -e(1.5) * e(0.1), rtol=1e-12)


def test_seq_mis_drops_a_whole_sequence_by_its_geometric_mean_weight():
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # Row 0: log weights 0.3 and 1.5 -> geometric mean e^0.9 = 2.46 > 2: the whole row is dropped, although
    # its first token alone would pass. Row 1: 0.3 and -0.3 -> mean e^0 = 1: kept, each token truncated at
    # is_cap as in tis (e^0.3 stays). The third column is padding (mask 0) and does not count in the mean.
    behaviour = t([[-1.3, -2.5, -9.0], [-1.3, -0.7, -9.0]])
    prox = t([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    logp = prox.clone().requires_grad_(True)
    adv = t([[1.0, 1.0, 1.0], [2.0, -1.0, 1.0]])
    x = LossInputs(mask=t([[1, 1, 0], [1, 1, 0]]), logprobs=logp, behaviour_logprobs=behaviour, advantages=adv,
                   proximal_logprobs=prox)
    loss, m = LOSSES.get("seq_mis")(x, LossSpec(is_cap=2.0))
    np.testing.assert_allclose((loss * x.mask).detach().numpy(), [[0.0, 0.0, 0.0], [-2.0 * e(0.3), e(-0.3), 0.0]],
                               rtol=1e-12)
    np.testing.assert_array_equal(m["is_masked"].numpy(), [[1, 1, 1], [0, 0, 0]])
    (grad,) = torch.autograd.grad((loss * x.mask).sum(), logp)
    np.testing.assert_allclose(grad.numpy(), [[0.0, 0.0, 0.0], [-2.0 * e(0.3), e(-0.3), 0.0]], rtol=1e-12)


def test_cispo_keeps_every_tokens_gradient_with_a_clipped_weight():
    old = [-1.0] * 4
    logp = [-1.0 + 0.5, -1.0 - 0.5, -1.0 + 0.1, -1.0 + 0.5]  # ratio 1.649, 0.607, 1.105, 1.649
    adv = [1.0, -1.0, 2.0, -1.0]
    loss, grad, m = loss_and_grad("cispo", off_policy_inputs(logp, old, adv), LossSpec(clip_eps=0.2, clip_eps_high=0.3))
    w_t = np.array([1.3, 0.8, e(0.1), 1.3])
    np.testing.assert_allclose(loss, -w_t * np.array(adv), rtol=1e-12)
    # Unlike ppo_clip, token 0 (A > 0, ratio above the range) and token 1 (A < 0, below it) keep a gradient.
    np.testing.assert_allclose(grad, -w_t * np.array(adv), rtol=1e-12)
    _, ppo_grad, _ = loss_and_grad("ppo_clip", off_policy_inputs(logp, old, adv), LossSpec(clip_eps=0.2, clip_eps_high=0.3))
    assert ppo_grad[0] == 0.0 and ppo_grad[1] == 0.0 and grad[0] != 0.0 and grad[1] != 0.0
    np.testing.assert_array_equal(m["clip_frac"][0].numpy(), [1, 1, 0, 1])


def test_is_band_must_hold_one(tmp_path):
    from cluster.config import ConfigError, load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: /m}\ndata: {train_path: a, eval_path: b}\n")
    assert load_config(recipe, ["algorithm.loss=icepop", "algorithm.is_band=[0.2, 5]"]).algorithm.is_band == (0.2, 5.0)
    with pytest.raises(ConfigError, match=r"algorithm.is_band=\[1.2, 5.0\]: the band .* must hold 1"):
        load_config(recipe, ["algorithm.is_band=[1.2, 5]"])


# ---- token prioritisation (D3S) ----

def test_token_prioritisation_keeps_the_largest_advantage_times_entropy_at_the_same_total_weight():
    from trainer.losses import prioritise_tokens

    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.float64)
    adv = torch.tensor([[0, 1.0, 1.0, 1.0, 0], [0, -2.0, -2.0, -2.0, -2.0]], dtype=torch.float64)
    ent = torch.tensor([[9, 0.1, 0.5, 0.3, 9], [9, 0.2, 0.05, 0.4, 0.1]], dtype=torch.float64)
    weights = mask / 7
    kept = prioritise_tokens(weights, LossInputs(mask=mask, advantages=adv, entropy=ent), keep_frac=0.5)
    # |A| x H on the 7 response tokens: .1 .5 .3 | .4 .1 .8 .2 -> the top ceil(3.5) = 4: .8 .5 .4 .3
    assert kept.nonzero().tolist() == [[0, 2], [0, 3], [1, 1], [1, 3]]
    assert torch.allclose(kept[kept > 0], torch.full((4,), 1 / 4, dtype=torch.float64))
    assert float(kept.sum()) == pytest.approx(float(weights.sum()))  # prompt/padding tokens (H = 9) never count
    assert prioritise_tokens(weights, LossInputs(mask=mask, advantages=adv, entropy=ent), 1.0) is weights
