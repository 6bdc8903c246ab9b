"""Rollout budgets and curricula (cluster/rl/budget.py) on constructed inputs with known optimal
answers: the knapsack against brute force, the curriculum against exhaustive search, and the
variable group sizes they deal through the scheduler and the gate."""

import itertools

import numpy as np
import pytest

from cluster.config import Config
from cluster.rl.budget import (BudgetOptions, Downsampler, RolloutPlanner, intermediate_curriculum, knapsack,
                               knapsack_budget, knapsack_value, max_variance, success_estimate, uniform_budget)
from cluster.rl.gate import StalenessGate
from cluster.rl.prompt_stats import PromptRecord, PromptStats
from cluster.rl.scheduler import LedgerError
from rollout.data import Prompt, PromptSource
from tests.cluster.rl.test_experience import group
from tests.cluster.rl.test_scheduler import rollout, score, scheduler


def test_the_task_value_matches_hand_computed_figures():
    # (1 - p^N - (1-p)^N) p (1-p)^2
    assert knapsack_value(2, 0.5) == pytest.approx(0.5 * 0.5 * 0.25)
    assert knapsack_value(3, 0.25) == pytest.approx((1 - 0.25 ** 3 - 0.75 ** 3) * 0.25 * 0.75 ** 2)
    assert knapsack_value(8, 0.0) == 0.0 and knapsack_value(8, 1.0) == 0.0  # all fail / all pass: no gradient


@pytest.mark.parametrize("seed", range(12))
def test_the_knapsack_matches_brute_force_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    items, lo, hi = int(rng.integers(2, 5)), int(rng.integers(1, 3)), int(rng.integers(4, 7))
    budget = int(rng.integers(items * lo, items * hi + 1))
    values = rng.random((items, hi - lo + 1))
    units = knapsack(values, lo, budget)
    feasible = [c for c in itertools.product(range(lo, hi + 1), repeat=items) if sum(c) == budget]
    best = max(sum(values[i, n - lo] for i, n in enumerate(c)) for c in feasible)
    assert sum(units) == budget and all(lo <= n <= hi for n in units)
    assert sum(values[i, n - lo] for i, n in enumerate(units)) == pytest.approx(best, abs=1e-12)


def test_knapsack_rl_moves_samples_from_solved_prompts_to_hard_ones():
    o = BudgetOptions(group_size=4, lo=2, hi=12)
    p = np.array([0.9, 0.1, 0.5, 0.9])  # solved, hard, intermediate, solved
    sizes = knapsack_budget(p, o)
    feasible = [c for c in itertools.product(range(2, 13), repeat=4) if sum(c) == 16]
    best = max(feasible, key=lambda c: sum(knapsack_value(n, pi) for n, pi in zip(c, p)))
    assert sizes == list(best) and sum(sizes) == 16
    assert sizes[0] == sizes[3] == 2 and sizes[1] > 4  # the solved prompts give theirs to the hard one
    assert uniform_budget(p, o) == [4] * 4


def test_unseen_prompts_keep_the_uniform_budget():
    # value(N, 0.5) gains 0.5^N x 1/8 per sample more: strictly concave, so the even split is the only optimum
    assert knapsack_budget(np.full(6, 0.5), BudgetOptions(group_size=8, lo=2, hi=32)) == [8] * 6


def test_an_impossible_budget_is_refused():
    with pytest.raises(ValueError, match="a budget of 3 cannot give 2 items 2 to 4 units each"):
        knapsack(np.ones((2, 3)), 2, 3)


def test_the_success_estimate_is_laplace_on_the_latest_group():
    assert success_estimate(None) == 0.5
    assert success_estimate(PromptRecord(attempts=20, correct=20, last_attempts=8, last_correct=3)) == 4 / 10


@pytest.mark.parametrize("seed", range(8))
def test_the_curriculum_picks_the_candidates_nearest_one_half_as_exhaustive_search(seed):
    p = np.random.default_rng(seed).random(7)
    chosen = intermediate_curriculum(p, 3)
    best = min(itertools.combinations(range(7), 3), key=lambda c: sum(abs(p[i] - 0.5) for i in c))
    assert chosen == sorted(best)
    assert intermediate_curriculum(np.array([0.9, 0.5, 0.1, 0.45, 0.6]), 2) == [1, 3]
    assert intermediate_curriculum(np.full(4, 0.5), 2) == [0, 1]  # ties: the order the passes dealt them


