"""Per-prompt statistics across epochs and the step's share of groups with signal
(cluster/rl/prompt_stats.py), on constructed groups with known answers."""

import json

import numpy as np
import pytest

from cluster.rl.experience import make_experience, moving_groups
from cluster.rl.prompt_stats import PromptStats, signal_row
from tests.cluster.rl.test_experience import FakeLearners, cfg, group
from tests.cluster.rl.test_scheduler import score, scheduler


def test_each_prompt_counts_its_attempts_answers_and_last_step_across_epochs():
    stats = PromptStats()
    stats.observe(group(1, [1.0, 0.0, 0.0], [1, 1, 1]), step=1)  # prompt 1, first epoch: 1 of 3
    stats.observe(group(2, [0.0, 0.0, 0.0], [1, 1, 1]), step=1)
    stats.observe(group(1, [1.0, 1.0, 0.0], [1, 1, 1]), step=7)  # prompt 1 again: 2 of 3
    one, two = stats.get(1), stats.get(2)
    assert (one.attempts, one.correct, one.last_step) == (6, 3, 7)
    assert (one.last_attempts, one.last_correct) == (3, 2)  # the latest group alone
    assert one.reward_sum == pytest.approx(3.0)
    assert (two.attempts, two.correct, two.last_step) == (3, 0, 1)
    assert stats.get(3) is None  # never scored


def test_the_statistics_survive_a_checkpoint_as_json():
    stats = PromptStats()
    stats.observe(group(4, [1.0, 0.25, 0.0], [1, 1, 1]), step=3)
    restored = PromptStats()
    restored.restore(json.loads(json.dumps(stats.state())))
    assert restored.records == stats.records and restored.get(4).reward_sum == pytest.approx(1.25)
    older = PromptStats()  # a checkpoint from before the latest group was kept: the prompt counts as unseen
    older.restore({"4": [3, 1, 1.25, 3]})
    assert (older.get(4).attempts, older.get(4).last_attempts) == (3, 0)


def test_a_group_of_two_prompts_is_refused():
    g = group(1, [1.0, 0.0], [1, 1])
    mixed = type(g)(1, (g.rollouts[0], g.rollouts[1].__class__(**{**vars(g.rollouts[1]), "prompt_id": 9})), g.rewards)
    with pytest.raises(ValueError, match=r"group 1 mixes prompts \[1, 9\]"):
        PromptStats().observe(mixed, step=1)


def test_a_tied_group_has_no_signal_even_with_rewards_that_do_not_average_exactly():
    # 0.1 + 0.1 + 0.1 over 3 is not 0.1 in floats: the advantages are ~1e-11, not 0.
    groups = [group(1, [0.1, 0.1, 0.1], [2, 2, 2]), group(2, [1.0, 0.0, 0.0], [2, 2, 2]),
              group(3, [1.1, 1.1, 1.1], [2, 2, 2]), group(4, [0.0, 0.5, 0.0], [2, 2, 2])]
    metrics = make_experience(cfg(), FakeLearners(0), None).make(groups).metrics
    assert metrics["moving_groups"] == [False, True, False, True]  # groups 2 and 4


def test_moving_groups_counts_groups_with_any_nonzero_row():
    adv = np.zeros((7, 4))
    adv[1, 2] = 0.3  # group 0 (rows 0-1)
    adv[5, 0] = 1e-9  # group 2 (rows 4-6): below the tolerance, tied
    adv[6, 3] = -2.0  # ... and a real one: it moves
    assert moving_groups(adv, [2, 2, 3]) == [True, False, True]


def test_the_signal_row_counts_filtered_groups_as_spent_without_signal():
    groups = [group(g, [1.0, 0.0], [1, 1]) for g in range(6)]  # 6 trained groups of 2
    moving = [True, True, False, True, True, False]
    row = signal_row(groups, moving, filtered=2, group_size=2)
    assert row["effective_group_frac"] == pytest.approx(4 / 8)
    assert row["effective_sample_frac"] == pytest.approx(8 / 16)
    assert row["rollouts_per_effective_group"] == pytest.approx((12 + 4) / 4)
    assert signal_row(groups, None, filtered=0, group_size=2) == {}  # online DPO: no group advantages
    assert "rollouts_per_effective_group" not in signal_row(groups, [False] * 6, filtered=0, group_size=2)
    with pytest.raises(ValueError, match="5 flags for 6 groups"):
        signal_row(groups, moving[:5], filtered=0, group_size=2)


def test_groups_of_different_sizes_weigh_the_sample_fraction_by_their_rollouts():
    groups = [group(1, [1.0] * 2, [1] * 2), group(2, [1.0, 0.0] * 5, [1] * 10), group(3, [0.0] * 4, [1] * 4)]
    row = signal_row(groups, [False, True, False], filtered=0, group_size=4)
    assert row["effective_group_frac"] == pytest.approx(1 / 3)  # one group of three moves...
    assert row["effective_sample_frac"] == pytest.approx(10 / 16)  # ... with 10 of the 16 rollouts
    assert row["rollouts_per_effective_group"] == pytest.approx(16)
    # Down-sampled from 12 each: the rollouts generated count, not the 16 trained
    assert signal_row(groups, [False, True, False], 0, 12, downsampled=True)["rollouts_per_effective_group"] == 36


def test_the_scheduler_hands_over_every_completed_group_filtered_ones_too():
    s = scheduler(0, dynamic_sampling=True)
    s.steps_to_start(0)
    for gid in (1, 2, 3):
        s.expect(gid)
    score(s, 1, [0], [1.0, 1.0])  # tied: filtered
    score(s, 2, [0], [0.0, 1.0])
    score(s, 3, [0], [1.0, 0.0])
    assert [g.group_id for g in s.take_completed()] == [1, 2, 3]
    assert s.take_completed() == []  # drained
    assert [g.group_id for g in s.take(0)] == [2, 3] and s.filtered_for_last_take == 1
