"""StalenessGate: the staleness gate and group assembly between rewards and advantages.

Which token's version the bound k applies to is `controller.staleness_rule` (RULES):
- `oldest` (the default): every token of a trained sample is at most k versions behind the
  policy it trains. Exact, but a response long enough to span more than k updates can never
  train, so long responses are the ones dropped (a length bias; goodput's
  `dropped_response_len` shows it).
- `newest`: the group's newest token is at most k versions behind: the group was completed,
  and waited for its rewards and its batch, within k updates. Generation starts within the
  same budget (cluster/rl/scheduler.py), and with in-flight weight updates a long response goes
  on under each new policy, so its early tokens, and a short sibling that waited for it, can
  be older than k (each token with its own behaviour logprob, which the off-policy losses
  weigh); nothing is dropped for being long. This is the bound of AReaL and PipelineRL, whose
  in-flight updates keep long generations. The group is the unit because it trains whole.
  The histogram counts the rule's staleness; `oldest_seen` reports the oldest token trained
  on either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from reward.types import RewardResult
from rollout.types import Rollout


def _oldest_token(group: Sequence[Rollout]) -> int:
    return min(r.min_version for r in group)


def _newest_token(group: Sequence[Rollout]) -> int:
    return max((r.versions[-1] for r in group if r.versions), default=-1)


# rule -> the version of a group (its rollouts) that the bound applies to
RULES: dict[str, Callable[[Sequence[Rollout]], int]] = {"oldest": _oldest_token, "newest": _newest_token}


class StalenessError(AssertionError):
    """A sample older than the bound reached a batch: a controller bug, never tolerated."""


@dataclass(frozen=True)
class Group:
    group_id: int
    rollouts: tuple[Rollout, ...]  # ordered by sample_index
    rewards: tuple[RewardResult, ...]


class StalenessGate:
    """Admits scored groups for training policy version `v` only if the version the rule gives
    them is >= v - max_staleness; counts what it sees and drops (a whole group either way)."""

    def __init__(self, max_staleness: int, group_size: int, rule: str = "oldest"):
        if rule not in RULES:
            raise ValueError(f"controller.staleness_rule '{rule}' is not a rule (valid: {', '.join(RULES)})")
        self.max_staleness = max_staleness
        self.group_size = group_size
        self.rule = rule
        self.version: Callable[[Sequence[Rollout]], int] = RULES[rule]  # a group's version under the rule
        self.histogram: Counter[int] = Counter()  # staleness (versions behind) -> samples admitted
        self.dropped = 0
        self.max_seen = 0
        self.oldest_seen = 0  # the most versions any admitted token was behind (the rule's or not)

    def admit(self, rollouts: list[Rollout], rewards: list[RewardResult], policy_version: int,
              sizes: Optional[Mapping[int, int]] = None) -> list[Group]:
        """The groups that may train `policy_version`. `sizes`: each group's expected size where it
        is not the group size (assembled by the scheduler, which dealt it); an incomplete group is
        dropped like a stale one (it cannot be normalised)."""
        by_group: dict[int, list[tuple[Rollout, RewardResult]]] = {}
        for rollout, reward in zip(rollouts, rewards, strict=True):
            if (reward.group_id, reward.sample_index) != (rollout.group_id, rollout.sample_index):
                raise ValueError(f"reward for {reward.group_id}/{reward.sample_index} paired with rollout "
                                 f"{rollout.group_id}/{rollout.sample_index}")
            by_group.setdefault(rollout.group_id, []).append((rollout, reward))
        groups = []
        for gid, members in by_group.items():
            staleness = policy_version - self.version([m[0] for m in members])
            if len(members) != (sizes or {}).get(gid, self.group_size) or staleness > self.max_staleness:
                self.dropped += len(members)  # too stale, or incomplete: it cannot be normalised
                continue
            members.sort(key=lambda m: m[0].sample_index)
            for rollout, _ in members:
                # `oldest`: each sample's own (at most its group's); `newest`: the group's, its unit
                self._count(policy_version - rollout.min_version if self.rule == "oldest" else staleness)
                self.oldest_seen = max(self.oldest_seen, policy_version - rollout.min_version)
            groups.append(Group(gid, tuple(m[0] for m in members), tuple(m[1] for m in members)))
        return groups

    def _count(self, staleness: int) -> None:
        if staleness > self.max_staleness or staleness < 0:
            raise StalenessError(f"sample with staleness {staleness} admitted (bound {self.max_staleness})")
        self.histogram[staleness] += 1
        self.max_seen = max(self.max_seen, staleness)

    def restore(self, summary: dict) -> None:
        """The counts of a summary() taken at a checkpoint."""
        if summary["max_allowed"] != self.max_staleness:
            raise ValueError(f"the checkpoint's staleness bound is {summary['max_allowed']}, this run's "
                             f"{self.max_staleness}")
        if summary.get("rule", "oldest") != self.rule:
            raise ValueError(f"the checkpoint's staleness rule is '{summary.get('rule', 'oldest')}', this run's "
                             f"'{self.rule}'")
        self.histogram = Counter({int(k): v for k, v in summary["histogram"].items()})
        self.dropped, self.max_seen = summary["dropped"], summary["max_seen"]
        self.oldest_seen = summary.get("oldest_seen", self.max_seen)

    def summary(self) -> dict:
        return {"max_allowed": self.max_staleness, "rule": self.rule, "max_seen": self.max_seen,
                "oldest_seen": self.oldest_seen, "dropped": self.dropped,
                "histogram": {str(k): v for k, v in sorted(self.histogram.items())}}
