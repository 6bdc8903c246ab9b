"""Colocated placement: each device is time-sliced between a learner rank and an engine.

Between two generations a synchronous step runs these phases, in this order:

  generate             engine awake with the current weights; learners fully offloaded
  engine_sleep         the engine releases its weights (rollout.sleep_level 1: to host memory;
                       2: dropped) and its KV cache
  learner_reload       the learners' states come back to the device
  train
  learner_offload      optimizer states, gradients and fp32 master weights leave the device;
                       the model's parameters stay for the sync
  engine_wake
  sync                 after a level-2 sleep every step syncs, even one that left the policy
                       unchanged: the engine has no weights until an update refills them
  learner_offload_params

so the engine and the learners' optimizer never hold the device at once, and only the sync
holds both sets of weights. With `disaggregated` placement every call here does nothing. The
phases of each step go to metrics.jsonl (`phases`) with what each side released.
"""

from __future__ import annotations

import time

from rollout.pool import RolloutPool
from trainer.group import LearnerGroup

MB = 2**20


class TimeSlice:
    """The phase switches of one run; each returns the seconds it took (0 when not colocated)."""

    def __init__(self, enabled: bool, sleep_level: int, learners: LearnerGroup, rollout: RolloutPool):
        self.enabled, self.level = enabled, sleep_level
        self.learners, self.rollout = learners, rollout
        self.phases: list[str] = []  # this step's, in order
        self.memory: dict[str, float] = {}  # this step's readings

    @property
    def always_sync(self) -> bool:
        """The engine wakes without weights: every step must end with an update."""
        return self.enabled and self.level == 2

    def start(self) -> None:
        """Before the first generation: the learners, just started on the device, leave it."""
        if self.enabled:
            self.learners.offload()

    def to_training(self) -> float:
        if not self.enabled:
            return 0.0
        t0 = time.perf_counter()
        self.phases.append("generate")
        engine = self._switch("engine_sleep", lambda: self.rollout.sleep(self.level))
        reloaded = self._switch("learner_reload", self.learners.reload)
        self.phases.append("train")
        self.memory.update(engine_released_mb=sum(m.released_bytes for m in engine) / MB,
                           engine_rss_before_mb=sum(m.resident_before for m in engine) / MB,
                           engine_rss_after_mb=sum(m.resident_after for m in engine) / MB,
                           learner_reloaded_mb=-sum(s.freed_bytes for s in reloaded) / MB)
        return time.perf_counter() - t0

    def to_sync(self) -> float:
        if not self.enabled:
            return 0.0
        t0 = time.perf_counter()
        offloaded = self._switch("learner_offload", lambda: self.learners.offload(keep_params=True))
        self._switch("engine_wake", self.rollout.wake_up)
        self.memory["learner_offloaded_mb"] = sum(s.freed_bytes for s in offloaded) / MB
        return time.perf_counter() - t0

    def to_generation(self, synced: bool) -> float:
        if not self.enabled:
            return 0.0
        t0 = time.perf_counter()
        if synced:
            self.phases.append("sync")
        offloaded = self._switch("learner_offload_params", self.learners.offload)
        self.memory["learner_offloaded_mb"] += sum(s.freed_bytes for s in offloaded) / MB
        return time.perf_counter() - t0

    def learners_resident(self, fn):
        """Run fn (a checkpoint save: it reads the parameters) with the learners on the device."""
        if not self.enabled:
            return fn()
        self.learners.reload()
        try:
            return fn()
        finally:
            self.learners.offload()

    def take_row(self) -> dict:
        """This step's phases and memory readings for metrics.jsonl; starts the next step's."""
        if not self.enabled:
            return {}
        row = {"phases": self.phases, **self.memory}
        self.phases, self.memory = [], {}
        return row

    def _switch(self, phase: str, fn):
        self.phases.append(phase)
        return fn()
