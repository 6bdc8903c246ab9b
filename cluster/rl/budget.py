"""What each dispatch generates: which prompts (`algorithm.curriculum`) and how many samples
each (`algorithm.rollout_budget`), both rules in registries, both reading each prompt's
estimated success rate from PromptStats (cluster/rl/prompt_stats.py); and which of a complete
group's samples train (`algorithm.downsample_keep`, by the rule `algorithm.downsample`).

The estimate is the latest group's pass rate with Laplace's rule, (correct + 1) / (n + 2):
the policy moves, so the latest attempt (the previous epoch's, as Knapsack RL uses) says more
than the whole history, and a prompt never scored is 0.5 (the most uncertain).

Budgets: a dispatch of n prompts spends exactly n x algorithm.group_size rollouts whatever the
rule, so a step's rows stay what the learners were shaped for and arms compare at an equal
rollout budget. `knapsack` gives each prompt between budget_min and budget_max samples,
maximising a summed value by dynamic programming over the exact budget; the value
(`algorithm.budget_value`, VALUES) is Knapsack RL's (Li et al. 2025),
    knapsack_rl:     P(the group's rewards differ) x InfoGain(p) = (1 - p^N - (1 - p)^N) x p (1 - p)^2
(easy prompts get few samples, hard ones many), or what the step's signal counts:
    nonzero_groups:  1 - p^N - (1 - p)^N, the expected groups with a non-zero advantage
    nonzero_samples: N (1 - p^N - (1 - p)^N), the expected samples in such groups.

Down-sampling (PODS, Xu et al. 2025): generate group_size samples, train on downsample_keep of
them. `max_variance` keeps the subset whose rewards vary most (GRPO's advantages are an
increasing function of the reward within a group, so the subset of the most varied advantages
too): the optimum is always some k highest and keep - k lowest rewards (PODS, Lemma), so
keep + 1 candidates are compared, not every subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from cluster.rl.gate import Group
from cluster.rl.prompt_stats import PromptRecord, PromptStats
from rollout.data import Prompt, PromptSource
from rollout.registry import Registry


def success_estimate(record: Optional[PromptRecord]) -> float:
    """Laplace's rule on the latest group's outcome; 0.5 for a prompt never scored."""
    if record is None or not record.last_attempts:
        return 0.5
    return (record.last_correct + 1) / (record.last_attempts + 2)


def nonzero(n: np.ndarray | int, p: float) -> np.ndarray | float:
    """P(a group of n samples at success rate p has both outcomes): its advantages are not all zero."""
    return 1.0 - p ** n - (1.0 - p) ** n


def knapsack_value(n: np.ndarray | int, p: float) -> np.ndarray | float:
    """Knapsack RL's task value of n samples at success rate p (module doc)."""
    return nonzero(n, p) * p * (1.0 - p) ** 2


# algorithm.budget_value -> value(n samples, success rate p) (module doc)
VALUES: dict[str, Callable] = {"knapsack_rl": knapsack_value, "nonzero_groups": nonzero,
                               "nonzero_samples": lambda n, p: n * nonzero(n, p)}


def knapsack(values: np.ndarray, lo: int, budget: int) -> list[int]:
    """Exact-budget multiple-choice knapsack: values[i, c] is item i's value with lo + c units;
    returns each item's units, summing to `budget`, with the greatest total value (ties: the
    earliest choice found). Dynamic programming over the budget, O(items x budget x choices)."""
    items, choices = values.shape
    if not items * lo <= budget <= items * (lo + choices - 1):
        raise ValueError(f"a budget of {budget} cannot give {items} items {lo} to {lo + choices - 1} units each")
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    picks = np.zeros((items, budget + 1), dtype=np.int64)
    for i in range(items):
        new = np.full(budget + 1, -np.inf)
        for c in range(choices):
            units = lo + c
            cand = np.full(budget + 1, -np.inf)
            cand[units:] = best[: budget + 1 - units] + values[i, c]
            better = cand > new
            new[better], picks[i, better] = cand[better], c
        best = new
    units, left = [], budget
    for i in reversed(range(items)):
        c = int(picks[i, left])
        units.append(lo + c)
        left -= lo + c
    return units[::-1]


@dataclass(frozen=True)
class BudgetOptions:
    group_size: int  # the mean samples per prompt: a dispatch of n prompts spends n x this
    lo: int  # algorithm.budget_min
    hi: int  # algorithm.budget_max
    value: str = "knapsack_rl"  # algorithm.budget_value (VALUES)


def budget_options(a) -> BudgetOptions:
    """From the algorithm section (cluster/config.py: AlgorithmConfig); budget_max defaults to 4 x group_size."""
    return BudgetOptions(a.group_size, a.budget_min, a.budget_max or 4 * a.group_size, a.budget_value)


# rule(estimated success rates [n], options) -> samples per prompt (summing to n x group_size)
BUDGETS: Registry[Callable[[np.ndarray, BudgetOptions], list[int]]] = Registry("rollout budget", papers=True)
# rule(estimated success rates of the candidates [m], n) -> the indices of the n chosen
CURRICULA: Registry[Callable[[np.ndarray, int], list[int]]] = Registry("curriculum", papers=True)


@BUDGETS.register("uniform", "every prompt gets algorithm.group_size samples", options=BudgetOptions,
                  paper="Shao et al. 2024, DeepSeekMath (GRPO)")