def test_the_planner_deals_a_curriculum_and_the_budget_at_an_equal_total():
    prompts = [Prompt(i, f"q{i}", "a") for i in range(40)]
    stats = PromptStats()
    for i in range(40):  # every prompt seen once: i % 4 correct of 4
        stats.observe(group(i, [1.0] * (i % 4) + [0.0] * (4 - i % 4), [1] * 4), step=1)
    planner = RolloutPlanner(PromptSource(prompts, seed=0), stats, "intermediate", 3, "knapsack",
                             BudgetOptions(group_size=4, lo=2, hi=16))
    dealt = planner.next(5)
    assert sum(size for _, size in dealt) == 20  # the same rollouts as 5 uniform groups of 4
    # of 15 candidates, the 5 nearest 0.5: 2 of 4 correct has the estimate (2 + 1) / 6 = 0.5
    assert all(p.id % 4 == 2 for p, _ in dealt)
    assert planner.take_row() == {"prompts_skipped": 10, "group_size_min": 4, "group_size_max": 4}
    plain = RolloutPlanner(PromptSource(prompts, seed=0), stats, "none", 3, "uniform", BudgetOptions(4, 2, 16))
    assert [p.id for p, _ in plain.next(5)] == [p.id for p in PromptSource(prompts, seed=0).next_batch(5)]
    assert plain.take_row() == {}


def test_groups_of_dealt_sizes_assemble_and_pass_the_gate():
    s = scheduler(0, per_step=2, size=4)
    s.steps_to_start(0)
    s.expect(1, 2)
    s.expect(2, 6)
    assert score(s, 1, [0], [1.0, 0.0]).rollouts[-1].sample_index == 1  # complete at 2
    assert score(s, 2, [0], [0.0] * 5) is None  # 5 of 6
    rewards = group(2, [1.0] * 7, [1] * 7).rewards
    with pytest.raises(LedgerError, match=r"sample 2/6 scored twice or out of range \(group size 6\)"):
        s.scored(rollout(2, 6, [0]), rewards[6])
    s.scored(rollout(2, 5, [0]), rewards[5])
    assert [len(g.rollouts) for g in s.take(0)] == [2, 6]
    gate = StalenessGate(0, 4)
    g = group(7, [1.0, 0.0, 1.0], [1] * 3)
    assert gate.admit(list(g.rollouts), list(g.rewards), 0) == []  # 3 is not the group size: incomplete
    assert len(gate.admit(list(g.rollouts), list(g.rewards), 0, {7: 3})) == 1


def cfg(**algorithm) -> Config:
    return Config(model={"path": "/m"}, data={"train_path": "a", "eval_path": "b"},
                  algorithm={"group_size": 4, **algorithm})


def test_budget_settings_that_cannot_hold_are_refused_naming_the_fields():
    with pytest.raises(ValueError, match=r"budget_min \(6\) <= algorithm.group_size \(4\)"):
        cfg(rollout_budget="knapsack", budget_min=6)
    with pytest.raises(ValueError, match="rollout_budget 'knapsack' needs algorithm.budget_min >= 2"):
        cfg(rollout_budget="knapsack", budget_min=1)
    with pytest.raises(ValueError, match="controller.max_staleness 0 and algorithm.dynamic_sampling false"):
        cfg(rollout_budget="knapsack", dynamic_sampling=True)
    with pytest.raises(ValueError, match="unknown rollout budget 'greedy'; valid names: knapsack, uniform"):
        cfg(rollout_budget="greedy")
    with pytest.raises(ValueError, match="unknown curriculum 'easy'; valid names: intermediate, none"):
        cfg(curriculum="easy")
    assert cfg(rollout_budget="knapsack", curriculum="intermediate").algorithm.budget_max is None


