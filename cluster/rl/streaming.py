"""Streaming: generation calls and reward tickets in flight, fed into the Scheduler.

Rollouts come back from each worker as they finish (Ray streaming generators); a group goes
to the reward pool as soon as all its members are generated (group-level reward shaping,
e.g. PAR's group mean, needs the whole group); scored groups are assembled by the
Scheduler; `next_batch` returns as soon as P complete groups are there. One `ray.wait`
covers the generation streams and the reward calls, so nothing is polled in a busy loop.
"""

from __future__ import annotations

import time
from typing import Callable

import ray

from cluster.rl.gate import Group
from cluster.rl.scheduler import Scheduler
from reward.pool import RewardPool
from rollout.pool import RolloutPool
from rollout.types import GenerationRequest, Rollout, SamplingParams

WAIT_S = 1.0  # the longest single wait: reward deadlines are checked at least this often


class Streaming:
    def __init__(self, scheduler: Scheduler, rollout: RolloutPool, reward: RewardPool, group_size: int,
                 make_requests: Callable[[int], list[GenerationRequest]],
                 sampling: Callable[[int], SamplingParams]):
        self.scheduler, self.rollout, self.reward = scheduler, rollout, reward
        self.group_size = group_size
        self.make_requests, self.sampling = make_requests, sampling
        self.streams: list = []
        self.generated: dict[int, list[Rollout]] = {}  # group id -> members generated so far
        self.tickets: dict[int, list[Rollout]] = {}  # reward ticket -> its group's rollouts
        self.replacements = 0
        self.last_rollout_at = 0.0  # perf_counter of the latest rollout to arrive

    def start(self, steps_done: int) -> None:
        """Dispatch every step the staleness budget allows, and replacements owed."""
        for step in self.scheduler.steps_to_start(steps_done):
            self._dispatch(self.make_requests(self.scheduler.per_step), self.sampling(step))
        owed = self.scheduler.take_owed()
        if owed:
            self.replacements += 1
            self._dispatch(self.make_requests(owed), self.sampling(10_000_000 + self.replacements))

    def _dispatch(self, requests: list[GenerationRequest], params: SamplingParams) -> None:
        for req in requests:
            self.scheduler.expect(req.group_id)
        self.streams += self.rollout.stream(requests, params)

    def next_batch(self, version: int, steps_done: int) -> list[Group]:
        """Block until P complete groups can train `version`."""
        while True:
            self.start(steps_done)
            groups = self.scheduler.take(version)
            if groups is not None:
                return groups
            # A take that judged waiting groups stale owes their replacements: dispatch them
            # before waiting, or with nothing else in flight the loop would stall.
            self.start(steps_done)
            self._wait()

    def _wait(self) -> None:
        waitables = self.streams + self.reward.pending_refs()
        if not waitables and not self.tickets:
            raise RuntimeError("controller stalled: no generation or reward work in flight and no batch ready "
                               f"({len(self.scheduler.ready)} groups ready, {self.scheduler.in_flight()} expected)")
        ready, _ = ray.wait(waitables, num_returns=1, timeout=WAIT_S) if waitables else ([], [])
        for stream in [w for w in ready if w in self.streams]:
            self._drain(stream)
        self.reward.pump(0.0)
        for ticket in [t for t in self.tickets if self.reward.ready(t)]:
            rollouts = self.tickets.pop(ticket)
            for rollout, reward in zip(rollouts, self.reward.collect(ticket), strict=True):
                self.scheduler.scored(rollout, reward)

    def _drain(self, stream) -> None:
        try:
            ref = next(stream)
        except StopIteration:
            self.streams.remove(stream)
            return
        rollouts: list[Rollout] = ray.get(ref)  # a failed generation call raises here
        self.last_rollout_at = time.perf_counter()
        for r in rollouts:
            members = self.generated.setdefault(r.group_id, [])
            members.append(r)
            if len(members) == self.group_size:
                del self.generated[r.group_id]
                members.sort(key=lambda m: m.sample_index)
                self.tickets[self.reward.submit(members)] = members

    def close(self) -> None:
        """Forget what is still generating (the run is over): only replacement groups can be in
        flight then; their calls end on their own and the workers are shut down after."""
        self.streams = []
