"""Each advantage estimator against an independent transcription of its paper's formula."""

import numpy as np
import pytest

from trainer.advantages import ADVANTAGES, AdvantageInputs, AdvantageOptions

SCORES = np.array([1.0, 0.0, 0.0, 1.0, 0.2, 0.6, 0.6, 0.6])
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
# Rows of different response lengths: prompt tokens (0) then response tokens (1), then padding (0).
MASK = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 1], [0, 1, 0, 0, 0],
                 [0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=np.float32)


def run(name, **kw):
    opts = kw.pop("opts", AdvantageOptions())
    return ADVANTAGES.get(name)(AdvantageInputs(scores=SCORES, groups=GROUPS, mask=MASK, **kw), opts)


def per_sample(adv):
    """The single value each row carries on its response tokens (and zeros elsewhere)."""
    vals = []
    for row, m in zip(adv, MASK):
        assert np.all(row[m == 0] == 0)
        assert np.allclose(row[m == 1], row[m == 1][0])
        vals.append(row[m == 1][0])
    return np.array(vals)


def test_grpo_by_hand():
    adv, returns = run("grpo")
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: mean 0.5, std sqrt(0.12/3) = 0.2
    s0 = np.sqrt(1 / 3)
    expected = [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, -0.3 / 0.2, 0.1 / 0.2, 0.1 / 0.2, 0.1 / 0.2]
    np.testing.assert_allclose(per_sample(adv), expected, rtol=1e-5)
    assert returns is None


def test_grpo_batch_std_and_dr_grpo():
    batch_std = np.std(SCORES, ddof=1)
    adv, _ = run("grpo", opts=AdvantageOptions(std_scope="batch"))
    np.testing.assert_allclose(per_sample(adv), [0.5, -0.5, -0.5, 0.5, -0.3, 0.1, 0.1, 0.1] / batch_std, rtol=1e-5)
    adv, _ = run("grpo", opts=AdvantageOptions(normalize_std=False))
    np.testing.assert_allclose(per_sample(adv), [0.5, -0.5, -0.5, 0.5, -0.3, 0.1, 0.1, 0.1], atol=1e-6)


def test_grpo_tied_group_has_no_signal():
    x = AdvantageInputs(scores=np.array([1.0, 1.0]), groups=np.array([0, 0]), mask=np.ones((2, 3), dtype=np.float32))
    adv, _ = ADVANTAGES.get("grpo")(x, AdvantageOptions())
    assert np.all(adv == 0)


def test_rloo_leave_one_out():
    adv, _ = run("rloo")
    expected = []
    for i, s in enumerate(SCORES):
        others = [SCORES[j] for j in range(8) if GROUPS[j] == GROUPS[i] and j != i]
        expected.append(s - np.mean(others))
    np.testing.assert_allclose(per_sample(adv), expected, atol=1e-6)


def test_token_rewards_enter_outcome_estimators_as_a_sum():
    tr = np.where(MASK == 1, -0.05, 0.0)  # e.g. a KL penalty placed in the reward
    adv, _ = run("rloo", token_rewards=tr)
    shaped = SCORES - 0.05 * MASK.sum(axis=1)
    expected = [s - np.mean([shaped[j] for j in range(8) if GROUPS[j] == GROUPS[i] and j != i])
                for i, s in enumerate(shaped)]
    np.testing.assert_allclose(per_sample(adv), expected, atol=1e-6)


def reinforce_pp_reference(scores, mask, token_rewards, gamma, baseline):
    """REINFORCE++ written out directly: loops over rows and tokens."""
    scores = scores.copy()
    if baseline:
        for g in np.unique(GROUPS):
            scores[GROUPS == g] -= scores[GROUPS == g].mean()
    out = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        idx = np.nonzero(mask[b])[0]
        r = [token_rewards[b, t] for t in idx]
        r[-1] += scores[b]
        g = 0.0
        for k in reversed(range(len(idx))):
            g = r[k] + gamma * g
            out[b, idx[k]] = g
    vals = out[mask == 1]
    out[mask == 1] = (vals - vals.mean()) / (vals.std(ddof=1) + 1e-6)
    return out