@pytest.mark.parametrize("seed", range(12))
def test_max_variance_down_sampling_matches_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    n, keep = int(rng.integers(4, 9)), int(rng.integers(2, 4))
    rewards = rng.choice([0.0, 0.1, 1.0, 1.1], n) if seed % 2 else rng.random(n)  # ties, then distinct
    pick = max_variance(rewards, keep, group_id=seed)
    best = max(np.var(rewards[list(c)]) for c in itertools.combinations(range(n), keep))
    assert len(set(pick)) == keep and np.var(rewards[pick]) == pytest.approx(best, abs=1e-12)


def test_down_sampling_keeps_the_extremes_of_a_group_in_the_scheduler():
    s = scheduler(0, per_step=1, size=6, downsample=Downsampler("max_variance", 2))
    s.steps_to_start(0)
    s.expect(1)
    score(s, 1, [0, 0], [0.3, 1.0, 0.5, 0.0, 0.6, 0.7])  # two tokens per sample
    [g] = s.take(0)
    assert [r.sample_index for r in g.rollouts] == [1, 3] and [r.reward for r in g.rewards] == [1.0, 0.0]
    assert s.tokens["dropped:downsampled"] == 4 * 2 and s.take_dropped() == (0, 0, 8)
    assert [len(g.rollouts) for g in s.take_completed()] == [6]  # the statistics see every sample
    chosen = Downsampler("random", 3)(group(5, [0.0] * 6, [1] * 6))
    assert len({r.sample_index for r in chosen.rollouts}) == 3  # seeded by the group id: the same again
    assert chosen == Downsampler("random", 3)(group(5, [0.0] * 6, [1] * 6))


def test_down_sampling_settings_are_checked_and_shape_the_learners():
    from cluster.shapes import rows_per_step

    with pytest.raises(ValueError, match=r"downsample_keep \(4\) must be below algorithm.group_size \(4\)"):
        cfg(downsample_keep=4)
    with pytest.raises(ValueError, match="downsample_keep goes with algorithm.rollout_budget 'uniform'"):
        cfg(downsample_keep=2, rollout_budget="knapsack")
    with pytest.raises(ValueError, match="downsample_keep goes with"):
        cfg(downsample_keep=2, loss="dpo")
    with pytest.raises(ValueError, match="unknown down-sampling rule 'top'"):
        cfg(downsample_keep=2, downsample="top")
    assert rows_per_step(cfg(downsample_keep=2)) == 16 * 2 and rows_per_step(cfg()) == 16 * 4


@pytest.mark.parametrize("value", ["nonzero_groups", "nonzero_samples"])
def test_the_other_values_are_maximised_as_brute_force_finds(value):
    from cluster.rl.budget import VALUES

    assert VALUES["nonzero_groups"](2, 0.5) == pytest.approx(0.5)  # one of four outcomes ties each way
    assert VALUES["nonzero_samples"](3, 0.5) == pytest.approx(3 * 0.75)
    p = np.array([0.95, 0.05, 0.5, 0.3])
    sizes = knapsack_budget(p, BudgetOptions(group_size=4, lo=2, hi=10, value=value))
    feasible = [c for c in itertools.product(range(2, 11), repeat=4) if sum(c) == 16]
    best = max(sum(VALUES[value](n, pi) for n, pi in zip(c, p)) for c in feasible)
    assert sum(VALUES[value](n, pi) for n, pi in zip(sizes, p)) == pytest.approx(best, abs=1e-12)
    if value == "nonzero_samples":  # samples go where groups will differ anyway, not to the near-certain ones
        assert sizes[0] == sizes[1] == 2


def test_the_gate_refuses_a_group_down_sampled_to_another_size_than_dealt():
    class KeepsThree(Downsampler):  # a faulty rule: keeps 3 where the learners were shaped for 2
        def __call__(self, group):
            return type(group)(group.group_id, group.rollouts[:3], group.rewards[:3])

    s = scheduler(0, per_step=1, size=6, downsample=KeepsThree("max_variance", 2))
    s.steps_to_start(0)
    s.expect(1)
    score(s, 1, [0], [0.3, 1.0, 0.5, 0.0, 0.6, 0.7])
    with pytest.raises(AssertionError, match="the gate refused a group the scheduler found fresh"):
        s.take(0)
