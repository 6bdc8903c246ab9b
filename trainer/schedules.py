"""Learning-rate schedules (registry): the multiplier of the base learning rate at each optimizer step.

Every schedule starts with the same linear warm-up: optimizer step i (1-based) of the first
`warmup` uses lr x i / warmup, so step `warmup` is the first at the full rate and no step is
wasted at lr 0. After it, progress p = (i - 1 - warmup) / (total - warmup) runs from 0 (the
first step after warm-up, at the full rate) towards 1, and the schedule maps p to a multiplier
between 1 and `min_ratio`. Steps past `total` keep the final rate.

The learners step the schedule once per applied optimizer step (DeepSpeed steps it at each
accumulation boundary, skips it with a step skipped for non-finite gradients, and saves it in
its checkpoint), so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from rollout.registry import Registry

SCHEDULES: Registry[Callable[[float], float]] = Registry("learning-rate schedule")


@SCHEDULES.register("constant", "the full rate after warm-up")
def constant(progress: float) -> float:
    return 1.0


@SCHEDULES.register("linear", "linear decay from the full rate towards min_lr_ratio x lr, reached after the last step")
def linear(progress: float) -> float:
    return 1.0 - progress


@SCHEDULES.register("cosine", "half a cosine from the full rate towards min_lr_ratio x lr",
                    paper="Loshchilov & Hutter 2017 (SGDR)")
def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The multiplier of the base rate for optimizer step `step` (0-based: the steps already applied).
    A callable object, not a closure, so DeepSpeed's checkpoint of the scheduler can hold it."""

    name: str = "constant"
    total: int = 1  # optimizer steps the run will apply
    warmup: int = 0
    min_ratio: float = 0.0

    def __post_init__(self):
        SCHEDULES.entry(self.name)  # unknown names fail here, listing the valid ones
        if self.warmup < 0 or self.total < 1:
            raise ValueError(f"learning-rate schedule needs total >= 1 and warmup >= 0, got {self.total}, "
                             f"{self.warmup}")

    def describe(self) -> str:
        floor = f" towards {self.min_ratio:g} x lr" if self.name != "constant" else ""
        return f"{self.name}{floor} over {self.total} optimizer steps, {self.warmup} of warm-up"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * SCHEDULES.get(self.name)(progress)
