"""StalenessGate: the staleness gate and group assembly between rewards and advantages."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from reward.types import RewardResult
from rollout.types import Rollout


class StalenessError(AssertionError):
    """A sample older than the bound reached a batch: a controller bug, never tolerated."""


@dataclass(frozen=True)
class Group:
    group_id: int
    rollouts: tuple[Rollout, ...]  # ordered by sample_index
    rewards: tuple[RewardResult, ...]


class StalenessGate:
    """Admits scored rollouts for training policy version `v` only if every token was
    produced by a version >= v - max_staleness; counts what it sees and drops."""

    def __init__(self, max_staleness: int, group_size: int):
        self.max_staleness = max_staleness
        self.group_size = group_size
        self.histogram: Counter[int] = Counter()  # staleness (versions behind) -> samples admitted
        self.dropped = 0
        self.max_seen = 0

    def admit(self, rollouts: list[Rollout], rewards: list[RewardResult], policy_version: int) -> list[Group]:
        by_group: dict[int, list[tuple[Rollout, RewardResult]]] = {}
        for rollout, reward in zip(rollouts, rewards, strict=True):
            if (reward.group_id, reward.sample_index) != (rollout.group_id, rollout.sample_index):
                raise ValueError(f"reward for {reward.group_id}/{reward.sample_index} paired with rollout "
                                 f"{rollout.group_id}/{rollout.sample_index}")
            staleness = policy_version - rollout.min_version
            if staleness > self.max_staleness:
                self.dropped += 1
                continue
            by_group.setdefault(rollout.group_id, []).append((rollout, reward))
        groups = []
        for gid, members in by_group.items():
            if len(members) != self.group_size:
                self.dropped += len(members)  # an incomplete group cannot be normalised
                continue
            members.sort(key=lambda m: m[0].sample_index)
            for rollout, _ in members:
                self._count(policy_version - rollout.min_version)
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
        self.histogram = Counter({int(k): v for k, v in summary["histogram"].items()})
        self.dropped, self.max_seen = summary["dropped"], summary["max_seen"]

    def summary(self) -> dict:
        return {"max_allowed": self.max_staleness, "max_seen": self.max_seen, "dropped": self.dropped,
                "histogram": {str(k): v for k, v in sorted(self.histogram.items())}}
