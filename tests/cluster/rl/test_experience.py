import numpy as np
import pytest

from cluster.config import AlgorithmConfig
from cluster.rl.experience import KLController, explained_variance
from reward.shaping import overlong_penalty


def test_overlong_penalty_is_linear_in_the_buffer():
    lengths = np.array([10, 12, 13, 14, 16])
    np.testing.assert_allclose(overlong_penalty(lengths, max_len=16, buffer=4, factor=1.0),
                               [0.0, 0.0, -0.25, -0.5, -1.0])
    assert np.all(overlong_penalty(lengths, 16, 0, 1.0) == 0)


def test_adaptive_kl_moves_towards_target_and_fixed_stays():
    adaptive = KLController(AlgorithmConfig(kl_coef=0.1, kl_target=0.02, kl_horizon=10))
    adaptive.update(0.04)  # twice the target: error clipped at +0.2, times 1/10
    assert adaptive.coef == pytest.approx(0.1 * 1.02)
    adaptive.update(0.0)  # far below: -0.2 / 10
    assert adaptive.coef == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = KLController(AlgorithmConfig(kl_coef=0.1))
    fixed.update(5.0)
    assert fixed.coef == 0.1


def test_explained_variance():
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float32)
    returns = np.array([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(returns, np.zeros_like(returns) + 3.0, mask) == pytest.approx(0.0)


# ---- the two algorithm families, with fake learners (no Ray) ----

from cluster.config import Config  # noqa: E402
from cluster.rl.experience import GroupExperience, PairExperience, make_experience  # noqa: E402
from cluster.rl.gate import Group  # noqa: E402
from reward.types import RewardResult  # noqa: E402
from rollout.types import Rollout  # noqa: E402


class FakeLearners:
    """Stands in for the LearnerGroup (what experience reads of it): reference logprobs and values."""

    def __init__(self, fill: float):
        self.fill, self.calls = fill, 0

    def reference_logprobs(self, batch, temperature):
        self.calls += 1
        return np.full(batch.loss_mask.shape, self.fill, dtype=np.float32)

    def values(self, batch):
        return np.full(batch.loss_mask.shape, self.fill, dtype=np.float32)


def cfg(*overrides: str) -> Config:
    base = {"model": {"path": "/m"}, "data": {"train_path": "a", "eval_path": "b"},
            "controller": {"prompts_per_step": 2}, "algorithm": {"group_size": 3}}
    for o in overrides:
        key, value = o.split("=")
        section, field = key.split(".")
        base.setdefault(section, {})[field] = value
    return Config(**base)


def group(gid: int, rewards: list[float], lengths: list[int]) -> Group:
    rollouts = tuple(Rollout(group_id=gid, prompt_id=gid, sample_index=k, prompt="p", answer="a", prompt_ids=(1, 2),
                             response_ids=(7,) * n, response_text="", logprobs=(-0.5,) * n, versions=(0,) * n,
                             finish_reason="stop") for k, n in enumerate(lengths))
    scores = tuple(RewardResult(group_id=gid, sample_index=k, reward=r, correct=r > 0.5, format_ok=True)
                   for k, r in enumerate(rewards))
    return Group(gid, rollouts, scores)


def test_the_family_is_picked_once_from_the_loss_kind():
    assert type(make_experience(cfg(), FakeLearners(0), None)) is GroupExperience
    assert type(make_experience(cfg("algorithm.loss=dpo"), FakeLearners(0), None)) is PairExperience


def test_group_experience_puts_each_samples_advantage_on_its_own_row():
    groups = [group(1, [1.0, 0.0, 0.0], [1, 2, 3]), group(2, [0.0, 0.0, 1.0], [3, 1, 2])]
    batches = make_experience(cfg(), FakeLearners(0), None).make(groups)
    b = batches.policy
    # GRPO by hand: group (1, 0, 0) has mean 1/3 and std sqrt(1/3): (1 - 1/3) / 0.57735 = 1.1547, -0.57735.
    want = [1.1547, -0.57735, -0.57735, -0.57735, -0.57735, 1.1547]
    got = [b.advantages[i][b.loss_mask[i] == 1] for i in range(6)]
    for row, (adv, n) in enumerate(zip(got, [1, 2, 3, 3, 1, 2])):
        assert len(adv) == n  # the row is the sample of that length: no reordering
        np.testing.assert_allclose(adv, want[row], atol=1e-4)
    assert batches.critic is None and batches.metrics["score_mean"] == pytest.approx(2 / 6)


def test_the_verifier_error_rates_reach_the_noisy_estimators():
    groups = [group(1, [1.0, 0.0, 0.0], [1, 1, 1])]
    b = make_experience(cfg("algorithm.advantage=noisy_forward", "reward.format_weight=0",
                            "algorithm.verifier_fn_rate=0.25"), FakeLearners(0), None).make(groups).policy
    np.testing.assert_allclose(b.advantages[b.loss_mask == 1], [0.25, -0.75, -0.75])  # fn_rate, fn_rate - 1
    b = make_experience(cfg("algorithm.advantage=noisy_backward", "reward.format_weight=0",
                            "algorithm.verifier_fp_rate=0.1", "algorithm.verifier_fn_rate=0.3"),
                        FakeLearners(0), None).make(groups).policy
    np.testing.assert_allclose(b.advantages[b.loss_mask == 1], np.array([2, -1, -1]) / 3 / 0.6, rtol=1e-6)


def test_token_prioritisation_reaches_the_loss_spec_of_a_policy_loss_only():
    assert make_experience(cfg("algorithm.token_keep_frac=0.3"), FakeLearners(0), None).policy_spec().token_keep_frac \
        == 0.3
    with pytest.raises(ValueError, match="token_keep_frac 0.3 ranks tokens by .advantage. x entropy: it goes with"):
        cfg("algorithm.token_keep_frac=0.3", "algorithm.loss=dpo")


def test_group_experience_with_a_critic_returns_its_targets():
    c = cfg("algorithm.advantage=gae", "critic.enabled=true", "algorithm.normalize_std=false")
    batches = make_experience(c, FakeLearners(0), FakeLearners(0.25)).make([group(1, [1.0, 0.0, 0.0], [2, 1, 1]),
                                                                             group(2, [0.0, 1.0, 0.0], [1, 1, 1])])
    critic = batches.critic
    # gamma = lambda = 1: the return of every response token is the sample's score.
    for i, score in enumerate([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]):
        np.testing.assert_allclose(critic.returns[i][critic.loss_mask[i] == 1], score)
        np.testing.assert_allclose(batches.policy.advantages[i][critic.loss_mask[i] == 1], score - 0.25)
    assert np.all(critic.old_values[critic.loss_mask == 0] == 0)


def test_pair_experience_pairs_best_and_worst_and_fills_the_step():
    ref = FakeLearners(-0.75)
    maker = make_experience(cfg("algorithm.loss=dpo"), ref, None)
    batches = maker.make([group(1, [0.2, 0.9, 0.1], [1, 2, 3]), group(2, [0.5, 0.5, 0.5], [1, 1, 1])])
    b = batches.policy
    assert batches.metrics == {"pairs": 1, "pair_reward_gap": pytest.approx(0.8)}
    assert len(b) == 4  # rows_per_step: one pair per prompt, the tied group's pair is filler
    assert [int(b.loss_mask[i].sum()) for i in range(4)] == [2, 3, 0, 0]  # chosen = sample 1, rejected = 2
    assert ref.calls == 1 and np.all(b.ref_logprobs == -0.75)
    weights = maker.weighted(b).loss_weights
    assert weights.sum() == pytest.approx(1.0) and weights[2:].sum() == 0
    assert maker.policy_spec().temperature == 1.0
    for part in make_experience(cfg("algorithm.loss=dpo", "trainer.updates_per_batch=2"), ref, None).split(4, 1):
        assert sorted(part.tolist()) in ([0, 1], [2, 3])  # a pair never splits


def test_a_pair_maker_with_nothing_to_learn_moves_nothing():
    batches = make_experience(cfg("algorithm.loss=simpo"), FakeLearners(0), None).make([group(1, [1, 1, 1], [1] * 3)])
    assert batches.policy is None and batches.metrics["pairs"] == 0


@pytest.mark.parametrize("loss,updates,proximal", [("ppo_clip", 1, False), ("ppo_clip", 2, True),
                                                   ("gspo", 2, True), ("tis", 2, False),
                                                   ("decoupled_ppo", 2, True)])
def test_the_learner_recomputes_pi_old_only_where_a_loss_reads_it(loss, updates, proximal):
    maker = make_experience(cfg(f"algorithm.loss={loss}", f"trainer.updates_per_batch={updates}",
                                "controller.prompts_per_step=4"), FakeLearners(0), None)
    assert maker.needs_proximal() is proximal