@pytest.mark.parametrize("baseline", [True, False])
def test_reinforce_pp(baseline):
    tr = np.where(MASK == 1, np.linspace(-0.1, 0.1, MASK.size).reshape(MASK.shape), 0.0)
    opts = AdvantageOptions(gamma=0.9, group_baseline=baseline)
    adv, _ = run("reinforce_pp", token_rewards=tr, opts=opts)
    np.testing.assert_allclose(adv, reinforce_pp_reference(SCORES, MASK, tr, 0.9, baseline), atol=1e-5)
    assert abs(adv[MASK == 1].mean()) < 1e-6  # normalised over the whole batch


def gae_reference(scores, mask, values, gamma, lam):
    adv, ret = np.zeros(mask.shape), np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        idx = np.nonzero(mask[b])[0]
        v = [values[b, t] for t in idx] + [0.0]
        r = [0.0] * len(idx)
        r[-1] = scores[b]
        a = 0.0
        for k in reversed(range(len(idx))):
            delta = r[k] + gamma * v[k + 1] - v[k]
            a = delta + gamma * lam * a
            adv[b, idx[k]] = a
            ret[b, idx[k]] = a + v[k]
    return adv, ret


def test_gae_matches_the_recursion():
    values = np.random.default_rng(0).normal(size=MASK.shape) * MASK
    opts = AdvantageOptions(gamma=0.95, lam=0.9, normalize_std=False)
    adv, returns = run("gae", values=values, opts=opts)
    want_adv, want_ret = gae_reference(SCORES, MASK, values, 0.95, 0.9)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5)
    np.testing.assert_allclose(returns, want_ret, atol=1e-5)
    whitened, _ = run("gae", values=values, opts=AdvantageOptions(gamma=0.95, lam=0.9))
    v = want_adv[MASK == 1]
    np.testing.assert_allclose(whitened[MASK == 1], (v - v.mean()) / (v.std(ddof=1) + 1e-6), atol=1e-5)


def test_gae_needs_values():
    with pytest.raises(ValueError, match="critic values"):
        run("gae")


def test_group_of_one_is_an_error():
    x = AdvantageInputs(scores=np.array([1.0, 0.0]), groups=np.array([0, 1]), mask=np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        ADVANTAGES.get("grpo")(x, AdvantageOptions())


def test_gae_masks_values_itself():
    # A critic's values on prompt and padding positions are whatever its head outputs there:
    # the estimator must ignore them (the controller passes them unmasked).
    rng = np.random.default_rng(1)
    values = rng.normal(size=MASK.shape)  # nonzero everywhere, prompt and padding included
    opts = AdvantageOptions(gamma=0.95, lam=0.9, normalize_std=False)
    adv, returns = run("gae", values=values, opts=opts)
    want_adv, want_ret = gae_reference(SCORES, MASK, values * MASK, 0.95, 0.9)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5)
    np.testing.assert_allclose(returns, want_ret, atol=1e-5)
    assert np.all(adv[MASK == 0] == 0) and np.all(returns[MASK == 0] == 0)


@pytest.mark.parametrize("name", ["gae", "reinforce_pp"])
def test_observations_between_turns_do_not_change_the_token_level_estimators(name):
    """A multi-turn row (model tokens, an observation that never trains, model tokens) gets, on
    its model tokens, exactly the advantages of the same tokens side by side: the outcome and a
    per-turn reward reach the first turn, and the critic's value bootstraps across the gap."""
    rng = np.random.default_rng(0)
    turns = [1, 1, 1, 0, 0, 0, 1, 1]  # a 3-token turn, a 3-token observation, a 2-token turn
    model = [i for i, t in enumerate(turns) if t]
    gapped = np.array([[0.0, *turns, 0.0], [0.0, *([1.0] * 5), 0.0, 0.0, 0.0, 0.0]])  # prompt, trajectory, pad
    side_by_side = np.array([[0.0, *([1.0] * 5), 0, 0, 0, 0], [0.0, *([1.0] * 5), 0, 0, 0, 0]])
    scores = np.array([1.0, -0.5])
    values = rng.normal(size=gapped.shape)
    rewards_gapped, rewards_side = np.zeros_like(gapped), np.zeros_like(gapped)
    rewards_gapped[0, 1 + 2] = rewards_side[0, 1 + 2] = 0.3  # the first turn's reward on its last token
    values_side = values.copy()
    values_side[0, 1:6] = values[0, [1 + i for i in model]]
    opts = AdvantageOptions(gamma=0.9, lam=0.8, normalize_std=False, group_baseline=False)
    fn = ADVANTAGES.get(name)
    a, ret_a = fn(AdvantageInputs(scores=scores, groups=np.array([0, 0]), mask=gapped, token_rewards=rewards_gapped,
                                  values=values), opts)
    b, ret_b = fn(AdvantageInputs(scores=scores, groups=np.array([0, 0]), mask=side_by_side,
                                  token_rewards=rewards_side, values=values_side), opts)
    at = [1 + i for i in model]
    assert np.allclose(a[0, at], b[0, 1:6]) and np.allclose(a[1], b[1])
    assert np.all(a[0, [4, 5, 6]] == 0)  # nothing on the observation
    if ret_a is not None:
        assert np.allclose(ret_a[0, at], ret_b[0, 1:6])


