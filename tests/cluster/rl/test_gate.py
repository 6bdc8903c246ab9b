import pytest

from cluster.rl.gate import StalenessGate, StalenessError
from reward.types import RewardResult
from rollout.types import Rollout


def rollout(gid, k, versions):
    n = len(versions)
    return Rollout(group_id=gid, prompt_id=0, sample_index=k, prompt="1+1=", answer="2", prompt_ids=(1,), response_ids=(5,) * n, response_text="2", logprobs=(-0.1,) * n, versions=tuple(versions), finish_reason="stop")


def reward(gid, k):
    return RewardResult(group_id=gid, sample_index=k, reward=1.0, correct=True, format_ok=True)


def test_sync_admits_current_version_and_counts():
    buf = StalenessGate(max_staleness=0, group_size=2)
    rs = [rollout(1, 0, [3, 3]), rollout(1, 1, [3])]
    groups = buf.admit(rs, [reward(1, 0), reward(1, 1)], policy_version=3)
    assert len(groups) == 1 and [r.sample_index for r in groups[0].rollouts] == [0, 1]
    assert buf.summary() == {"max_allowed": 0, "rule": "oldest", "max_seen": 0, "oldest_seen": 0, "dropped": 0,
                             "histogram": {"0": 2}}


def test_stale_samples_are_dropped_with_their_incomplete_group():
    buf = StalenessGate(max_staleness=0, group_size=2)
    rs = [rollout(1, 0, [2, 3]), rollout(1, 1, [3])]  # sample 0 has a token from version 2
    assert buf.admit(rs, [reward(1, 0), reward(1, 1)], policy_version=3) == []
    assert buf.dropped == 2 and buf.max_seen == 0


def test_mispaired_reward_is_an_error():
    buf = StalenessGate(max_staleness=0, group_size=1)
    with pytest.raises(ValueError, match="paired"):
        buf.admit([rollout(1, 0, [0])], [reward(2, 0)], policy_version=0)


def test_count_asserts_the_bound():
    buf = StalenessGate(max_staleness=1, group_size=1)
    with pytest.raises(StalenessError):
        buf._count(2)


def test_the_newest_rule_bounds_the_last_token_and_reports_the_oldest():
    """`newest`: a group whose long member's first tokens are 3 versions old, and whose short
    member finished 2 versions ago, trains under k = 1 once its last token is current (`oldest`
    drops it); a group completed 2 versions ago does not; the oldest token trained on is
    reported, beyond the rule's bound."""
    long = [rollout(1, 0, [1, 2, 3, 4]), rollout(1, 1, [2])]
    waited = [rollout(2, 0, [2]), rollout(2, 1, [1, 2])]
    rewards = [reward(1, 0), reward(1, 1), reward(2, 0), reward(2, 1)]
    oldest, newest = StalenessGate(1, 2), StalenessGate(1, 2, "newest")
    assert oldest.admit(long + waited, rewards, policy_version=4) == []
    assert [g.group_id for g in newest.admit(long + waited, rewards, policy_version=4)] == [1]
    assert newest.summary() == {"max_allowed": 1, "rule": "newest", "max_seen": 0, "oldest_seen": 3, "dropped": 2,
                                "histogram": {"0": 2}}
    with pytest.raises(ValueError, match="staleness rule is 'newest', this run's 'oldest'"):
        StalenessGate(1, 2).restore(newest.summary())
    with pytest.raises(ValueError, match=r"controller.staleness_rule 'first' is not a rule \(valid: oldest, newest\)"):
        StalenessGate(1, 2, "first")
