"""The bookkeeping of the controller loop, with no Ray and no clock.

Which steps' generation may start (the staleness budget), groups assembled as their members
are scored (streaming), dynamic sampling, and which groups train next. The controller
(cluster/controller.py) drives it with real actors; cluster/simulate.py drives the same
object with latency models, so the simulation schedules exactly as a real run does.

Step j's generation may start once j - 1 - k steps are done (k = max_staleness); with k = 0
that is the synchronous order. A step moves the policy version by at most one (a critic
warm-up step or an online-DPO step without pairs moves it by none), so data started then is
at most k versions old when step j trains. The buffer still checks every sample at admission
(a group can wait long enough to go stale; it is then dropped, counted, and replaced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cluster.buffer import ExperienceBuffer, Group
from reward.types import RewardResult
from rollout.types import Rollout


class DynamicSamplingError(RuntimeError):
    """Every group tied for too long: dynamic sampling cannot fill a batch."""


@dataclass
class _Assembly:
    size: int
    rollouts: dict[int, Rollout] = field(default_factory=dict)
    rewards: dict[int, RewardResult] = field(default_factory=dict)

    def group(self, gid: int) -> Optional[Group]:
        if len(self.rewards) < self.size:
            return None
        order = sorted(self.rewards)
        return Group(gid, tuple(self.rollouts[i] for i in order), tuple(self.rewards[i] for i in order))


class Scheduler:
    def __init__(self, steps: int, prompts_per_step: int, group_size: int, buffer: ExperienceBuffer,
                 dynamic_sampling: bool = False, resample_limit: int = 8):
        self.steps, self.per_step, self.group_size = steps, prompts_per_step, group_size
        self.k = buffer.max_staleness
        self.buffer = buffer
        self.dynamic_sampling = dynamic_sampling
        self.resample_limit = resample_limit  # filtered groups allowed per step, in batches
        self.started_steps = 0  # steps whose P groups were dispatched
        self.owed = 0  # replacement groups to dispatch (tied or stale groups)
        self.filtered = 0  # groups dropped by dynamic sampling (rewards tied)
        self.stale_groups = 0  # complete groups dropped at admission (too stale)
        self._filtered_this_step = 0
        self._version = 0  # the policy version of the last take(): what "stale" is judged against
        self._assembling: dict[int, _Assembly] = {}
        self.ready: list[Group] = []

    # ---- what to generate ----

    def steps_to_start(self, steps_done: int) -> list[int]:
        """Steps whose generation may start now (each: P new groups)."""
        last = min(self.steps, steps_done + 1 + self.k)
        start = list(range(self.started_steps + 1, last + 1))
        self.started_steps = max(self.started_steps, last)
        return start

    def take_owed(self) -> int:
        owed, self.owed = self.owed, 0
        return owed

    def expect(self, group_id: int) -> None:
        self._assembling[group_id] = _Assembly(self.group_size)

    # ---- what came back ----

    def scored(self, rollout: Rollout, reward: RewardResult) -> Optional[Group]:
        """A scored sample; returns its group once the group is complete (and kept)."""
        if (reward.group_id, reward.sample_index) != (rollout.group_id, rollout.sample_index):
            raise ValueError(f"reward for {reward.group_id}/{reward.sample_index} paired with rollout "
                             f"{rollout.group_id}/{rollout.sample_index}")
        a = self._assembling[rollout.group_id]
        a.rollouts[rollout.sample_index], a.rewards[rollout.sample_index] = rollout, reward
        group = a.group(rollout.group_id)
        if group is None:
            return None
        del self._assembling[rollout.group_id]
        if self.dynamic_sampling and len({r.reward for r in group.rewards}) == 1:
            self.filtered += 1  # zero advantage for every member: it would teach nothing
            self._filtered_this_step += 1
            if self._filtered_this_step > self.resample_limit * self.per_step:
                raise DynamicSamplingError(
                    f"dynamic sampling dropped {self._filtered_this_step} groups whose rewards all tied without "
                    f"filling one step of {self.per_step}; the task is too easy or too hard for the policy "
                    "(set algorithm.dynamic_sampling: false, or raise algorithm.dynamic_sampling_limit)")
            self.owed += 1
            return None
        if self._drop_if_stale(group):
            return None
        self.ready.append(group)
        return group

    # ---- what trains next ----

    def take(self, version: int) -> Optional[list[Group]]:
        """P groups for the step that trains `version`, oldest data first; None until there are
        enough. Cheap when there is nothing to do (the loop asks after every arrival): waiting
        groups are re-judged only when the version moves, arrivals are judged as they come."""
        if version != self._version:
            self._version = version
            self.ready = [g for g in self.ready if not self._drop_if_stale(g)]
        if len(self.ready) < self.per_step:
            return None
        self.ready.sort(key=lambda g: (_oldest(g), g.group_id))
        picked, self.ready = self.ready[: self.per_step], self.ready[self.per_step :]
        groups = self.buffer.admit([r for g in picked for r in g.rollouts], [r for g in picked for r in g.rewards],
                                   version)
        if len(groups) != len(picked):
            raise AssertionError("the buffer refused a group the scheduler found fresh (a bug)")
        self._filtered_this_step = 0
        return sorted(groups, key=lambda g: g.group_id)

    def _drop_if_stale(self, group: Group) -> bool:
        """A group older than k versions goes through the buffer's gate (which drops and counts
        it) and is replaced by a new prompt."""
        if self._version - _oldest(group) <= self.k:
            return False
        self.buffer.admit(list(group.rollouts), list(group.rewards), self._version)
        self.stale_groups += 1
        self.owed += 1
        return True

    def in_flight(self) -> int:
        """Groups dispatched and not yet complete."""
        return len(self._assembling)


def _oldest(group: Group) -> int:
    return min(r.min_version for r in group.rollouts)
