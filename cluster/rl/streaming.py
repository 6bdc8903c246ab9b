"""Streaming: generation calls and reward tickets in flight, fed into the Scheduler.

Rollouts come back from each worker as they finish (Ray streaming generators); a group goes
to the reward pool as soon as all its members are generated (group-level reward shaping,
e.g. PAR's group mean, needs the whole group); scored groups are assembled by the
Scheduler; `next_batch` returns as soon as P complete groups are there. One `ray.wait`
covers the generation streams and the reward calls, so nothing is polled in a busy loop.

Doomed work is aborted: under the `oldest` staleness rule (cluster/rl/gate.py), once the
policy version moves to V, a group with a sample whose first token came from a version below
V - k, arrived or still generating, can never train (a group trains whole, at a version no
older than V), so every engine stops its samples at once (rollout/pool.py: abort) and the
group ends dropped:aborted and is replaced; nothing of it that still arrives is used. The
rule is exact (no group that could still train is aborted); controller.abort_doomed: false
turns it off, and such groups then finish and are dropped stale when judged. Under `newest`
an incomplete group is never doomed (its newest token is yet to come).

A stream whose worker died is recovered (rollout/pool.py: the worker is replaced and the
samples that had not arrived are generated again, same seeds). Every sample's arrival is
checked: one that comes twice is counted (`duplicated`) and discarded; one that a stream
finished without delivering is counted (`lost`). Both feed summary.json's `faults`.
"""

from __future__ import annotations

import time
from typing import Callable

import ray

from cluster.rl.gate import Group
from cluster.rl.scheduler import Scheduler
from reward.pool import RewardPool
from rollout.pool import RolloutPool, Shard
from rollout.types import AbortResult, GenerationRequest, Rollout, SamplingParams

WAIT_S = 1.0  # the longest single wait: reward deadlines are checked at least this often
REPLACEMENT_STEP = 10_000_000  # the sampling step of groups dispatched to replace others (not a controller step)