def uniform_budget(p: np.ndarray, o: BudgetOptions) -> list[int]:
    return [o.group_size] * len(p)


@BUDGETS.register("knapsack", "budget_min to budget_max samples per prompt, maximising the summed "
                  "algorithm.budget_value at the same total (cluster/rl/budget.py)", options=BudgetOptions,
                  paper="Li et al. 2025, Knapsack RL: Unlocking Exploration of LLMs via Optimizing Budget Allocation")
def knapsack_budget(p: np.ndarray, o: BudgetOptions) -> list[int]:
    n = np.arange(o.lo, o.hi + 1)
    value = VALUES[o.value]
    return knapsack(np.stack([value(n, float(pi)) for pi in p]), o.lo, len(p) * o.group_size)


@CURRICULA.register("none", "the prompts in the order the shuffled passes deal them",
                    paper="Shao et al. 2024, DeepSeekMath (GRPO)")
def no_curriculum(p: np.ndarray, n: int) -> list[int]:
    return list(range(n))


@CURRICULA.register("intermediate", "of algorithm.curriculum_pool x n candidates, the n whose estimated success "
                    "rate is nearest 0.5 (the rest are skipped this pass)",
                    paper="Gao et al. 2025, Prompt Curriculum Learning for Efficient LLM Post-Training")
def intermediate_curriculum(p: np.ndarray, n: int) -> list[int]:
    # p(1 - p) peaks at 0.5, where a group's rewards differ most often; stable: ties keep the dealt order
    return sorted(np.argsort(np.abs(np.asarray(p) - 0.5), kind="stable")[:n].tolist())


# rule(a complete group's rewards [n], keep, group id) -> the indices of the `keep` samples that train
DOWNSAMPLERS: Registry[Callable[[np.ndarray, int, int], list[int]]] = Registry("down-sampling rule", papers=True)


@DOWNSAMPLERS.register("max_variance", "the subset whose rewards have the largest variance (cluster/rl/budget.py)",
                       paper="Xu et al. 2025, Not All Rollouts are Useful: Down-Sampling Rollouts in LLM RL (PODS)")
def max_variance(rewards: np.ndarray, keep: int, group_id: int) -> list[int]:
    order = np.argsort(rewards, kind="stable")
    n, best, best_var = len(rewards), None, -1.0
    for high in range(keep + 1):  # `high` highest rewards and keep - high lowest
        pick = np.concatenate([order[: keep - high], order[n - high:]])
        var = float(np.var(rewards[pick]))
        if var > best_var + 1e-12:
            best, best_var = pick, var
    return sorted(best.tolist())


@DOWNSAMPLERS.register("random", "a uniformly random subset (seeded by the group id): PODS's control",
                       paper="Xu et al. 2025, Not All Rollouts are Useful: Down-Sampling Rollouts in LLM RL (PODS)")
def random_subset(rewards: np.ndarray, keep: int, group_id: int) -> list[int]:
    return sorted(np.random.default_rng(group_id).choice(len(rewards), keep, replace=False).tolist())


class Downsampler:
    """A complete group -> the group of its `keep` samples that train, by the rule; each keeps
    its sample index (and so its seed)."""

    def __init__(self, rule: str, keep: int):
        self.rule, self.keep = DOWNSAMPLERS.get(rule), keep

    def kept(self, size: int) -> int:
        """How many samples of a group of `size` train."""
        return min(size, self.keep)

    def __call__(self, group: Group) -> Group:
        if len(group.rollouts) <= self.keep:
            return group
        rewards = np.array([r.reward for r in group.rewards], dtype=np.float64)
        pick = self.rule(rewards, self.keep, group.group_id)
        return Group(group.group_id, tuple(group.rollouts[i] for i in pick), tuple(group.rewards[i] for i in pick))


class RolloutPlanner:
    """Deals the prompts of each dispatch and their group sizes from the rules above."""

    def __init__(self, source: PromptSource, stats: PromptStats, curriculum: str, pool: int, budget: str,
                 options: BudgetOptions):
        self.source, self.stats, self.pool, self.options = source, stats, pool, options
        self.curriculum, self.budget = CURRICULA.get(curriculum), BUDGETS.get(budget)
        self.pooled, self.varies = curriculum != "none", budget != "uniform"
        self.skipped = 0  # prompts a curriculum passed over since the last take_row
        self.sizes: list[int] = []  # group sizes dealt since the last take_row

    def next(self, n: int) -> list[tuple[Prompt, int]]:
        if n <= 0:
            return []
        candidates = self.source.next_batch(n * self.pool if self.pooled else n)
        p = np.array([success_estimate(self.stats.get(c.id)) for c in candidates])
        picked = self.curriculum(p, n)
        self.skipped += len(candidates) - len(picked)
        sizes = self.budget(p[picked], self.options)
        self.sizes += sizes
        return [(candidates[i], size) for i, size in zip(picked, sizes)]

    def take_row(self) -> dict:
        """The step's metrics: prompts skipped by the curriculum, the spread of group sizes."""
        row = {"prompts_skipped": self.skipped} if self.pooled else {}
        if self.sizes and self.varies:
            row |= {"group_size_min": min(self.sizes), "group_size_max": max(self.sizes)}
        self.skipped, self.sizes = 0, []
        return row