# ---- noisy verifiers (noisy_backward, noisy_forward): expectations over the noise channel ----

CLEAN = np.array([1.0, 0.0, 0.0, 1.0, 0.0])  # one group's clean outcomes
FP, FN = 0.2, 0.3  # P(0 -> 1), P(1 -> 0)


def expected_advantage(name, opts):
    """E[advantage per sample] over every noisy outcome of CLEAN, each with its probability."""
    import itertools

    mask, total = np.ones((len(CLEAN), 1), dtype=np.float32), np.zeros(len(CLEAN))
    for flips in itertools.product([0, 1], repeat=len(CLEAN)):
        flips = np.array(flips)
        p_flip = np.where(CLEAN == 1, FN, FP)
        prob = np.prod(np.where(flips == 1, p_flip, 1 - p_flip))
        observed = np.where(flips == 1, 1 - CLEAN, CLEAN)
        adv, _ = ADVANTAGES.get(name)(AdvantageInputs(scores=observed, groups=np.zeros(len(CLEAN)), mask=mask), opts)
        total += prob * adv[:, 0].astype(np.float64)
    return total


def test_uncorrected_noise_shrinks_the_gradient_by_one_minus_both_rates():
    dr_grpo = expected_advantage("grpo", AdvantageOptions(normalize_std=False))
    np.testing.assert_allclose(dr_grpo, (1 - FP - FN) * (CLEAN - CLEAN.mean()), atol=1e-6)


def test_the_backward_correction_gives_the_clean_advantage_in_expectation():
    opts = AdvantageOptions(fp_rate=FP, fn_rate=FN)
    np.testing.assert_allclose(expected_advantage("noisy_backward", opts), CLEAN - CLEAN.mean(), atol=1e-6)
    adv, _ = ADVANTAGES.get("noisy_backward")(AdvantageInputs(scores=CLEAN, groups=np.zeros(5), mask=np.ones((5, 1))),
                                              opts)
    np.testing.assert_allclose(adv[:, 0], (CLEAN - CLEAN.mean()) / (1 - FP - FN), rtol=1e-6)  # one draw: rescaled


def test_the_forward_weights_are_zero_for_correct_answers_in_expectation():
    # E[w | correct] = (1 - FN) FN + FN (FN - 1) = 0; E[w | wrong] = FP FN + (1 - FP)(FN - 1) = -(1 - FP - FN)
    expected = expected_advantage("noisy_forward", AdvantageOptions(fp_rate=FP, fn_rate=FN))
    np.testing.assert_allclose(expected, (1 - FP - FN) * (CLEAN - 1), atol=1e-6)
    adv, _ = ADVANTAGES.get("noisy_forward")(AdvantageInputs(scores=np.array([1.0, 0.0]), groups=np.zeros(2),
                                                             mask=np.ones((2, 1))), AdvantageOptions(fn_rate=FN))
    np.testing.assert_allclose(adv[:, 0], [FN, FN - 1], rtol=1e-6)


def test_the_noisy_estimators_refuse_rewards_that_are_not_binary():
    for name in ("noisy_backward", "noisy_forward"):
        with pytest.raises(ValueError, match=rf"advantage '{name}' needs binary rewards, 0 or 1 \(row 4 scored 0.2\)"):
            run(name)