class Streaming:
    def __init__(self, scheduler: Scheduler, rollout: RolloutPool, reward: RewardPool,
                 make_requests: Callable[[int], list[GenerationRequest]],
                 sampling: Callable[[int], SamplingParams],
                 prepare: Callable[[list[Rollout]], list[Rollout]] | None = None):
        self.scheduler, self.rollout, self.reward = scheduler, rollout, reward
        self.make_requests, self.sampling = make_requests, sampling
        self.prepare = prepare  # a generated group -> as it is scored and trains (cluster/rl/rescue.py: unhint)
        self.streams: list[Shard] = []
        self.generated: dict[int, dict[int, Rollout]] = {}  # group id -> sample index -> rollout, until complete
        self.complete: set[int] = set()  # groups whose every member arrived
        self.lost = 0  # samples a stream ended without (never re-issued)
        self.duplicated = 0  # samples that arrived a second time (discarded)
        self.tickets: dict[int, list[Rollout]] = {}  # reward ticket -> its group's rollouts
        self.last_rollout_at = 0.0  # perf_counter of the latest rollout to arrive
        self.generated_tokens = 0  # response tokens generated, arrived or aborted (goodput's denominator)
        self.aborted: set[int] = set()  # groups aborted while generating
        self.received: dict[Shard, int] = {}  # samples each stream has delivered (its outstanding work)
        self.sizes: dict[int, int] = {}  # group id -> its samples (a rollout budget deals different sizes)

    def start(self, steps_done: int) -> None:
        """Dispatch every step the staleness budget allows, and replacements owed."""
        for step in self.scheduler.steps_to_start(steps_done):
            self._dispatch(self.make_requests(self.scheduler.per_step), self.sampling(step))
        owed = self.scheduler.take_owed()
        if owed:  # one sampling step for every replacement: how the owed were batched is timing, and
            # must not move a seed (each request's group id tells its samples apart)
            self._dispatch(self.make_requests(owed), self.sampling(REPLACEMENT_STEP))

    def _dispatch(self, requests: list[GenerationRequest], params: SamplingParams) -> None:
        for req in requests:
            self.scheduler.expect(req.group_id, req.num_samples)
            self.sizes[req.group_id] = req.num_samples
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

    def abort_doomed(self, version: int) -> None:
        """The policy moved to `version`: abort every group that can no longer meet the bound
        (module doc). Each ends dropped:aborted and is replaced."""
        if self.scheduler.gate.rule != "oldest":
            return
        floor = version - self.scheduler.k
        known = tuple(g for g, members in self.generated.items()
                      if min(r.min_version for r in members.values()) < floor)
        # No call in flight (the synchronous order, between steps): nothing to stop on the engines.
        result = self.rollout.abort(floor, known) if self.streams else AbortResult((), 0)
        self.generated_tokens += result.tokens
        for g in sorted((set(result.groups) | set(known)) - self.complete - self.aborted):
            members = self.generated.pop(g, {})
            self.aborted.add(g)
            self.scheduler.abort(g, sum(len(r.response_ids) for r in members.values()))
        self.scheduler.wasted(result.tokens)

    def _wait(self) -> None:
        waitables = [s.stream for s in self.streams] + self.reward.pending_refs()
        if not waitables and not self.tickets:
            raise RuntimeError("controller stalled: no generation or reward work in flight and no batch ready "
                               f"({len(self.scheduler.ready)} groups ready, {self.scheduler.in_flight()} expected)")
        ready, _ = ray.wait(waitables, num_returns=1, timeout=WAIT_S) if waitables else ([], [])
        if ready:  # and everything else that is ready by now, without waiting for more
            ready, _ = ray.wait(waitables, num_returns=len(waitables), timeout=0)
        for shard in [s for s in self.streams if s.stream in ready]:
            # Every part a stream holds: a backlog would make its rollouts older than they are.
            while self._drain(shard) and ray.wait([shard.stream], timeout=0)[0]:
                pass
        self.reward.pump(0.0)
        for ticket in [t for t in self.tickets if self.reward.ready(t)]:
            rollouts = self.tickets.pop(ticket)
            for rollout, reward in zip(rollouts, self.reward.collect(ticket), strict=True):
                self.scheduler.scored(rollout, reward)

    def _drain(self, shard: Shard) -> bool:
        """Take one part of a stream; False once the stream has ended (or its worker died)."""
        try:
            rollouts: list[Rollout] = ray.get(next(shard.stream))  # a failed generation call raises here
        except StopIteration:
            self.streams.remove(shard)
            self.lost += sum(k not in self._arrived(req.group_id) for req in shard.requests for k in req.indices())
            rest = sum(len(req.indices()) for req in shard.requests) - self.received.pop(shard, 0)
            if shard.handle is self.rollout.workers[shard.worker]:
                self.rollout.arrived(shard.worker, rest)  # lost or aborted: no longer outstanding
            return False
        except ray.exceptions.RayActorError as err:  # its worker died: replaced, the rest generated again
            self.streams.remove(shard)
            self.received.pop(shard, None)
            self.streams += self.rollout.recover(shard, self._arrived, f"{type(err).__name__} while generating")
            return False
        self.last_rollout_at = time.perf_counter()
        self.received[shard] = self.received.get(shard, 0) + len(rollouts)
        if shard.handle is self.rollout.workers[shard.worker]:  # a replaced worker's count was reset
            self.rollout.arrived(shard.worker, len(rollouts))
        for r in rollouts:
            if r.group_id in self.aborted:  # finished as the abort reached its engine: not used
                self.generated_tokens += len(r.response_ids)
                self.scheduler.wasted(len(r.response_ids))
                continue
            if r.group_id in self.complete or r.sample_index in self.generated.get(r.group_id, {}):
                self.duplicated += 1
                continue
            members = self.generated.setdefault(r.group_id, {})
            members[r.sample_index] = r
            self.generated_tokens += len(r.response_ids)
            if len(members) == self.sizes[r.group_id]:
                del self.generated[r.group_id]
                self.complete.add(r.group_id)
                group = [members[k] for k in sorted(members)]
                if self.prepare is not None:
                    group = self.prepare(group)
                self.tickets[self.reward.submit(group)] = group
        return True

    def _arrived(self, group_id: int) -> set[int]:
        """The sample indices of this group that have arrived (an aborted group's: all it needs)."""
        if group_id in self.complete or group_id in self.aborted:
            return set(range(self.sizes[group_id]))
        return set(self.generated.get(group_id, ()))

    def close(self) -> None:
        """Forget what is still generating (the run is over): only replacement groups can be in
        flight then; their calls end on their own and the workers are shut down after."""
        self.streams = []
